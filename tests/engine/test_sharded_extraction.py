"""Under torchrun the frozen prefix runs sharded by batches and is gathered: bit-identical to one process,
the disk entry written once (2 gloo processes, and two torchrun "nodes" rendezvousing on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from transferlab.engine.distributed import shard_batches

REPO = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from transferlab.data import ImageDataset, NormStats, build_transform, open_dataset
    from transferlab.engine import ActivationStore, SplitInputs, init_distributed, shutdown_distributed
    from transferlab.engine.feature_cache import FeatureCache
    from transferlab.experiments.train import item_keys
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    data, out, runtime = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    model = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
                          head=HeadConfig(), cut=3)
    src = open_dataset(str(data), quiet=True)
    pre, idx = model.preprocessing, np.arange(len(src))
    tf = build_transform(pre, norm=NormStats(kind="pretrained", mean=pre.mean, std=pre.std))
    split = SplitInputs(name="train", labels=torch.as_tensor(src.labels), items=item_keys(src, idx),
                        eval_dataset=ImageDataset(src, idx, tf))
    store = ActivationStore(model, device=ctx.device, batch_size=4, runtime=runtime,
                            disk=FeatureCache(out / "cache"), fingerprint={"backbone": "mobilenet_v2", "seed": 0})
    store.pristine_upto = 3
    acts = store.get(split, 3)
    counts = ctx.gather(store.forward_images)
    if ctx.is_main:
        torch.save(acts.clone(), out / "acts.pt")
        (out / "info.json").write_text(json.dumps({"forward_images": counts, "entries": len(store.disk.entries())}))
    shutdown_distributed()
''')


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _check(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            _, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and its ranks: no process left holding the port
            raise
        assert p.returncode == 0, err[-3000:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def setup(tiny_folder: Path, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TRANSFERLAB_OFFLINE": "1",
           "GLOO_SOCKET_IFNAME": "lo"}  # the ranks talk over loopback, whatever the host name resolves to
    return tiny_folder, script, env


def _single(setup: tuple[Path, Path, dict[str, str]], out: Path, runtime: str) -> torch.Tensor:
    data, script, env = setup
    out.mkdir()
    _check([_run([sys.executable, str(script), str(data), str(out), runtime], env)])
    return torch.load(out / "acts.pt", weights_only=True)


def test_shard_batches_cover_every_item_once():
    shards = [shard_batches(23, batch_size=4, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(23))
    assert shards[0][:4] == [0, 1, 2, 3] and shards[1][:4] == [4, 5, 6, 7]
    assert shard_batches(3, batch_size=4, rank=1, world_size=2) == []  # more ranks than batches


def test_two_gloo_processes_bit_identical_to_one(setup: tuple[Path, Path, dict[str, str]], tmp_path: Path):
    data, script, env = setup
    one = _single(setup, tmp_path / "one", "torch")
    out = tmp_path / "two"
    out.mkdir()
    _check([_run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                  "--master-port", str(_free_port()),
                  str(script), str(data), str(out), "torch"], env)])
    two = torch.load(out / "acts.pt", weights_only=True)
    info = json.loads((out / "info.json").read_text())
    assert torch.equal(one, two)
    assert info["forward_images"] == [12, 12] and info["entries"] == 1  # each image once; one cache entry


def test_two_torchrun_nodes_on_localhost(setup: tuple[Path, Path, dict[str, str]], tmp_path: Path):
    data, script, env = setup
    one = _single(setup, tmp_path / "one", "auto")
    out = tmp_path / "nodes"
    out.mkdir()
    nodes = [_run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29533",
                   "--rdzv-id", "transferlab-test", str(script), str(data), str(out), "auto"], env)
             for rank in (0, 1)]
    _check(nodes)
    two = torch.load(out / "acts.pt", weights_only=True)
    info = json.loads((out / "info.json").read_text())
    assert info["forward_images"] == [12, 12] and info["entries"] == 1
    assert torch.equal(one, two)
