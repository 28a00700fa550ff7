"""lbfood.engine.config: fine-tuning fields stay None until one resolve() fills them; check() validates."""

from __future__ import annotations

import math

import pytest
from cli_checks import one_error_line
from hostile_checks import (
    TINY,
    invoke,
)

from lbfood.engine.config import FinetuneConfig, TrainConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.training.finetune import preset_values

PARENT = {"data": "backdrops", "data_root": None, "val_split": 0.0, "classes_file": None, "arch": "resnet18",
          "width": 0.25}


def test_an_explicit_value_survives_resolution():
    cfg = FinetuneConfig(delta=0.2).resolve(PARENT, preset_values("backdrops", 32, 10))
    assert cfg.delta == 0.2 and cfg.mu == "auto" and cfg.lam == 1.0 and cfg.epochs == 4
    assert cfg.weight_decay == 1e-4 and cfg.jitter == 0.0 and cfg.schedule == "multistep"
    assert cfg.milestones == (2,) and cfg.arch == "resnet18" and cfg.width == 0.25
    cfg.check()


def test_unset_fields_take_the_preset_and_the_parent():
    cfg = FinetuneConfig().resolve({**PARENT, "data": "cifar100"}, preset_values("cifar100", 32, 100))
    assert (cfg.delta, cfg.mu, cfg.lam, cfg.epochs, cfg.lr) == (0.01, 2.0, 1.0, 30, 0.1)
    assert cfg.data == "cifar100"
    # δ = 1/K where the paper has no preset.
    assert FinetuneConfig().resolve(PARENT, preset_values("custom", 32, 4)).delta == 0.25


def test_the_resolved_config_round_trips_through_json():
    cfg = FinetuneConfig(lam=0.0).resolve(PARENT, preset_values("backdrops", 32, 10))
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg


def test_check_refuses_an_unresolved_config():
    with pytest.raises(ConfigError, match="not resolved"):
        FinetuneConfig().check()


@pytest.mark.parametrize(("change", "message"), [
    (dict(lr=math.nan), "--lr"), (dict(lr=math.inf), "--lr"), (dict(momentum=math.nan), "--momentum"),
    (dict(momentum=-1), "--momentum"), (dict(gamma=math.nan), "--gamma"), (dict(weight_decay=-1), "--weight-decay"),
    (dict(jitter=-1), "--jitter"), (dict(jitter=math.nan), "--jitter"), (dict(width=math.nan), "--width"),
    (dict(width=math.inf), "--width"), (dict(val_split=2), "--val-split"), (dict(seed=10**20), "--seed"),
    (dict(epochs=0), "--epochs"), (dict(warmup_epochs=5, epochs=5), "--warmup-epochs"),
])
def test_every_number_is_checked_in_one_place(change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change).check()


@pytest.mark.parametrize(("change", "message"), [
    (dict(lam=math.inf), "--lambda"), (dict(lam=math.nan), "--lambda"), (dict(mu=math.nan), "--mu"),
    (dict(mu=math.inf), "--mu"), (dict(mu="big"), "--mu"), (dict(delta=1.0), "--delta"),
    (dict(probe_batches=0), "--probe-batches"), (dict(mask_from="x"), "--mask-from"),
])
def test_finetune_numbers_are_checked(change, message):
    cfg = FinetuneConfig(**change).resolve(PARENT, preset_values("backdrops", 32, 10))
    with pytest.raises(ConfigError, match=message):
        cfg.check()


# ---- hostile input (formerly tests/test_hostile.py) ----


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--momentum", "nan"),
                                        ("--gamma", "nan"), ("--weight-decay", "-1"), ("--jitter", "nan"),
                                        ("--width", "nan"), ("--warmup-epochs", "-1")])
def test_pretrain_refuses_bad_numbers(tmp_path, small_backdrops, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY if a not in ("--width", "0.125")] if flag == "--width" else list(TINY)
    one_error_line(invoke("pretrain", *args, flag, value, "--out", "r"), flag)
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,value", [("--lambda", "inf"), ("--lambda", "nan"), ("--mu", "nan"),
                                        ("--mu", "inf"), ("--lr", "nan")])
def test_finetune_refuses_bad_numbers(run, tmp_path, flag, value):
    one_error_line(invoke("finetune", "--from", run, flag, value, "--device", "cpu", "--limit", "8",
                          "--out", "f"), flag)
    assert not (tmp_path / "f").exists()
