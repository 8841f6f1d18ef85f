from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import transferlab
from transferlab.cli import main
from transferlab.engine.trainer import CHECKPOINT, load_checkpoint
from transferlab.errors import ConfigError, DataError, TrainingError
from transferlab.experiments.inference import evaluate_run
from tests.conftest import make_image_folder

REPO = Path(__file__).resolve().parents[2]
FAST = dict(backbone="mobilenet_v2", cut=3, split="0.5,0.25,0.25", batch_size=8, quiet=True, device="cpu")


def _core(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("val", "test", "best_epoch")}


def test_frozen_batch_norm_keeps_running_stats(tiny_folder: Path, tmp_path: Path):
    from transferlab.zoo import create_backbone

    before = {k.replace("featurizer.", "stages."): v.clone()
              for k, v in create_backbone("mobilenet_v2").state_dict().items()
              if "running_" in k and k.startswith("featurizer.stage2")}
    assert before

    def last_state(bn: str) -> dict[str, torch.Tensor]:
        run_dir = tmp_path / bn
        transferlab.train(str(tiny_folder), out=run_dir, strategy="fine-tune", unfreeze=1, epochs=1,
                          finetune_epochs=2, bn=bn, **FAST)
        return load_checkpoint(run_dir / CHECKPOINT)["model"]  # the last epoch's weights, not the best

    frozen = last_state("frozen")
    assert all(torch.equal(before[k], frozen[k]) for k in before)
    trained = last_state("train")
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the policy really matters


def test_same_seed_same_result(tiny_folder: Path, tmp_path: Path):
    a = transferlab.train(str(tiny_folder), out=tmp_path / "a", strategy="fine-tune", unfreeze=1, epochs=2,
                          finetune_epochs=2, seed=3, **FAST)
    b = transferlab.train(str(tiny_folder), out=tmp_path / "b", strategy="fine-tune", unfreeze=1, epochs=2,
                          finetune_epochs=2, seed=3, **FAST)
    assert _core(a.metrics) == _core(b.metrics)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "history.jsonl", "metrics.json", "model.safetensors", "model.json", CHECKPOINT,
            "split_train.txt", "split_val.txt", "split_test.txt"} <= files


KILLER = textwrap.dedent("""
    import os, signal, sys
    import transferlab
    def kill_in_thaw(record):
        if record["phase"].startswith("thaw-") and record["phase"] != "thaw-all":
            os.kill(os.getpid(), signal.SIGKILL)
    transferlab.train(sys.argv[1], out=sys.argv[2], strategy="chain-thaw", unfreeze=2, epochs=2, thaw_epochs=2,
                      finetune_epochs=2, backbone="mobilenet_v2", cut=3, batch_size=8, quiet=True, device="cpu",
                      dropout=0.3, augment=sys.argv[3], callbacks=[kill_in_thaw])
""")


@pytest.mark.parametrize("augment", ["none", "basic"])  # basic: the thaw phases draw random crops
def test_resume_after_sigkill_mid_chain_thaw_matches_uninterrupted(tiny_folder: Path, tmp_path: Path, augment: str):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(script), str(tiny_folder), str(run_dir), augment], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ck = load_checkpoint(run_dir / CHECKPOINT)
    assert ck["phase"] == 1 and ck["phase_epoch"] == 1  # killed after epoch 1 of the first thaw phase
    assert not (run_dir / "metrics.json").exists()
    resumed = transferlab.resume_training(run_dir, quiet=True)
    whole = transferlab.train(str(tiny_folder), out=tmp_path / "whole", strategy="chain-thaw", unfreeze=2, epochs=2,
                              thaw_epochs=2, finetune_epochs=2, dropout=0.3, augment=augment, **FAST)
    assert [h["phase"] for h in resumed.history] == [h["phase"] for h in whole.history]
    assert _core(resumed.metrics) == _core(whole.metrics)
    # with augmentation the thaw phases ran on fresh random crops, not on cached activations
    thaw = [h for h in whole.history if h["phase"].startswith("thaw-")]
    assert thaw and all(h["cached_inputs"] == (augment == "none") for h in thaw)
    hist = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(hist) == len(whole.history)
    # the total counts the killed session's training: the parts add up, none clipped to zero
    tm = resumed.metrics["timing"]
    assert 0 < resumed.metrics["resumed_train_s"] < tm["train_s"]
    assert tm["total_s"] == pytest.approx(tm["extract_s"] + tm["train_s"] + tm["other_s"], abs=0.01)
    assert tm["total_s"] > tm["train_s"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_folder: Path, tmp_path: Path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"phases": [
        {"name": "ok", "trainable": ["head"], "epochs": 1, "lr": 0.01},
        {"name": "explode", "trainable": ["head"], "epochs": 2, "lr": 1e30, "optimizer": "sgd", "schedule": "constant"},
    ]}))
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) in phase 'explode'.*last good checkpoint"):
        transferlab.train(str(tiny_folder), out=tmp_path / "nan", plan=str(plan), **FAST)
    ck = load_checkpoint(tmp_path / "nan" / CHECKPOINT)
    assert ck["phase"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_bad_options_are_one_line_errors(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cases = [
        (["--strategy", "finetune"], "invalid choice: 'finetune'"),
        (["--backbone", "resnet51"], "unknown backbone 'resnet51'"),
        (["--strategy", "fine-tune", "--unfreeze", "7"], "--unfreeze must be between 1 and 3"),
    ]
    for extra, expected in cases:
        with pytest.raises(SystemExit) if "invalid choice" in expected else _no_raise():
            code = main(["train", str(tiny_folder), "--out", str(tmp_path / "x"), "--cut", "3", "--quiet",
                         "--backbone", "mobilenet_v2", *extra])
            assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert expected in err[-1]


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_predict_and_evaluate_from_run_files(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run_dir = tmp_path / "lp"
    assert main(["train", str(tiny_folder), "--out", str(run_dir), "--strategy", "linear-probe",
                 "--backbone", "mobilenet_v2", "--cut", "3", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    img = next((tiny_folder / "class_1").iterdir())
    assert main(["predict", str(img), "--model", str(run_dir), "--top", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["top"]) == 2 and out[0]["top"][0]["label"] in {"class_0", "class_1", "class_2"}
    m = evaluate_run(run_dir, str(tiny_folder), subset="test")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    other = make_image_folder(tmp_path / "other", classes=2)
    with pytest.raises(DataError, match="differ from the model's"):
        evaluate_run(run_dir, str(other))


def test_unknown_api_option_is_an_error(tiny_folder: Path):
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['epoch'\]"):
        transferlab.train(str(tiny_folder), epoch=3)


def test_torchrun_two_processes_matches_single_process(tiny_folder: Path, tmp_path: Path):
    args = ["train", str(tiny_folder), "--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "fine-tune",
            "--unfreeze", "1", "--epochs", "2", "--finetune-epochs", "2", "--batch-size", "8", "--dropout", "0",
            "--quiet", "--device", "cpu", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    single = subprocess.run([sys.executable, "-m", "transferlab", *args, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", "29517", "-m", "transferlab", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 0.15
    assert abs(one["val"]["loss"] - two["val"]["loss"]) <= 0.05 * max(1.0, one["val"]["loss"])
    # only rank 0 wrote: one set of files, and the JSON printed once per rank is the same result
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    hist = (tmp_path / "two" / "history.jsonl").read_text().splitlines()
    assert len(hist) == len((tmp_path / "one" / "history.jsonl").read_text().splitlines())


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_restored_epoch_follows_the_monitor(tiny_folder: Path, tmp_path: Path, monitor: str):
    run = transferlab.train(str(tiny_folder), out=tmp_path / monitor, strategy="fine-tune", unfreeze=1, epochs=3,
                            finetune_epochs=3, patience=10, monitor=monitor, **FAST)
    h = run.history
    key = (lambda r: r["val_loss"]) if monitor == "val_loss" else (lambda r: (-r["val_accuracy"], r["val_loss"]))
    assert run.metrics["best_epoch"] == min(h, key=key)["epoch"]
    # the restored weights are that epoch's: predicting val again gives its accuracy
    assert run.metrics["val"]["accuracy"] == pytest.approx(h[run.metrics["best_epoch"] - 1]["val_accuracy"])  # epochs from 1


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_grad_scaler_only_for_fp16_on_cuda(precision: str):
    from transferlab.engine import Engine, EngineOptions, init_distributed
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    model = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=2,
                          head=HeadConfig(), cut=1)
    cpu = Engine(model, ctx=init_distributed("cpu"), options=EngineOptions(precision=precision))
    assert not cpu.scaler.is_enabled()  # autocast (and so fp16) is CUDA-only: fp32 on the CPU
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the fp16 GradScaler path needs a GPU")
    gpu = Engine(model, ctx=init_distributed("cuda"), options=EngineOptions(precision=precision))
    assert gpu.scaler.is_enabled() == (precision == "fp16")
