"""Train, then calibrate (pipeline.py): a run killed or stopped in calibration is finished by --resume."""

from __future__ import annotations

import json
import os

import pytest
from cli_checks import clean
from hostile_checks import (
    KILL_RUN,
    Killed,
    assert_same_run,
    invoke,
    squeezed,
)


def test_resume_names_the_flags_it_ignores(reference, tmp_path):
    assert json.loads((reference / "run.json").read_text())["config"]["warmup_epochs"] == 0  # resolved, recorded
    r = invoke("pretrain", "--resume", "--out", reference, "--epochs", "2", "--lr", "0.5", "--batch-size", "64",
               "--seed", "99", "--device", "cpu", "-q")
    clean(r)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[0] == ("warning: --resume continues the run with the settings in its run.json; ignored: --batch-size, "
                        "--lr, --seed (only --epochs, --device, --precision and --workers change on resume)")
    assert r.exit_code == 2 and lines[1].startswith("error: ") and "already finished 2 epoch(s)" in lines[1]
    r = invoke("pretrain", "--resume", "--out", reference, "--epochs", "2", "--device", "cpu", "-q")
    assert "warning" not in r.output


def test_finetune_killed_in_calibration_is_finished_by_resume(reference, tmp_path, kill_at):
    """Cases 4 and 11 for `finetune`: killed after its last epoch, `--resume` calibrates it (no training),
    names the flag it ignores, and the run equals the uninterrupted one."""
    ft = ("--from", reference, "--epochs", "2", "--batch-size", "16", "--limit", "32", "--mu", "1", "--device", "cpu",
          "-q")
    r = invoke("finetune", *ft, "--out", "runs/fref")
    clean(r)
    assert r.exit_code == 0, r.output
    kill_at("calibrated")
    with pytest.raises(Killed):
        invoke("finetune", *ft, "--out", "runs/fk")
    kill_at(None)
    assert json.loads((tmp_path / "runs" / "fk" / "run.json").read_text())["status"] == "trained"
    r = invoke("finetune", "--resume", "--out", "runs/fk", "--lr", "0.5", "--device", "cpu", "-q")
    clean(r)
    assert r.exit_code == 0, r.output
    assert squeezed("ignored: --lr (only --epochs") in squeezed(r.output)
    assert squeezed("calibrating it now") in squeezed(r.output) and "epoch   1" not in r.output
    assert_same_run(tmp_path / "runs" / "fk", tmp_path / "runs" / "fref")
    assert os.readlink(tmp_path / "runs" / "latest") == "fk"


def test_ctrl_c_during_calibration_says_resume_and_resume_finishes(reference, tmp_path, kill_at, monkeypatch):
    from lbfood.engine import killpoints

    def ctrl_c():
        raise KeyboardInterrupt

    kill_at("calibrated")
    monkeypatch.setattr(killpoints, "die", ctrl_c)
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/c")
    clean(r)
    assert r.exit_code == 130 and squeezed("interrupted after 2 epoch(s); continue with --resume --out runs/c") \
        in squeezed(r.output), r.output
    assert json.loads((tmp_path / "runs" / "c" / "run.json").read_text())["status"] == "trained"
    kill_at(None)
    r = invoke("pretrain", "--resume", "--out", "runs/c", "--epochs", "2", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert_same_run(tmp_path / "runs" / "c", reference)
