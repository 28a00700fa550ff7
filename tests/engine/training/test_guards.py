"""The stops of a run going nowhere (training/guards.py): divergence, accuracy at chance."""

from __future__ import annotations

import json

from cli_checks import clean
from hostile_checks import (
    TINY,
    invoke,
    last_error_line,
)


def test_diverging_loss_stops_with_the_fix(tmp_path, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("pretrain", *TINY, "--limit", "32", "--lr", "1e6", "--out", "runs/d")
    line = last_error_line(r, "training diverged: ", "at epoch 1, step ", "the learning rate (--lr 1e+06) is likely too "
                          "high: try --lr 100000 or a linear warm-up (--warmup-epochs 5) (in a new run)")
    assert "ce is nan" in line or "ce is inf" in line
    assert not (tmp_path / "runs" / "d").exists() and not (tmp_path / "runs" / "latest").exists()


def test_at_chance_after_three_epochs_stops_or_warns(tmp_path, small_backdrops, monkeypatch):
    from lbfood.engine.training import guards

    monkeypatch.setattr(guards, "CHANCE_MIN_STEPS", 6)  # 3 epochs of 2 steps: judged at epoch 3
    monkeypatch.chdir(tmp_path)
    args = ("--arch", "resnet18", "--width", "0.125", "--epochs", "3", "--batch-size", "16", "--limit", "32",
            "--lr", "1e-9", "--device", "cpu", "-q")
    r = invoke("pretrain", *args, "--out", "runs/c")
    last_error_line(r, "test accuracy is 9.4% after 3 epochs (6 steps), still at chance (10.0% for 10 classes): "
                   "the model is not learning", "try --lr 1e-10 or a linear warm-up (--warmup-epochs 5)",
                   "(--no-stop-at-chance trains on)")
    meta = json.loads((tmp_path / "runs" / "c" / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"]) == ("stopped", 3)
    assert not (tmp_path / "runs" / "latest").exists()
    r = invoke("pretrain", *args, "--out", "runs/w", "--no-stop-at-chance")
    clean(r)
    assert r.exit_code == 0 and "still at chance" in r.output
    assert json.loads((tmp_path / "runs" / "w" / "run.json").read_text())["status"] == "done"


def test_chance_rule_and_default_warmup():
    from lbfood.engine.config import CHANCE_MIN_STEPS, TrainConfig
    from lbfood.engine.training import guards

    assert CHANCE_MIN_STEPS == 200
    assert [guards.chance_epoch(n, 1000) for n in (1, 3, 10, 15, 16, 100)] == [3, 3, 3, 3, 4, 20]
    # Few steps an epoch: judged only once 200 steps are done (8 steps an epoch: after 25 epochs, not 3).
    assert guards.chance_epoch(3, 8) == 25 and guards.chance_epoch(100, 8) == 25 and guards.chance_epoch(100, 1) == 200
    cfg = TrainConfig(epochs=10, lr=0.1)
    assert guards.at_chance(0.14, 10, cfg, 3, 100, 32) is not None  # 1.5 / 10 = 0.15
    assert guards.at_chance(0.15, 10, cfg, 3, 100, 32) is None
    assert guards.at_chance(0.10, 10, cfg, 2, 100, 32) is None and guards.at_chance(0.10, 10, cfg, 4, 100, 32) is None
    assert guards.at_chance(0.10, 10, cfg, 3, 8, 32) is None  # 24 steps: too early to judge
    assert "--init" in guards.at_chance(0.1, 10, cfg, 3, 100, 224)
    assert "--init" not in guards.at_chance(0.1, 10, cfg, 3, 100, 32)
    assert guards.at_chance(0.1, 10, cfg, 3, 100, 32, "validation").startswith(
        "validation accuracy is 10.0% after 3 epochs (300 steps)")
    assert TrainConfig(epochs=20).resolve(224).warmup_epochs == 5
    assert TrainConfig(epochs=3).resolve(224).warmup_epochs == 2
    assert TrainConfig(epochs=20).resolve(32).warmup_epochs == 0
    assert TrainConfig(epochs=20, warmup_epochs=0).resolve(224).warmup_epochs == 0
