"""The one engine: runs any plan of phases, with caching, early stopping, checkpoints and DDP."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, WeightedRandomSampler

from transferlab.data import atomic_write_bytes, atomic_write_text
from transferlab.engine.activations import ActivationStore, SplitInputs
from transferlab.engine.distributed import DistContext
from transferlab.engine.schedules import make_scheduler
from transferlab.engine.tasks import ClassificationTask, Task
from transferlab.errors import ConfigError, TrainingError
from transferlab.progress import bar
from transferlab.strategies.model import TransferModel
from transferlab.strategies.plans import Phase, Plan

log = logging.getLogger("transferlab.engine")

CHECKPOINT = "checkpoint.pt"
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


MONITORS = ("val_loss", "val_accuracy")


@dataclass(frozen=True)
class EngineOptions:
    """How the engine trains (the plan says what)."""

    batch_size: int = 32
    seed: int = 0
    patience: int = 5
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None
    balanced_sampler: bool = False
    precision: str = "fp32"
    num_workers: int = 0
    cache: bool = True
    max_cache_mb: int = 6144
    quiet: bool = False
    monitor: str = "val_loss"  # which epoch is restored at the end: lowest val loss, or highest val accuracy

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ConfigError(f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be >= 1, got {self.patience}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    train_s: float
    extract_s: float
    phases_run: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- trainable sets

def stage_index(model: TransferModel, group: str) -> int:
    return len(model.stage_names) if group == "head" else model.stage_names.index(group)


def configure_trainable(model: TransferModel, phase: Phase) -> list[tuple[str, list[nn.Parameter]]]:
    """Freeze everything, then unfreeze the phase's groups; set train/eval modes per the BN policy.

    Returns the trainable groups top-down (head first, then deepest stage first) with their params.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    ordered = sorted(set(phase.trainable), key=lambda g: -stage_index(model, g))
    groups = []
    for g in ordered:
        module = model.modules_of(g)
        params = list(module.parameters())
        for p in params:
            p.requires_grad_(True)
        module.train()
        if phase.bn == "frozen":
            for m in module.modules():
                if isinstance(m, BN_TYPES):
                    m.eval()
        groups.append((g, params))
    return groups


def param_groups(groups: list[tuple[str, list[nn.Parameter]]], phase: Phase) -> list[dict[str, Any]]:
    """Discriminative rates: the top group gets ``phase.lr``, each group below ``/ lr_decay`` more."""
    return [
        {"params": params, "lr": phase.lr / (phase.lr_decay ** rank), "name": name}
        for rank, (name, params) in enumerate(groups)
        if params
    ]


def build_optimizer(groups: list[dict[str, Any]], phase: Phase) -> torch.optim.Optimizer:
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=phase.weight_decay)


def set_modes(model: TransferModel, phase: Phase) -> None:
    """Re-apply the phase's train/eval modes (evaluation switches everything to eval)."""
    model.eval()
    for g in phase.trainable:
        module = model.modules_of(g)
        module.train()
        if phase.bn == "frozen":
            for m in module.modules():
                if isinstance(m, BN_TYPES):
                    m.eval()


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


class _Suffix(nn.Module):
    """``model.forward_from(x, start)`` as a module's forward, for DDP to wrap."""

    def __init__(self, model: TransferModel, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(x, self.start)


# ----------------------------------------------------------------------------- the engine

class Engine:
    """Runs a :class:`Plan` on a :class:`TransferModel`.

    Example:
        >>> from transferlab.engine import init_distributed
        >>> from transferlab.strategies import HeadConfig
        >>> from transferlab.zoo import create_backbone
        >>> model = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False),
        ...                       num_classes=3, head=HeadConfig())
        >>> engine = Engine(model, ctx=init_distributed("cpu"), options=EngineOptions())
        >>> result = engine.fit(plan, train=train_inputs, val=val_inputs, run_dir=Path("runs/x"))
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        model: TransferModel,
        *,
        ctx: DistContext,
        options: EngineOptions,
        cacheable_train: bool = True,
        batch_augment: Any = None,
        store: ActivationStore | None = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
        task: Task | None = None,
    ) -> None:
        self.model = model.to(ctx.device).to(memory_format=torch.channels_last)
        self.ctx = ctx
        self.opt = options
        self.cacheable_train = cacheable_train and options.cache
        self.batch_augment = batch_augment
        self.store = store or ActivationStore(
            self.model, device=ctx.device, batch_size=max(options.batch_size, 64),
            num_workers=options.num_workers, max_bytes=options.max_cache_mb << 20,
            progress=not options.quiet and ctx.is_main,
        )
        self.extract_s = 0.0
        self.callbacks = tuple(callbacks)
        if task is None:
            w = torch.tensor(options.class_weights, dtype=torch.float32) if options.class_weights else None
            task = ClassificationTask(class_weights=w, label_smoothing=options.label_smoothing).to(ctx.device)
        self.task = task

    # ---- inputs
    def _activations(self, split: SplitInputs, boundary: int, *, allow: bool) -> torch.Tensor | None:
        if not (allow and self.opt.cache):
            return None
        t0 = time.perf_counter()
        fresh = not self.store.cached(split, boundary)
        acts = self.store.get(split, boundary)
        if fresh:
            self.extract_s += time.perf_counter() - t0
        return acts

    def _train_loader(self, split: SplitInputs, acts: torch.Tensor | None, seed: int) -> DataLoader:
        dataset = TensorDataset(acts, split.labels) if acts is not None else split.train_dataset
        if dataset is None:
            raise ConfigError("the training split has no training dataset")
        per_rank = max(1, self.opt.batch_size // self.ctx.world_size)
        if self.opt.balanced_sampler:
            if self.ctx.distributed:
                raise ConfigError("--balanced-sampler is not supported with torchrun (DDP); use --class-weights auto")
            counts = torch.bincount(split.labels, minlength=int(split.labels.max()) + 1).float()
            weights = (1.0 / counts.clamp(min=1))[split.labels]
            gen = torch.Generator().manual_seed(seed)
            sampler: Any = WeightedRandomSampler(weights, num_samples=len(split), generator=gen)
        else:
            sampler = DistributedSampler(dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                         shuffle=True, seed=seed)
        workers = 0 if acts is not None else self.opt.num_workers
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers)

    # ---- evaluation
    def predict(self, split: SplitInputs, *, boundary: int = 0, use_cache: bool = True) -> torch.Tensor:
        """Logits for every item of ``split`` (all ranks contribute a shard; all get the result)."""
        acts = self._activations(split, boundary, allow=use_cache)
        start = boundary if acts is not None else 0
        n = len(split)
        mine = list(range(self.ctx.rank, n, self.ctx.world_size))
        self.model.eval()
        outs: list[torch.Tensor] = []
        with torch.inference_mode(), self._autocast():
            if acts is not None:
                for i in range(0, len(mine), 128):
                    x = acts[mine[i : i + 128]].to(self.ctx.device)
                    outs.append(self.model.forward_from(x, start).float().cpu())
            else:
                sub = torch.utils.data.Subset(split.eval_dataset, mine)
                for x, _ in DataLoader(sub, batch_size=64, num_workers=self.opt.num_workers,
                                       generator=torch.Generator()):  # leaves the global RNG alone
                    x = x.to(self.ctx.device).contiguous(memory_format=torch.channels_last)
                    outs.append(self.model(x).float().cpu())
        width = self.model.num_classes
        local = torch.cat(outs) if outs else torch.empty(0, width)
        shards = self.ctx.gather((mine, local))
        logits = torch.empty(n, width)
        for idx, part in shards:
            if idx:
                logits[idx] = part
        return logits

    def _autocast(self) -> Any:
        if self.ctx.device.type == "cuda" and self.opt.precision != "fp32":
            dtype = torch.bfloat16 if self.opt.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    # ---- fit
    def fit(self, plan: Plan, *, train: SplitInputs, val: SplitInputs, run_dir: Path | None,
            resume: bool = False, replay: Sequence[int] | None = None) -> FitResult:
        """Run ``plan``; early stopping on ``val`` loss, the best epoch's weights restored at the end.

        ``replay``: epochs to run in each phase (each phase's schedule still spans its planned
        epochs), without early stopping or restoring: the refit on train+val of a finished run.
        """
        model = self.model
        if replay is not None and len(replay) != len(plan.phases):
            raise ValueError(f"replay: expected {len(plan.phases)} epoch counts (one per phase), got {len(replay)}")
        plan.validate(model.stage_names)
        self.store.pristine_upto = plan.lowest_trainable_stage(model.stage_names) if plan.pretrained else 0
        ckpt_path = run_dir / CHECKPOINT if run_dir else None
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"loss": math.inf, "epoch": -1, "state": None}
        start_phase, start_epoch, phase_best, bad_epochs, global_epoch = 0, 0, math.inf, 0, 0
        resume_state: dict[str, Any] | None = None
        train_s = 0.0
        if resume and ckpt_path is not None and ckpt_path.is_file():
            ck = load_checkpoint(ckpt_path)
            model.load_state_dict(ck["model"])
            history = json.loads(ck["history"])
            best = {"loss": ck["best_loss"], "epoch": ck["best_epoch"], "state": ck["best_state"],
                    "score": tuple(ck.get("best_score", (ck["best_loss"],)))}
            start_phase, start_epoch = ck["phase"], ck["phase_epoch"]
            phase_best, bad_epochs, global_epoch = ck["phase_best"], ck["bad_epochs"], ck["global_epoch"]
            train_s = ck["train_s"]
            resume_state = ck
            log.info("resuming at phase %d (%s), epoch %d", start_phase,
                     plan.phases[min(start_phase, len(plan.phases) - 1)].name, start_epoch)
            # caches above any stage trained by a finished phase would be recomputed anyway:
            # the store is empty in a new process.
        n_stages = len(model.stage_names)
        low = self.store.pristine_upto
        if plan.pretrained and 0 < low and any(min(stage_index(model, g) for g in p.trainable) > low
                                               for p in plan.phases):
            # one pass through the frozen prefix: the lowest boundary first, the others chain from it
            self._activations(train, low, allow=self.cacheable_train)
            self._activations(val, low, allow=True)
        phases_run: list[str] = []
        for pi, phase in enumerate(plan.phases):
            if pi < start_phase or (replay is not None and replay[pi] == 0):
                continue
            groups = configure_trainable(model, phase)
            start = min(stage_index(model, g) for g in phase.trainable)
            train_acts = self._activations(train, start, allow=self.cacheable_train or not phase.augment)
            augmented = phase.augment and self.opt.cache and not self.cacheable_train  # uncached because this phase augments
            if train_acts is None and augmented and start > 0 and self.ctx.is_main:
                log.info("phase %s: training inputs not cached (augmentation is on): the frozen "
                         "prefix runs every step", phase.name)
            val_acts = self._activations(val, start, allow=True)
            loader = self._train_loader(train, train_acts, seed=self.opt.seed + 1000 * pi)
            runner: nn.Module = _Suffix(model, start)
            if self.ctx.distributed:
                runner = DistributedDataParallel(runner, device_ids=None if self.ctx.device.type == "cpu"
                                                 else [self.ctx.device.index])
            optimizer = build_optimizer(param_groups(groups, phase), phase)
            scheduler = make_scheduler(optimizer, phase, total_steps=phase.epochs * len(loader))
            first_epoch = 0
            if resume_state is not None and pi == start_phase and start_epoch > 0:
                optimizer.load_state_dict(resume_state["optimizer"])
                scheduler.load_state_dict(resume_state["scheduler"])
                first_epoch = start_epoch
            if resume_state is not None and pi == start_phase:
                # after this phase's caches are built, exactly where the interrupted run stood
                torch.set_rng_state(resume_state["rng"])
            elif pi > start_phase or resume_state is None:
                phase_best, bad_epochs = math.inf, 0
            resume_state = None
            phases_run.append(phase.name)
            for epoch in range(first_epoch, phase.epochs if replay is None else replay[pi]):
                t0, extract0 = time.perf_counter(), self.extract_s
                set_modes(model, phase)
                if isinstance(loader.sampler, DistributedSampler):
                    loader.sampler.set_epoch(epoch)
                tr_loss, tr_acc = self._train_epoch(runner, loader, optimizer, scheduler,
                                                    prefix_stop=start if train_acts is None else 0,
                                                    mix=phase.augment and (train_acts is None or start == 0),
                                                    desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                                                    where=(phase.name, epoch))
                val_logits = self._val_logits(val, val_acts, start)
                val_loss, val_acc = self.task.evaluate(val_logits, val.labels)
                if not math.isfinite(val_loss):
                    raise TrainingError(
                        f"loss became {val_loss} in phase {phase.name!r}, epoch {epoch + 1} (validation); training "
                        "stopped, the last good checkpoint is kept (lower --lr or check the data)"
                    )
                seconds = time.perf_counter() - t0 - (self.extract_s - extract0)  # extraction is extract_s's
                train_s += seconds
                record = {
                    "epoch": global_epoch, "phase": phase.name, "phase_index": pi, "phase_epoch": epoch,
                    "train_loss": tr_loss, "train_accuracy": tr_acc, "val_loss": val_loss,
                    "val_accuracy": val_acc, "lr": [g["lr"] for g in optimizer.param_groups],
                    "lr_groups": [g["name"] for g in optimizer.param_groups],
                    "trainable": list(phase.trainable), "cached_inputs": train_acts is not None,
                    "seconds": round(seconds, 3),
                }
                history.append(record)
                if self.ctx.is_main and not self.opt.quiet:
                    log.info("%s epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f (%.1fs)",
                             phase.name, epoch + 1, phase.epochs, tr_loss, tr_acc, val_loss, val_acc, seconds)
                score = (val_loss,) if self.opt.monitor == "val_loss" else (-val_acc, val_loss)
                if best["epoch"] < 0 or score < best.get("score", (best["loss"],)):
                    best = {"loss": val_loss, "score": score, "epoch": global_epoch,
                            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                if val_loss < phase_best - 1e-6:
                    phase_best, bad_epochs = val_loss, 0
                else:
                    bad_epochs += 1
                global_epoch += 1
                stop = bad_epochs >= self.opt.patience and replay is None
                done = stop or epoch + 1 == phase.epochs
                if ckpt_path is not None and self.ctx.is_main:
                    save_checkpoint(ckpt_path, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "history": json.dumps(history),
                        "best_loss": best["loss"], "best_epoch": best["epoch"], "best_state": best["state"],
                        "best_score": list(best["score"]),
                        "phase": pi + 1 if done else pi, "phase_epoch": 0 if done else epoch + 1,
                        "phase_best": phase_best, "bad_epochs": bad_epochs, "global_epoch": global_epoch,
                        "train_s": train_s, "rng": torch.get_rng_state(),
                    })
                    atomic_write_text(run_dir / "history.jsonl",
                                      "".join(json.dumps(h) + "\n" for h in history))
                self.ctx.barrier()
                for callback in self.callbacks:  # after the checkpoint: a callback may end the process
                    callback(record)
                if stop:
                    log.info("phase %s: early stop after epoch %d (val loss did not improve for %d epochs)",
                             phase.name, epoch + 1, self.opt.patience)
                    break
            trained = [stage_index(model, g) for g in phase.trainable if g != "head"]
            if trained:
                self.store.invalidate_above(min(trained))
        if best["state"] is not None and replay is None:
            model.load_state_dict(best["state"])
            # stages below the plan's lowest trainable stage never change: their caches stay valid
            self.store.invalidate_above(plan.lowest_trainable_stage(model.stage_names))
        return FitResult(history=history, best_epoch=best["epoch"], best_val_loss=best["loss"],
                         train_s=train_s, extract_s=self.extract_s, phases_run=phases_run)

    def _val_logits(self, val: SplitInputs, val_acts: torch.Tensor | None, start: int) -> torch.Tensor:
        if val_acts is not None:
            return self.predict(val, boundary=start, use_cache=True)
        return self.predict(val, boundary=0, use_cache=False)

    def _train_epoch(self, runner: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                     scheduler: Any, *, prefix_stop: int, mix: bool, desc: str,
                     where: tuple[str, int]) -> tuple[float, float]:
        total, correct, loss_sum = 0, 0.0, 0.0
        it = bar(loader, desc=desc, unit="batch", enabled=not self.opt.quiet and self.ctx.is_main)
        for step, (x, y) in enumerate(it):
            x = x.to(self.ctx.device)
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(self.ctx.device)
            target: torch.Tensor = y
            if self.batch_augment is not None and mix:  # batch augmentation mixes raw images
                x, target = self.batch_augment(x, y)
            if prefix_stop > 0:
                with torch.no_grad():
                    x = self.model.prefix(x, start=0, stop=prefix_stop)
            with self._autocast():
                logits = runner(x)
                loss = self.task.loss(logits, target)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} in phase {where[0]!r}, epoch {where[1] + 1}, step {step + 1}; "
                    "training stopped, the last good checkpoint is kept (lower --lr or check the data)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += self.task.batch_score(logits.detach(), target)
            total += len(y)
        loss_sum, correct, total_f = self.ctx.all_sum([loss_sum, correct, float(total)])
        return loss_sum / max(total_f, 1), correct / max(total_f, 1)
