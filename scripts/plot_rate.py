"""PTB pictures from the results files.

    python scripts/plot_rate.py [--results docs/results/ptb.json] [--out docs/ptb_rate.png]
    python scripts/plot_rate.py --rate-distortion [--out docs/ptb_rate_distortion.png]

The rate sweep (default): test nll and rec_bleu against the KL of the `ptb_rate_R` entries that
`RATES="..." scripts/reproduce_ptb.sh` writes (and any other entry, marked by name, for reference).

`--rate-distortion`: test rec against KL (nats per sentence) for every row of the docs'
rate-distortion table (scripts/results_tables.py: the published anchors and textvae's rows, read
from docs/results/*.json), with lines of equal -ELBO = rec + KL.

Either way the rows plotted are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="docs/results/ptb.json")
    parser.add_argument("--out", help="the PNG (default docs/ptb_rate.png, or docs/ptb_rate_distortion.png)")
    parser.add_argument("--split", default="test", help="valid while choosing, test for the final table")
    parser.add_argument("--rate-distortion", action="store_true",
                        help="draw the rate-distortion table's rows instead of the rate sweep")
    args = parser.parse_args(argv)
    if args.rate_distortion:
        return plot_rate_distortion(Path(args.out or "docs/ptb_rate_distortion.png"))
    args.out = args.out or "docs/ptb_rate.png"
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


def plot_rate_distortion(out: Path) -> None:
    from results_tables import load_entries, rate_distortion_points  # this directory's table maker

    points = rate_distortion_points(load_entries())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    recs = [p["rec"] for p in points]
    bottom, top = min(recs) - 3, max(recs) + 3
    right = max(p["kl"] for p in points) * 1.3
    elbos = [p["kl"] + p["rec"] for p in points]
    for elbo in range(int(min(elbos) // 5) * 5, int(max(elbos)) + 6, 5):  # equal -ELBO: rec = elbo - KL
        axis.plot([0, right], [elbo, elbo - right], color="0.85", lw=0.8, zorder=0)
        if bottom <= elbo <= top:  # labelled where the line enters the frame
            axis.annotate(f"{elbo}", (0.2, elbo), fontsize=7, color="0.55", ha="left", va="top")
        elif 0 <= elbo - top <= right:
            axis.annotate(f"{elbo}", (elbo - top, top), fontsize=7, color="0.55", ha="left", va="top")
    for point in points:  # anchors labelled beside their stars, textvae's rows in the legend
        if point["anchor"]:
            axis.plot([point["kl"]], [point["rec"]], linestyle="none", marker="*", color="black", ms=11)
            axis.annotate(point["short"], (point["kl"], point["rec"]), textcoords="offset points", xytext=(6, 4),
                          fontsize=8)
        else:
            axis.plot([point["kl"]], [point["rec"]], linestyle="none", marker="o", ms=7, label=point["short"])
    axis.legend(fontsize=8, loc="upper right", title="textvae", title_fontsize=8)
    axis.set(xlabel="KL, nats per sentence (rate)", ylabel="rec, nats per sentence (distortion)",
             title="PTB test: rate and distortion (grey: equal −ELBO = rec + KL)", xlim=(-1, right),
             ylim=(bottom, top))
    axis.grid(alpha=0.2)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    for point in points:
        print(json.dumps({key: point[key] for key in ("short", "kl", "rec", "elbo", "mi", "au", "anchor")}))


if __name__ == "__main__":
    main()
