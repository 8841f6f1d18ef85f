"""Experiment tracking (``--log tensorboard|mlflow|csv``, repeatable) through the engine's callbacks.

Each tracker receives every epoch's history record (``Engine(callbacks=...)``, called after the
epoch's checkpoint) and, at the end, the finished :class:`~transferlab.experiments.train.Run`:

- ``csv``: ``RUN_DIR/epochs.csv``, one row per epoch, flushed as it comes;
- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``torch.utils.tensorboard``): loss,
  accuracy and learning rate per epoch, the final val/test metrics, the configuration as text;
- ``mlflow``: one MLflow run (experiment ``transferlab``) in ``$MLFLOW_TRACKING_URI`` or, when unset,
  the local store ``sqlite:///RUN_DIR/mlflow.db`` (artifacts in ``RUN_DIR/mlflow-artifacts``): the options as params, per-epoch metrics, the final
  metrics, and metrics.json, config.json, history.jsonl and the model files as artifacts.

Example:
    >>> with Tracking(["csv"], run_dir="runs/ft", params={"strategy": "fine-tune"}) as tracking:  # doctest: +SKIP
    ...     run = run_training(..., callbacks=tracking.callbacks)
    ...     tracking.finish(run)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from transferlab.errors import ConfigError
from transferlab.export._deps import require

KINDS = ("tensorboard", "mlflow", "csv")
EPOCH_FIELDS = ("epoch", "phase", "phase_epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "lr", "seconds")
ARTIFACTS = ("metrics.json", "config.json", "history.jsonl", "model.safetensors", "model.json", "report.html")


def _final_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """``val_accuracy``, ``test_macro_f1``, ``timing_total_s``... from a run's metrics.json."""
    out: dict[str, float] = {}
    for split in ("val", "test"):
        for key in ("accuracy", "macro_f1", "top5", "loss"):
            value = metrics.get(split, {}).get(key)
            if value is not None:
                out[f"{split}_{key}"] = float(value)
    for key, value in metrics.get("timing", {}).items():
        out[f"timing_{key}"] = float(value)
    return out


class CsvTracker:
    """``epochs.csv`` in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "epochs.csv"
        self._fh = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=EPOCH_FIELDS)
        self._writer.writeheader()

    def epoch(self, record: dict[str, Any]) -> None:
        row = {k: record.get(k) for k in EPOCH_FIELDS}
        row["lr"] = record["lr"][0] if record.get("lr") else None  # the top group's rate
        self._writer.writerow(row)
        self._fh.flush()

    def finish(self, run: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class TensorBoardTracker:
    """Event files under ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path, params: dict[str, Any]) -> None:
        require("tensorboard", extra="tracking", feature="--log tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=2, default=str) + "\n```", 0)

    def epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for part in ("train", "val"):
            self.writer.add_scalar(f"loss/{part}", record[f"{part}_loss"], step)
            self.writer.add_scalar(f"accuracy/{part}", record[f"{part}_accuracy"], step)
        for name, lr in zip(record.get("lr_groups", []), record.get("lr", [])):
            self.writer.add_scalar(f"lr/{name}", lr, step)
        self.writer.flush()

    def finish(self, run: Any) -> None:
        step = max((h["epoch"] for h in run.history), default=0)
        for key, value in _final_scalars(run.metrics).items():
            self.writer.add_scalar(f"final/{key}", value, step)
        self.close()

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run: params, per-epoch metrics, final metrics, the run's files as artifacts."""

    def __init__(self, run_dir: Path, params: dict[str, Any]) -> None:
        mlflow = require("mlflow", extra="tracking", feature="--log mlflow")
        self.mlflow = mlflow
        given = os.environ.get("MLFLOW_TRACKING_URI")
        uri = given or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        if not given and mlflow.get_experiment_by_name("transferlab") is None:
            # the local store keeps its artifacts in the run directory too (MLflow's default is ./mlruns)
            mlflow.create_experiment("transferlab", artifact_location=(run_dir / "mlflow-artifacts").resolve().as_uri())
        mlflow.set_experiment("transferlab")
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})

    def epoch(self, record: dict[str, Any]) -> None:
        values = {f"{p}_{k}": float(record[f"{p}_{k}"]) for p in ("train", "val") for k in ("loss", "accuracy")}
        if record.get("lr"):
            values["lr"] = float(record["lr"][0])
        self.mlflow.log_metrics(values, step=int(record["epoch"]))

    def finish(self, run: Any) -> None:
        # "final_" keeps them apart from the per-epoch series of the same name (val_loss...)
        self.mlflow.log_metrics({f"final_{k}": v for k, v in _final_scalars(run.metrics).items()})
        if run.run_dir is not None:
            for name in ARTIFACTS:
                if (Path(run.run_dir) / name).is_file():
                    self.mlflow.log_artifact(str(Path(run.run_dir) / name))
        self.mlflow.end_run("FINISHED")

    def close(self) -> None:
        if self.mlflow.active_run() is not None:
            self.mlflow.end_run("FAILED")


def flatten_params(options: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """Nested option dicts as ``a.b`` keys (MLflow params are flat).

    Example:
        >>> flatten_params({"train": {"lr": 0.003}, "data": "flowers17"})
        {'train.lr': 0.003, 'data': 'flowers17'}
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(flatten_params(value, prefix=f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracking:
    """The trackers of one run; a context manager (an unfinished MLflow run is marked FAILED)."""

    def __init__(self, kinds: list[str] | tuple[str, ...], *, run_dir: str | os.PathLike[str],
                 params: dict[str, Any]) -> None:
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"--log must be one of {', '.join(KINDS)}, got {', '.join(map(repr, bad))}")
        self.run_dir = Path(run_dir)
        self.kinds = list(dict.fromkeys(kinds))
        self.params = flatten_params(params)
        self.trackers: list[Any] = []

    def __enter__(self) -> "Tracking":
        return self

    def _start(self) -> None:
        """Open the trackers inside the run folder, once the run has claimed it (first epoch, or the end)."""
        if self.trackers or not self.kinds:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for kind in self.kinds:
            if kind == "csv":
                self.trackers.append(CsvTracker(self.run_dir))
            elif kind == "tensorboard":
                self.trackers.append(TensorBoardTracker(self.run_dir, self.params))
            else:
                self.trackers.append(MlflowTracker(self.run_dir, self.params))

    def _epoch(self, record: dict[str, Any]) -> None:
        self._start()
        for t in self.trackers:
            t.epoch(record)

    @property
    def callbacks(self) -> list[Any]:
        """The engine's epoch callbacks (none without ``--log``); the trackers open on the first epoch,
        after ``train`` has locked the run folder, so they never make a new folder look used."""
        return [self._epoch] if self.kinds else []

    def finish(self, run: Any) -> None:
        self._start()
        for t in self.trackers:
            t.finish(run)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for t in self.trackers:
            t.close()


__all__ = ["KINDS", "Tracking", "flatten_params"]
