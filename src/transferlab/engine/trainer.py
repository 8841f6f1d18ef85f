"""The one engine: runs any plan of phases, with caching, early stopping, checkpoints and DDP."""

from __future__ import annotations

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

from transferlab.engine.activations import ActivationStore, SplitInputs
from transferlab.engine.distributed import DistContext
from transferlab.engine.hooks import (
    CHECKPOINT,
    MONITORS,
    BestWeights,
    Callbacks,
    Checkpoint,
    EarlyStopping,
    FitState,
    HookBase,
    load_checkpoint,
    save_checkpoint,
)
from transferlab.engine.schedules import make_scheduler
from transferlab.engine.tasks import ClassificationTask, Task
from transferlab.errors import ConfigError, TrainingError
from transferlab.progress import bar
from transferlab.strategies.model import TransferModel
from transferlab.strategies.plans import Phase, Plan

log = logging.getLogger("transferlab.engine")

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)



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
    best_epoch: int | None  # 1-based; None when no epoch ran
    best_val_loss: float
    train_s: float
    extract_s: float
    phases_run: list[str] = field(default_factory=list)
    restored: dict[str, Any] | None = None  # the monitor kept an earlier epoch than the last (with the numbers)
    early_stops: list[dict[str, Any]] = field(default_factory=list)
    resumed_train_s: float = 0.0  # of ``train_s``, what the sessions before a resume trained


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


def decay_split(groups: list[dict[str, Any]], weight_decay: float) -> list[dict[str, Any]]:
    """Each group twice: matrices and kernels with ``weight_decay``, biases and norm weights (1-D) without.

    timm's ``param_groups_weight_decay`` and nanoGPT's rule: decaying a bias or a BatchNorm scale only
    pulls it towards 0, it does not regularise. The no-decay copy has ``no_decay: True``.

    Example:
        >>> lin = nn.Linear(3, 2)
        >>> [(len(g["params"]), g["weight_decay"]) for g in decay_split([{"params": list(lin.parameters()),
        ...                                                               "lr": 0.1, "name": "head"}], 0.01)]
        [(1, 0.01), (1, 0.0)]
    """
    out = []
    for g in groups:
        decay = [p for p in g["params"] if p.ndim > 1]
        flat = [p for p in g["params"] if p.ndim <= 1]
        if decay:
            out.append({**g, "params": decay, "weight_decay": weight_decay})
        if flat:
            out.append({**g, "params": flat, "weight_decay": 0.0, "no_decay": True})
    return out


def build_optimizer(groups: list[dict[str, Any]], phase: Phase) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over ``groups``; weight decay on weight matrices only (:func:`decay_split`)."""
    split = decay_split(groups, phase.weight_decay)
    if phase.optimizer == "sgd":
        return torch.optim.SGD(split, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay)
    return torch.optim.AdamW(split, lr=phase.lr, weight_decay=phase.weight_decay)


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
        # fp16 on CUDA: loss scaling keeps small gradients from underflowing (bf16 has fp32's range: no scaler)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.device.type == "cuda"
                                           and options.precision == "fp16")
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
        local = torch.cat(outs) if outs else torch.empty(0, self.model.num_classes)
        shards = self.ctx.gather((mine, local))
        shape = next((tuple(part.shape[1:]) for idx, part in shards if idx), (self.model.num_classes,))
        logits = torch.empty(n, *shape)  # (N, classes), or a dense task's (N, C, H, W)
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
            resume: bool = False, replay: Sequence[int] | None = None, hooks: Sequence[HookBase] = ()) -> FitResult:
        """Run ``plan`` phase by phase; the hooks stop early, keep the best epoch and checkpoint.

        ``replay``: epochs to run in each phase (each phase's schedule still spans its planned
        epochs), without early stopping or restoring: the refit on train+val of a finished run.
        ``hooks``: more hooks, after the built-in ones (not checkpointed), e.g. one that keeps every
        epoch's held-out outputs (``FitState.val_logits``).
        """
        model = self.model
        if replay is not None and len(replay) != len(plan.phases):
            raise ValueError(f"replay: expected {len(plan.phases)} epoch counts (one per phase), got {len(replay)}")
        plan.validate(model.stage_names)
        self.store.pristine_upto = plan.lowest_trainable_stage(model.stage_names) if plan.pretrained else 0
        fit = FitState(model=model, plan=plan, replay=replay, is_main=self.ctx.is_main)
        best = BestWeights(monitor=self.opt.monitor, score_name=self.task.score_name, restore=replay is None)
        stopping = EarlyStopping(patience=self.opt.patience, enabled=replay is None)
        loop_hooks: list[HookBase] = [best, stopping]
        checkpoint = Checkpoint(run_dir, hooks=list(loop_hooks)) if run_dir is not None else None
        if checkpoint is not None:
            loop_hooks.append(checkpoint)
        loop_hooks += hooks
        after_barrier = Callbacks(self.callbacks)
        resume_state = checkpoint.resume(fit) if resume and checkpoint is not None else None
        start_phase, start_epoch = fit.phase_index, fit.phase_epoch
        if resume_state is not None:
            log.info("resuming at phase %d (%s), epoch %d", start_phase + 1,
                     plan.phases[min(start_phase, len(plan.phases) - 1)].name, start_epoch + 1)
            # caches above any stage trained by a finished phase would be recomputed anyway:
            # the store is empty in a new process.
        self._warm_caches(plan, train, val)
        phases_run: list[str] = []
        for pi, phase in enumerate(plan.phases):
            if pi < start_phase or (replay is not None and replay[pi] == 0):
                continue
            resumed = resume_state is not None and pi == start_phase
            phases_run.append(phase.name)
            self._run_phase(fit, pi, phase, train=train, val=val, hooks=loop_hooks, after_barrier=after_barrier,
                            resume_state=resume_state if resumed else None,
                            first_epoch=start_epoch if resumed else 0)
            resume_state = None
            trained = [stage_index(model, g) for g in phase.trainable if g != "head"]
            if trained:
                self.store.invalidate_above(min(trained))
        for hook in loop_hooks:
            hook.after_fit(fit)
        if best.restore and best.best["state"] is not None:
            # stages below the plan's lowest trainable stage never change: their caches stay valid
            self.store.invalidate_above(plan.lowest_trainable_stage(model.stage_names))
        return FitResult(history=fit.history, best_epoch=best.best_epoch, best_val_loss=best.best_val_loss,
                         train_s=fit.train_s, extract_s=self.extract_s, phases_run=phases_run,
                         restored=best.restored, early_stops=list(stopping.stopped),
                         resumed_train_s=fit.resumed_train_s)

    def _warm_caches(self, plan: Plan, train: SplitInputs, val: SplitInputs) -> None:
        """One pass through the frozen prefix: the lowest boundary first, the others chain from it."""
        low = self.store.pristine_upto
        if plan.pretrained and 0 < low and any(min(stage_index(self.model, g) for g in p.trainable) > low
                                               for p in plan.phases):
            self._activations(train, low, allow=self.cacheable_train)
            self._activations(val, low, allow=True)

    def _run_phase(self, fit: FitState, pi: int, phase: Phase, *, train: SplitInputs, val: SplitInputs,
                   hooks: Sequence[HookBase], after_barrier: HookBase, resume_state: dict[str, Any] | None,
                   first_epoch: int) -> None:
        """Epochs of one phase: train, validate, record, then the hooks."""
        model = self.model
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
        if resume_state is not None:
            if first_epoch > 0:
                optimizer.load_state_dict(resume_state["optimizer"])
                if resume_state.get("scaler"):
                    self.scaler.load_state_dict(resume_state["scaler"])
                scheduler.load_state_dict(resume_state["scheduler"])
            # after this phase's caches are built, exactly where the interrupted run stood
            torch.set_rng_state(resume_state["rng"])
        fit.optimizer, fit.scheduler, fit.scaler = optimizer, scheduler, self.scaler
        fit.phase_index, fit.phase_name, fit.stop, fit.phase_start = pi, phase.name, False, start
        fit.phase_epochs = phase.epochs if fit.replay is None else fit.replay[pi]
        for hook in hooks:
            hook.before_phase(fit, resumed=resume_state is not None and first_epoch > 0)
        for epoch in range(first_epoch, fit.phase_epochs):
            t0, extract0 = time.perf_counter(), self.extract_s
            set_modes(model, phase)
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            tr_loss, tr_score = self._train_epoch(runner, loader, optimizer, scheduler,
                                                  prefix_stop=start if train_acts is None else 0,
                                                  mix=phase.augment and (train_acts is None or start == 0),
                                                  desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
                                                  where=(phase.name, epoch))
            fit.val_logits = self._val_logits(val, val_acts, start)
            val_loss, val_score = self.task.evaluate(fit.val_logits, val.labels)
            if not math.isfinite(val_loss):
                raise TrainingError(
                    f"loss became {val_loss} in phase {phase.name!r}, epoch {epoch + 1} (validation); training "
                    "stopped, the last good checkpoint is kept (lower --lr or check the data)"
                )
            seconds = time.perf_counter() - t0 - (self.extract_s - extract0)  # extraction is extract_s's
            fit.train_s += seconds
            fit.global_epoch += 1
            fit.phase_epoch = epoch + 1
            record = self._record(fit, phase, pi, optimizer, tr_loss=tr_loss, tr_score=tr_score,
                                  val_loss=val_loss, val_score=val_score, cached=train_acts is not None,
                                  seconds=seconds)
            fit.history.append(record)
            if self.ctx.is_main and not self.opt.quiet:
                log.info("%s epoch %d/%d: train loss %.4f %s %.3f | val loss %.4f %s %.3f (%.1fs)",
                         phase.name, epoch + 1, phase.epochs, tr_loss, self._short, tr_score, val_loss,
                         self._short, val_score, seconds)
            for hook in hooks:
                hook.after_epoch(fit, record)
            self.ctx.barrier()
            after_barrier.after_epoch(fit, record)  # after the checkpoint: a callback may end the process
            if fit.stop:
                break

    @property
    def _short(self) -> str:
        return "acc" if self.task.score_name == "accuracy" else self.task.score_name

    def _record(self, fit: FitState, phase: Phase, pi: int, optimizer: torch.optim.Optimizer, *, tr_loss: float,
                tr_score: float, val_loss: float, val_score: float, cached: bool, seconds: float) -> dict[str, Any]:
        """One epoch of ``history.jsonl``, epochs from 1; the task's score is ``train_/val_<score_name>``
        (``accuracy`` for classification, ``mean_iou`` for boxes ...)."""
        name = self.task.score_name
        groups = list({g["name"]: g for g in reversed(optimizer.param_groups)}.values())[::-1]  # one per group
        return {
            "epoch": fit.global_epoch, "phase": phase.name, "phase_index": pi, "phase_epoch": fit.phase_epoch,
            "train_loss": tr_loss, f"train_{name}": tr_score, "val_loss": val_loss, f"val_{name}": val_score,
            **({} if name == "accuracy" else {"score_name": name}),
            "lr": [g["lr"] for g in groups], "lr_groups": [g["name"] for g in groups],
            "trainable": list(phase.trainable), "cached_inputs": cached, "seconds": round(seconds, 3),
        }

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
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)  # skipped when fp16 gradients overflowed (the scale then shrinks)
            self.scaler.update()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += self.task.batch_score(logits.detach(), target)
            total += len(y)
        loss_sum, correct, total_f = self.ctx.all_sum([loss_sum, correct, float(total)])
        return loss_sum / max(total_f, 1), correct / max(total_f, 1)
