"""lbfood/engine/sweep/preflight.py: what a new sweep refuses before its first trial trains — an unfinished
parent, a validation OOD set that is a test set (given or from the default benchmark), an empty one, a δ
with no background location — each as one line, with no training and no folder left behind."""

import dataclasses

import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from lbfood.engine import runs
from lbfood.engine.config import FinetuneConfig
from lbfood.engine.sweep import preflight
from lbfood.engine.sweep.space import SweepConfig


@pytest.fixture
def sweep_cli(tmp_path, monkeypatch, make_run, small_backdrops):
    """sweep(*extra) -> the one error line of `lbfood sweep --from PARENT --out sw ...`; fails the test if
    any trial started training."""
    from lbfood.cli import app
    from lbfood.engine.training import loop

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    trained = []
    real_fit = loop.fit
    monkeypatch.setattr(loop, "fit", lambda s: (trained.append(s.cfg.lam), real_fit(s))[1])

    def sweep(*extra):
        r = CliRunner().invoke(app, ["sweep", "--from", str(parent), "--out", "sw", "--lambda", "0.5", "--epochs", "1",
                                     "--batch-size", "64", "--probe-batches", "1", "--device", "cpu", "--workers", "0",
                                     "-q", *extra])
        line = " ".join(one_error_line(r).split())
        assert trained == [] and not (tmp_path / "sw").exists(), (trained, line)
        return line

    sweep.parent = parent
    return sweep


def test_an_unfinished_parent_is_refused_with_the_command_that_finishes_it(sweep_cli):
    parent = sweep_cli.parent
    runs.update(parent, status="running", epochs_done=0)  # a crashed (or still training) pretrain
    line = sweep_cli()
    assert f"--from {parent} is not finished (status still training, or killed, 0 of 1 epochs)" in line
    assert f"`lbfood pretrain --resume --out {parent}`" in line
    runs.update(parent, status="interrupted", epochs_done=1)
    assert "(status interrupted, 1 of 1 epochs)" in sweep_cli()


def test_a_validation_set_that_is_a_test_set_is_refused_also_from_the_default_benchmark(sweep_cli, tmp_path):
    line = sweep_cli("--val-ood", "backdrops-scenes")  # no --ood: the test sets are the backdrops benchmark's
    assert ("--val-ood backdrops-scenes is also a test set (the default test benchmark of backdrops: backdrops-scenes, "
            "backdrops-novel, backdrops-noise)") in line
    assert "(--benchmark backdrops: " in sweep_cli("--val-ood", "backdrops-novel", "--benchmark", "backdrops")
    assert "(--ood: backdrops-noise)" in sweep_cli("--val-ood", "backdrops-noise", "--ood", "scenes=backdrops-noise")
    (tmp_path / "imgs").mkdir()
    line = sweep_cli("--val-ood", "folder:imgs", "--ood", f"folder:{tmp_path / 'imgs'}/")
    assert "--val-ood folder:imgs is also a test set" in line  # the same folder, named two ways
    sc = SweepConfig(recipe=FinetuneConfig(), val_ood="backdrops-scenes", ood=("backdrops-noise",))
    preflight.check_val_ood(sc, "backdrops")  # not tested here: accepted
    preflight.check_val_ood(dataclasses.replace(sc, ood=()), "imagefolder:x")  # no benchmark, no test set


def test_an_empty_validation_folder_and_a_delta_without_background_are_refused_before_the_control(sweep_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "folder:empty: no image files under empty" in sweep_cli("--val-ood", "folder:empty")
    line = sweep_cli("--delta", "1e-300")
    assert "--mu auto: no background location at δ = 1e-300: 0 of" in line and "(e.g. 0.01)" in line
    # a number for μ needs no background location to be measured: only a note, then training
    assert preflight.measured_points(SweepConfig(recipe=FinetuneConfig(), delta=("1e-300",), mu=("2",))) == []
    assert [p["delta"] for p in preflight.measured_points(SweepConfig(
        recipe=FinetuneConfig(), mode="search", delta=("0.1", "0.2"), mu=("2", "q0.5")))] == ["0.1", "0.2"]
