"""torch.compile (inductor, CPU) on fine-tune's trainable suffix: training steps/s against eager, compile time.

The suffix is what ``fine-tune`` trains on cached activations: the top ``--unfreeze`` stages plus
the head, fed with activations at their boundary (random here: speed only). One process, eager
and compiled side by side, interleaved repeats.

Example:
    PYTHONPATH=src python benchmarks/compile.py --backbones mobilenet_v2 --json benchmarks/results/compile.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import write_json

from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone


class Suffix(nn.Module):
    def __init__(self, model: TransferModel, start: int) -> None:
        super().__init__()
        self.model, self.start = model, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(x, self.start)


def steps_per_s(runner: nn.Module, model: TransferModel, x: torch.Tensor, y: torch.Tensor, *, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(runner(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t)


def bench(name: str, *, unfreeze: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TransferModel(backbone=create_backbone(name, pretrained=False), num_classes=17, head=HeadConfig())
    start = len(model.stage_names) - unfreeze
    for i, stage in enumerate(model.stages):
        stage.requires_grad_(i >= start)
    model.train()
    size = model.preprocessing.input_size
    with torch.no_grad():
        x = model.prefix(torch.randn(batch, 3, size, size), start=0, stop=start).contiguous(
            memory_format=torch.channels_last)
    y = torch.randint(0, 17, (batch,))
    eager = Suffix(model, start)
    t = time.perf_counter()
    compiled = torch.compile(Suffix(model, start), backend="inductor")
    steps_per_s(compiled, model, x, y, steps=2)  # compiles forward and backward
    compile_s = time.perf_counter() - t
    steps_per_s(eager, model, x, y, steps=1)
    runs: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        runs["eager"].append(steps_per_s(eager, model, x, y, steps=steps))
        runs["compiled"].append(steps_per_s(compiled, model, x, y, steps=steps))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"unfreeze": unfreeze, "batch": batch, "compile_s": round(compile_s, 1),
            "eager_steps_s": round(med["eager"], 3), "compiled_steps_s": round(med["compiled"], 3),
            "speedup": round(med["compiled"] / med["eager"], 3), "runs": {k: [round(r, 3) for r in v] for k, v in runs.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    p.add_argument("--unfreeze", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "note": a.note,
                               "load_avg_1m_before": round(os.getloadavg()[0], 2), "backbones": {}}
    for name in a.backbones.split(","):
        results["backbones"][name] = bench(name, unfreeze=a.unfreeze, batch=a.batch_size, steps=a.steps,
                                           repeats=a.repeats)
        print(name, results["backbones"][name], file=sys.stderr)
        write_json(a.json, results)
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
