"""The engine's hooks on their own: restore-by-monitor says what it kept, early stop only when early,
state survives the checkpoint, and AdamW leaves biases and norm weights undecayed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from transferlab.engine.hooks import BestWeights, Checkpoint, EarlyStopping, FitState
from transferlab.engine.trainer import build_optimizer, decay_split
from transferlab.strategies.plans import Phase


def _epoch(fit: FitState, hooks: list, phase: str, loss: float, acc: float, *, epochs: int) -> dict:
    """Advance ``fit`` by one epoch of ``phase`` (weights set to ``loss``) and run the hooks."""
    if fit.phase_name != phase:
        fit.phase_name, fit.phase_epoch, fit.phase_epochs, fit.stop = phase, 0, epochs, False
        for h in hooks:
            h.before_phase(fit, resumed=False)
    with torch.no_grad():
        fit.model.weight.fill_(loss)
    fit.global_epoch += 1
    fit.phase_epoch += 1
    rec = {"epoch": fit.global_epoch, "phase": phase, "val_loss": loss, "val_accuracy": acc}
    fit.history.append(rec)
    for h in hooks:
        h.after_epoch(fit, rec)
    return rec


def test_restore_says_the_later_phase_did_not_beat_the_head(caplog: pytest.LogCaptureFixture):
    fit = FitState(model=nn.Linear(1, 1), plan=None, replay=None)
    best = BestWeights(monitor="val_loss")
    for loss in (0.09, 0.067):
        _epoch(fit, [best], "head", loss, 0.9, epochs=2)
    for loss in (0.071, 0.08):
        _epoch(fit, [best], "fine-tune", loss, 0.9, epochs=2)
    with caplog.at_level(logging.INFO, logger="transferlab.engine"):
        best.after_fit(fit)
    msg = "fine-tune did not beat head on val loss 0.0710 vs 0.0670: kept the head weights from epoch 2"
    assert msg in caplog.text
    assert best.restored == {"epoch": 2, "phase": "head", "monitor": "val_loss", "value": 0.067, "last_epoch": 4,
                             "last_phase": "fine-tune", "last_value": 0.08, "message": msg}
    assert float(fit.model.weight.detach()) == pytest.approx(0.067)  # the head's weights are back
    # the last epoch best: nothing to say
    quiet = BestWeights(monitor="val_loss")
    fit2 = FitState(model=nn.Linear(1, 1), plan=None, replay=None)
    for loss in (0.3, 0.2):
        _epoch(fit2, [quiet], "head", loss, 0.5, epochs=2)
    quiet.after_fit(fit2)
    assert quiet.restored is None and quiet.best_epoch == 2


def test_accuracy_monitor_breaks_ties_on_val_loss():
    fit = FitState(model=nn.Linear(1, 1), plan=None, replay=None)
    best = BestWeights(monitor="val_accuracy")
    for loss, acc in ((0.5, 0.8), (0.4, 0.9), (0.3, 0.9), (0.2, 0.85)):
        _epoch(fit, [best], "head", loss, acc, epochs=4)
    best.after_fit(fit)
    assert best.best_epoch == 3 and "val accuracy 0.900" in best.restored["message"]


def test_early_stop_only_when_the_phase_had_epochs_left(caplog: pytest.LogCaptureFixture):
    fit = FitState(model=nn.Linear(1, 1), plan=None, replay=None)
    stop = EarlyStopping(patience=2)
    with caplog.at_level(logging.INFO, logger="transferlab.engine"):
        for loss in (1.0, 1.1, 1.2):  # the 2nd bad epoch is the phase's last: it simply ended
            _epoch(fit, [stop], "a", loss, 0.0, epochs=3)
        assert not fit.stop and "early stop" not in caplog.text
        for loss in (1.0, 1.1, 1.2):
            _epoch(fit, [stop], "b", loss, 0.0, epochs=8)
    assert fit.stop and stop.stopped == [{"phase": "b", "after_epoch": 3, "of": 8}]
    assert "phase b: early stop after epoch 3 of 8" in caplog.text


def test_checkpoint_keeps_every_hooks_state(tmp_path: Path):
    model = nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    fit = FitState(model=model, plan=None, replay=None, optimizer=opt,
                   scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0))
    best, stop = BestWeights(), EarlyStopping(patience=3)
    ck = Checkpoint(tmp_path, hooks=[best, stop])
    for loss in (0.5, 0.6):
        _epoch(fit, [best, stop, ck], "head", loss, 0.5, epochs=5)
    again = FitState(model=nn.Linear(2, 1), plan=None, replay=None)
    best2, stop2 = BestWeights(), EarlyStopping(patience=3)
    assert Checkpoint(tmp_path, hooks=[best2, stop2]).resume(again) is not None
    assert (again.phase_index, again.phase_epoch, again.global_epoch) == (0, 2, 2)
    assert best2.best_epoch == 1 and stop2.bad_epochs == 1 and stop2.phase_best == 0.5
    assert [h["epoch"] for h in again.history] == [1, 2] and (tmp_path / "history.jsonl").is_file()


def test_weight_decay_spares_biases_and_norm_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    groups = [{"params": list(model.parameters()), "lr": 1e-3, "name": "head"}]
    opt = build_optimizer(groups, Phase(name="p", trainable=("head",), epochs=1, lr=1e-3, weight_decay=0.05))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in decay_split(groups, 0.05)) == len(list(model.parameters()))
