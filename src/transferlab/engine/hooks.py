"""What happens around the engine's epochs, as small hooks with state (detectron2's ``HookBase``).

``Engine.fit`` runs phases -> epochs -> steps and calls, in order, every hook's ``before_phase``,
``after_epoch`` and ``after_fit``. A hook keeps its own state and gives it to the checkpoint
(``state_dict`` / ``load_state_dict``), so an interrupted run resumes exactly:

- :class:`BestWeights`: remembers the best epoch by the monitor, restores it at the end and says so;
- :class:`EarlyStopping`: stops a phase after ``patience`` epochs without a lower val loss;
- :class:`Checkpoint`: writes ``checkpoint.pt`` and ``history.jsonl`` after every epoch;
- :class:`Callbacks`: the caller's functions, called with each epoch's record after the checkpoint.

Epochs are numbered from 1 everywhere (``epoch`` of a history record, ``best_epoch``).

Example:
    >>> stop = EarlyStopping(patience=2)
    >>> fit = FitState(model=None, plan=None, replay=None)
    >>> stop.before_phase(fit, resumed=False)
    >>> for loss in (1.0, 1.1, 1.2):
    ...     fit.phase_epochs, fit.phase_epoch = 5, fit.phase_epoch + 1
    ...     stop.after_epoch(fit, {"val_loss": loss})
    >>> fit.stop, stop.bad_epochs
    (True, 2)
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferlab.data import atomic_write_bytes, atomic_write_text
from transferlab.errors import BadFileError, first_line

log = logging.getLogger("transferlab.engine")

CHECKPOINT = "checkpoint.pt"
MONITORS = ("val_loss", "val_accuracy")


@dataclass
class FitState:
    """The loop's position and products, shared with the hooks (the loop writes, hooks read)."""

    model: Any
    plan: Any
    replay: Sequence[int] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    phase_index: int = 0  # the running phase
    phase_name: str = ""
    phase_epoch: int = 0  # epochs done in the running phase
    phase_epochs: int = 0  # epochs this phase runs at most
    global_epoch: int = 0  # epochs done in the whole fit
    train_s: float = 0.0
    resumed_train_s: float = 0.0  # the training seconds of the sessions before a resume (in ``train_s``)
    stop: bool = False  # set by a hook: end the running phase after this epoch
    phase_start: int = 0  # the lowest stage the running phase trains: its inputs are the activations entering it
    val_logits: Any = None  # the running epoch's held-out outputs (for hooks that keep them, e.g. cvfit's trace)
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None  # torch.amp.GradScaler (enabled for fp16 on CUDA only)
    is_main: bool = True


class HookBase:
    """A hook does nothing unless it overrides a method; its state goes into the checkpoint."""

    name = "hook"

    def before_phase(self, fit: FitState, *, resumed: bool) -> None:
        """``resumed``: the phase continues an interrupted one (its epochs so far are in the state)."""

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        """Called once per epoch with its history record (already appended to ``fit.history``)."""

    def after_fit(self, fit: FitState) -> None:
        """Called once when every phase has run."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _fmt(value: float, key: str) -> str:
    return f"{value:.4f}" if key == "val_loss" else f"{value:.3f}"


class BestWeights(HookBase):
    """Keeps the weights of the best epoch by ``monitor`` and loads them back after the last phase.

    When the restored epoch is not the last one, the log says so in one line with the numbers, and
    :attr:`restored` (also in ``metrics.json``) records them.
    """

    name = "best_weights"

    def __init__(self, *, monitor: str = "val_loss", score_name: str = "accuracy", restore: bool = True) -> None:
        if monitor not in MONITORS:
            raise ValueError(f"monitor: expected one of {MONITORS}, got {monitor!r}")
        self.monitor = monitor
        #: the history key watched: val loss (lowest), or the task's val score (highest; ties: lower loss)
        self.key = "val_loss" if monitor == "val_loss" else f"val_{score_name}"
        self.restore = restore
        self.best: dict[str, Any] = {"score": None, "epoch": None, "phase": None, "record": None, "state": None}
        self.restored: dict[str, Any] | None = None

    @property
    def best_epoch(self) -> int | None:
        return self.best["epoch"]

    @property
    def best_val_loss(self) -> float:
        rec = self.best["record"]
        return math.inf if rec is None else float(rec["val_loss"])

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        score = (record["val_loss"],) if self.key == "val_loss" else (-record[self.key], record["val_loss"])
        if self.best["score"] is None or score < tuple(self.best["score"]):
            self.best = {"score": list(score), "epoch": record["epoch"], "phase": record["phase"],
                         "record": {k: record[k] for k in ("epoch", "phase", "val_loss", self.key)},
                         "state": {k: v.detach().clone() for k, v in fit.model.state_dict().items()}}

    def after_fit(self, fit: FitState) -> None:
        if not self.restore or self.best["state"] is None:
            return
        fit.model.load_state_dict(self.best["state"])
        last, best = fit.history[-1], self.best["record"]
        if best["epoch"] == last["epoch"]:
            return
        key = self.key
        what = key.replace("_", " ")
        self.restored = {"epoch": best["epoch"], "phase": best["phase"], "monitor": key, "value": best[key],
                         "last_epoch": last["epoch"], "last_phase": last["phase"], "last_value": last[key]}
        if best["phase"] != last["phase"]:
            lost = [r[key] for r in fit.history if r["phase"] == last["phase"]]
            top = min(lost) if key == "val_loss" else max(lost)
            msg = (f"{last['phase']} did not beat {best['phase']} on {what} {_fmt(top, key)} vs "
                   f"{_fmt(best[key], key)}: kept the {best['phase']} weights from epoch {best['epoch']}")
        else:
            msg = (f"kept the weights of epoch {best['epoch']} ({best['phase']}, {what} {_fmt(best[key], key)}), "
                   f"not the last epoch {last['epoch']} ({_fmt(last[key], key)})")
        self.restored["message"] = msg
        if fit.is_main:
            log.info("%s", msg)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class EarlyStopping(HookBase):
    """Ends a phase after ``patience`` epochs whose val loss is not lower than the phase's best.

    "early stop" is logged only when the phase had epochs left; ``enabled=False`` (a refit's
    replay) never stops.
    """

    name = "early_stopping"

    def __init__(self, *, patience: int, enabled: bool = True) -> None:
        self.patience = patience
        self.enabled = enabled
        self.phase_best = math.inf
        self.bad_epochs = 0
        self.stopped: list[dict[str, Any]] = []

    def before_phase(self, fit: FitState, *, resumed: bool) -> None:
        if not resumed:
            self.phase_best, self.bad_epochs = math.inf, 0

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        loss = record["val_loss"]
        if loss < self.phase_best - 1e-6:
            self.phase_best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.enabled and self.bad_epochs >= self.patience and fit.phase_epoch < fit.phase_epochs:
            fit.stop = True
            self.stopped.append({"phase": fit.phase_name, "after_epoch": fit.phase_epoch, "of": fit.phase_epochs})
            if fit.is_main:
                log.info("phase %s: early stop after epoch %d of %d (val loss did not improve on %.4f for %d epochs)",
                         fit.phase_name, fit.phase_epoch, fit.phase_epochs, self.phase_best, self.patience)

    def state_dict(self) -> dict[str, Any]:
        return {"phase_best": self.phase_best, "bad_epochs": self.bad_epochs, "stopped": json.dumps(self.stopped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase_best, self.bad_epochs = state["phase_best"], state["bad_epochs"]
        self.stopped = json.loads(state.get("stopped", "[]"))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's state (``weights_only``: never unpickles code); a damaged file is a BadFileError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise BadFileError(path, f"not a readable checkpoint ({first_line(exc)})",
                           "delete it to restart the run, or train again with --overwrite") from None
    if not isinstance(state, dict):
        raise BadFileError(path, f"holds a {type(state).__name__}, not a checkpoint dict",
                           "delete it to restart the run, or train again with --overwrite")
    return state


class Checkpoint(HookBase):
    """After every epoch (rank 0): ``checkpoint.pt`` (model, optimizer, schedule, loop position, every
    hook's state, RNG) and ``history.jsonl``; ``resume`` reads it back."""

    name = "checkpoint"

    def __init__(self, run_dir: Path, *, hooks: Sequence[HookBase]) -> None:
        self.run_dir = run_dir
        self.path = run_dir / CHECKPOINT
        self.hooks = hooks

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        if not fit.is_main:
            return
        done = fit.stop or fit.phase_epoch == fit.phase_epochs
        save_checkpoint(self.path, {
            "model": fit.model.state_dict(), "optimizer": fit.optimizer.state_dict(),
            "scheduler": fit.scheduler.state_dict(), "history": json.dumps(fit.history),
            "phase": fit.phase_index + 1 if done else fit.phase_index, "phase_epoch": 0 if done else fit.phase_epoch,
            "global_epoch": fit.global_epoch, "train_s": fit.train_s, "rng": torch.get_rng_state(),
            "scaler": fit.scaler.state_dict() if fit.scaler is not None else {},
            "hooks": {h.name: h.state_dict() for h in self.hooks},
        })
        atomic_write_text(self.run_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in fit.history))

    def resume(self, fit: FitState) -> dict[str, Any] | None:
        """Load the checkpoint into ``fit`` and the hooks; the checkpoint (or None when there is none)."""
        if not self.path.is_file():
            return None
        ck = load_checkpoint(self.path)
        fit.model.load_state_dict(ck["model"])
        fit.history = json.loads(ck["history"])
        fit.phase_index, fit.phase_epoch = ck["phase"], ck["phase_epoch"]
        fit.global_epoch, fit.train_s = ck["global_epoch"], ck["train_s"]
        fit.resumed_train_s = float(ck["train_s"])
        for h in self.hooks:
            if h.name in ck["hooks"]:
                h.load_state_dict(ck["hooks"][h.name])
        return ck


class Callbacks(HookBase):
    """The caller's ``callback(record)`` functions, after the checkpoint (a callback may end the process)."""

    name = "callbacks"

    def __init__(self, callbacks: Sequence[Callable[[dict[str, Any]], None]]) -> None:
        self.callbacks = tuple(callbacks)

    def after_epoch(self, fit: FitState, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(record)
