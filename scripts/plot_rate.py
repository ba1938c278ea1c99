"""The rate sweep as a picture: test nll and rec_bleu against the KL of each run.

    python scripts/plot_rate.py [--results docs/results/ptb.json] [--out docs/ptb_rate.png]

Reads the `ptb_rate_R` entries that `RATES="..." scripts/reproduce_ptb.sh` writes (and any other
entry, marked by name, for reference) and prints the table it plotted as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/ptb.json")
    parser.add_argument("--out", default="docs/ptb_rate.png")
    parser.add_argument("--split", default="test", help="valid while choosing, test for the final table")
    args = parser.parse_args(argv)
    entries = [e for e in json.loads(Path(args.results).read_text()) if args.split in e]
    # Exactly the names RATES=... scripts/reproduce_ptb.sh gives (ptb_rate_R); other entries are markers.
    sweep = sorted((e for e in entries if re.fullmatch(r"ptb_rate_\d+(\.\d+)?", e.get("name", ""))),
                   key=lambda e: e[args.split]["kl"])
    if not sweep:
        raise SystemExit(f"{args.results} has no ptb_rate_* entries with {args.split} metrics; "
                         f"run RATES='5 15 30 50' scripts/reproduce_ptb.sh first")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    kl = [e[args.split]["kl"] for e in sweep]
    ks = sorted({e[args.split].get("iw_samples") for e in sweep}, key=str)
    label = f"rate sweep (K={'/'.join(map(str, ks))})"
    left.plot(kl, [e[args.split]["nll"] for e in sweep], "o-", label=label)
    right.plot(kl, [e[args.split]["rec_bleu"] for e in sweep], "o-", label=label)
    for entry in entries:
        if entry in sweep:
            continue
        metrics, name = entry[args.split], entry.get("name", Path(entry["config"]).stem)
        name = f"{name} (K={metrics.get('iw_samples')})"
        left.plot([metrics["kl"]], [metrics["nll"]], "s", label=name)
        right.plot([metrics["kl"]], [metrics["rec_bleu"]], "s", label=name)
    left.set(xlabel="KL (nats per sentence)", ylabel=f"{args.split} nll (nats; K in the legend)", title="likelihood")
    right.set(xlabel="KL (nats per sentence)", ylabel=f"{args.split} rec_bleu", title="reconstruction")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    for entry in entries:
        row = {key: entry[args.split].get(key) for key in ("nll", "kl", "mi", "au", "rec_bleu", "rec_exact",
                                                          "interp_distinct", "interp_step")}
        print(json.dumps({"name": entry.get("name", Path(entry["config"]).stem), **row}))


if __name__ == "__main__":
    main()
