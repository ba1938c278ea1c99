"""The run directory's picture: `curves.png`, the training curves (ELBO, rec, KL and beta against
steps) drawn from the CSV log with matplotlib, written atomically; skipped with a warning when
matplotlib is missing.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from textvae.files import atomic_path

log = logging.getLogger("textvae")


def plot_curves(metrics_csv: Path, out: Path) -> None:
    """ELBO, rec, KL and beta against steps from the CSV log (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: curves.png not written (pip install matplotlib)")
        return
    if not metrics_csv.is_file():
        return
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))

    def series(key):
        points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        return [p[0] for p in points], [p[1] for p in points]

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for axis, name in zip(axes, ("elbo", "rec", "kl", "beta")):
        steps, values = series(f"train/{name}")
        # Length-bucketed batches make per-batch values jump with sentence length: show a running mean.
        window = max(1, len(values) // 8)
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                  for i in range(len(values))]
        axis.plot(steps, smooth, lw=1.0, label=f"train (mean of {window})")
        if name != "beta":
            steps, values = series(f"valid/{name}")
            axis.plot(steps, values, "o-", label="valid")
        axis.set_title(name if name == "beta" else f"{name} (nats/sentence)")
        axis.set_xlabel("step")
        axis.legend()
    figure.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
