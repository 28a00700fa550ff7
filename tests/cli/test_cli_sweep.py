"""lbfood/commands/sweep.py: worker counts checked before anything is made; Ctrl-C says how to continue."""

import pytest
from cli_checks import clean, one_error_line
from typer.testing import CliRunner

from lbfood.cli import app


def _args(parent, *extra):
    return ["sweep", "--from", str(parent), "--out", "sw", "--lambda", "0.5", "--epochs", "1", "--batch-size", "64",
            "--probe-batches", "1", "--device", "cpu", "--workers", "0", "-q", *extra]


@pytest.mark.parametrize(("flags", "says"), [
    (("--devices", "0"), "--devices and --per-gpu must be >= 1, got 0 and 1"),
    (("--per-gpu", "0"), "--devices and --per-gpu must be >= 1, got 1 and 0"),
    (("--devices", "-1", "--per-gpu", "2"), "--devices and --per-gpu must be >= 1"),
    (("--min-gain", "nan"), "--min-gain must be a number of points in [0, 100), got nan"),
    (("--min-gain", "-1"), "--min-gain must be a number of points in [0, 100), got -1.0")])
def test_no_worker_process_and_a_bad_min_gain_are_refused(tmp_path, monkeypatch, make_run, flags, says):
    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    one_error_line(CliRunner().invoke(app, _args(parent, *flags)), says)
    assert not (tmp_path / "sw").exists()


def test_ctrl_c_says_that_the_same_command_continues_the_sweep(tmp_path, monkeypatch, make_run, small_backdrops):
    from lbfood.engine.training import loop

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    real_fit = loop.fit

    def fit(session):  # Ctrl-C during the first L_LFF trial, after the control finished
        if session.cfg.lam > 0:
            raise KeyboardInterrupt
        return real_fit(session)

    monkeypatch.setattr(loop, "fit", fit)
    r = CliRunner().invoke(app, _args(parent, "--min-gain", "0.5"))
    clean(r)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 130 and lines[-1] == ("error: interrupted; run the same command again to continue the sweep "
                                                "in sw (finished trials are kept, the interrupted one starts over)")
    control = (tmp_path / "sw/trials/control/model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(loop, "fit", real_fit)
    r = CliRunner().invoke(app, _args(parent, "--min-gain", "0.5"))  # the same command: the control is kept
    clean(r)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    verdict = out[out.index("verdict:"):]
    assert verdict.startswith(("verdict: trial 1 (dpreset-muauto-l0.5-current, ", "verdict: no setting beat the "
                               "control beyond noise on validation data (by more than --min-gain 0.5 points)"))
    assert (tmp_path / "sw/trials/control/model.safetensors").stat().st_mtime_ns == control
    # (in-process, the interrupted attempt's "worker" is this live process: its retry gets its own folder)
    assert len(list((tmp_path / "sw/trials").glob("dpreset-muauto-l0.5-current*/run.json"))) == 1
