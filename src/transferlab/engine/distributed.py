"""torch.distributed in one place: launched by torchrun (gloo on CPU, nccl on CUDA) or single process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from transferlab.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the joined process group, ``(0, 1)`` outside torchrun.

    Example:
        >>> world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_batches(n: int, *, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Item indices of the batches ``rank, rank + world_size, ...`` of ``0..n-1`` cut into ``batch_size``.

    Whole batches, so every rank runs exactly the batches a single process would run (same shapes:
    bit-identical rows).

    Example:
        >>> shard_batches(10, batch_size=3, rank=1, world_size=2)
        [3, 4, 5, 9]
    """
    batches = range(rank, (n + batch_size - 1) // batch_size, world_size)
    return [i for b in batches for i in range(b * batch_size, min(n, (b + 1) * batch_size))]


def gather_batches(local: torch.Tensor, *, n: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """All ranks' :func:`shard_batches` rows put back in item order (on every rank, on the CPU).

    Example:
        >>> gather_batches(torch.arange(4.0).view(4, 1), n=4, batch_size=2, device=torch.device("cpu")).view(-1)
        tensor([0., 1., 2., 3.])
    """
    rank, size = world()
    if size == 1:
        return local
    counts = [len(shard_batches(n, batch_size=batch_size, rank=r, world_size=size)) for r in range(size)]
    width = max(counts)
    pad = torch.zeros((width, *local.shape[1:]), dtype=local.dtype)
    pad[: len(local)] = local
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(pad, device=on) for _ in range(size)]
    dist.all_gather(parts, pad.to(on))
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r in range(size):
        idx = shard_batches(n, batch_size=batch_size, rank=r, world_size=size)
        if idx:
            out[idx] = parts[r][: counts[r]].cpu()
    return out


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. one runtime decision for all); ``value`` itself alone."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool) -> bool:
    """True on every rank iff ``flag`` is true on every rank."""
    if world()[1] == 1:
        return flag
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([0 if flag else 1], dtype=torch.int64, device=on)
    dist.all_reduce(t)
    return int(t.item()) == 0
