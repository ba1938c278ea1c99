"""The run's loggers: our appending CSV log, plus Lightning's TensorBoard, W&B and MLflow loggers by name.

`logs/metrics.csv` is always written: it feeds `curves.png` and the tests. Lightning's own
CSVLogger deletes an existing metrics.csv when a run starts, which would lose a resumed run's
history, so `AppendingCSVLogger` is a small `Logger` of our own that appends to it (training.py
first drops the rows logged after the checkpoint a resumed run starts from, `trim_log`).
The other loggers are optional packages: naming one that is not installed is a one-line
`UserError` saying what to `pip install`, checked before the run directory changes.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from textvae.errors import UserError
from textvae.files import atomic_path

# name -> the package it needs (also what to pip install); csv needs nothing.
LOGGER_PACKAGES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def resolve_loggers(names: list[str] | None) -> list[str]:
    """The loggers a run uses: csv always; None means csv plus tensorboard when it is installed."""
    if names is None:
        return ["csv", "tensorboard"] if _installed("tensorboard") else ["csv"]
    resolved = ["csv", *(name for name in dict.fromkeys(names) if name != "csv")]
    for name in resolved:
        package = LOGGER_PACKAGES[name]
        if package is not None and not _installed(package):
            raise UserError(f"config: trainer.logger {name} needs the {package} package: pip install {package}")
    return resolved


def make_loggers(names: list[str], run_dir: Path) -> list[Logger]:
    """Lightning loggers for `resolve_loggers` names, all writing under `run_dir/logs`."""
    logs = run_dir / "logs"
    loggers: list[Logger] = []
    for name in names:
        if name == "csv":
            loggers.append(AppendingCSVLogger(logs / "metrics.csv"))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard"))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(name=run_dir.name, save_dir=str(logs)))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(MLFlowLogger(run_name=run_dir.name, save_dir=str(logs / "mlruns")))
    return loggers


class AppendingCSVLogger(Logger):
    """One CSV row per logging call: `step`, then the metric keys in sorted order.

    Rows are buffered and appended whenever Lightning calls `save()` (after each logging call);
    a metric key not yet in the header (validation keys appear after the first training rows)
    rewrites the file once, atomically, with the wider header.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self._rows: list[dict] = []

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # config.yaml in the run directory holds them

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        scalars = {key: value.item() if hasattr(value, "item") else value for key, value in metrics.items()}
        self._rows.append({"step": step, **scalars})

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = []
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                header = next(csv.reader(handle), [])
        keys = set(header).union(*self._rows) - {"step"}
        if keys <= set(header):
            with open(self.path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=header).writerows(self._rows)
        else:
            rows = []
            if header:
                with open(self.path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
            write_csv(self.path, ["step", *sorted(keys)], rows + self._rows)
        self._rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Replace `path` atomically with a CSV of `rows` under the header `fields`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def trim_log(metrics_csv: Path, step: int) -> None:
    """Drop log rows at or after `step` (logged after the checkpoint a resumed run starts from)."""
    if not metrics_csv.is_file():
        return
    with open(metrics_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], [r for r in reader if r.get("step") and int(r["step"]) < step]
    write_csv(metrics_csv, fields, rows)
