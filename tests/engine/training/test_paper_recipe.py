"""Issue 14's recipe points: weight decay as the paper states it (4), one precision rule with fp32
extraction (5), and a CE-only control that needs no μ (6)."""

import pytest
import torch
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import models, runs, runtime
from lbfood.engine.config import FinetuneConfig, TrainConfig
from lbfood.engine.presets import preset_values
from lbfood.engine.training.loop import make_optimizer

PARENT = {"data": "backdrops", "arch": "resnet18", "width": 0.125}
CPU = ["--device", "cpu", "--workers", "0", "--batch-size", "64", "--limit", "128", "-q"]


def _decays(cfg):
    groups = make_optimizer(cfg, models.build("resnet18", num_classes=3, width=0.125)).param_groups
    return [g["weight_decay"] for g in groups]


def test_finetuning_decays_every_parameter_and_pretraining_skips_bn():
    ft = FinetuneConfig().resolve(PARENT, preset_values("backdrops", 32, 10))
    assert ft.wd_on_bn is True and _decays(ft) == [1e-4, 1e-4]  # the paper: 1e-4 on all parameters
    assert _decays(ft.replace(wd_on_bn=False)) == [1e-4, 0.0]  # --no-wd-on-bn keeps the other choice
    assert _decays(TrainConfig()) == [5e-4, 0.0]  # pretraining: no decay on BN weights and biases


def test_evaluation_extracts_in_fp32_unless_told():
    cuda = torch.device("cuda")  # resolving needs no GPU for these cases
    assert runtime.resolve_precision("auto", cuda, training=False) == "fp32"
    assert runtime.resolve_precision("bf16", cuda, training=False) == "bf16"
    assert runtime.resolve_precision("auto", torch.device("cpu"), training=True) == "fp32"
    with runtime.autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(Exception, match="unknown precision"):
        runtime.autocast(torch.device("cpu"), "auto")


def test_the_control_needs_no_mu_and_lff_says_what_was_measured(tmp_path, monkeypatch, make_run, small_backdrops):
    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    model, _ = runs.load_run(parent)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    runs.save_model(parent, model)  # every location gives every class p = 1/10: none is below δ = 0.05
    runner = CliRunner()
    r = runner.invoke(app, ["finetune", "--from", str(parent), "--lambda", "0", "--delta", "0.05", "--epochs", "1",
                            "--out", str(tmp_path / "ce"), *CPU])
    assert r.exit_code == 0, r.output
    assert "μ unused (λ = 0)" in " ".join(r.output.split())
    r = runner.invoke(app, ["finetune", "--from", str(parent), "--lambda", "1", "--delta", "0.05", "--epochs", "1",
                            "--out", str(tmp_path / "lff"), *CPU])
    assert r.exit_code == 2
    line = " ".join(r.output.split())
    assert "0 of 2048 locations" in line and "a larger --delta" in line and not (tmp_path / "lff").exists()
