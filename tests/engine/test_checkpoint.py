"""An epoch's commit (checkpoint.py): a kill at any write step resumes bit for bit; one writer."""

from __future__ import annotations

import json
import os

import pytest
from cli_checks import clean, one_error_line
from hostile_checks import (
    KILL_RUN,
    POINTS,
    Killed,
    assert_same_run,
    invoke,
    squeezed,
    temp_files,
    tree,
)


@pytest.mark.parametrize("point", POINTS)
def test_killed_run_resumes_bit_for_bit(reference, tmp_path, kill_at, point):
    kill_at(point)
    with pytest.raises(Killed):
        invoke("pretrain", *KILL_RUN, "--out", "runs/k")
    run = tmp_path / "runs" / "k"
    assert json.loads((run / "run.json").read_text())["status"] != "done"
    if point != "latest":
        assert os.readlink(tmp_path / "runs" / "latest") == "ref"
    kill_at(None)
    r = invoke("pretrain", "--resume", "--out", run, "--epochs", "2", "--device", "cpu", "-q")
    clean(r)
    assert r.exit_code == 0, r.output
    if point in ("trained", "calibrated", "latest", "meta@2", "metrics@2", "model@2", "state@2"):
        assert squeezed("has trained all 2 epochs but was not calibrated; calibrating it now") in squeezed(r.output)
    assert_same_run(run, reference)
    assert os.readlink(tmp_path / "runs" / "latest") == "k"
    assert not temp_files(run)


def test_killed_in_the_first_epoch_advice_leads_to_a_finished_run(reference, tmp_path):
    """A real hard exit (os._exit, as SIGKILL, in a child process) in the first step: run.json but no epoch.
    `--resume` says to start afresh, and starting afresh into the same folder works (no circle): the same
    run as uninterrupted."""
    import subprocess
    import sys

    from lbfood.engine import killpoints

    boot = ("import sys; from lbfood.engine.data import backdrops; "
            "backdrops.SPLITS.update(train=200, test=100, scenes=100, novel=100, noise=100); "
            "from lbfood.cli import app; sys.argv[0] = 'lbfood'; app()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}

    def lbfood(*args, kill=None):
        e = {**env, killpoints.ENV: kill} if kill else env
        return subprocess.run([sys.executable, "-c", boot, *map(str, args)], env=e, capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)

    p = lbfood("pretrain", *KILL_RUN, "--out", "runs/k", kill="step@1")
    assert p.returncode == 137
    run = tmp_path / "runs" / "k"
    assert sorted(e.name for e in run.iterdir()) == [".lock", "run.json"]
    # the folder is now as SIGKILL left it; following the advice needs no separate process
    r = invoke("pretrain", "--resume", "--out", "runs/k", "--epochs", "2", "--device", "cpu", "-q")
    one_error_line(r, "error: runs/k holds no finished epoch (it stopped during its first), so there is nothing "
                      "to resume: run the same command without --resume, with --out runs/k (its files are replaced)")
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/k")
    clean(r)
    assert r.exit_code == 0, r.output
    assert_same_run(run, reference)


def test_a_folder_with_finished_epochs_is_not_started_over(reference, tmp_path):
    before = tree(reference)
    one_error_line(invoke("pretrain", *KILL_RUN, "--out", reference),
                   f"--out {reference} holds a run with finished epochs; continue it with --resume")
    assert tree(reference) == before


def test_resume_checks_weights_and_state_agree(reference, tmp_path):
    """model.safetensors one epoch behind its train state (killed between the two writes): resume rebuilds
    the weights from the train state, so no epoch is trained twice."""
    from lbfood.engine import checkpoint, runs
    from lbfood.engine.io import load_tensors, save_tensors

    state = load_tensors(reference / "train_state.safetensors")
    stale = {k: v * 0 for k, v in load_tensors(reference / "model.safetensors").items()}
    save_tensors(reference / "model.safetensors", stale, metadata={"epoch": "1"})
    runs.update(reference, epochs_done=1)
    assert checkpoint.recover(reference) == 2
    fixed = load_tensors(reference / "model.safetensors")
    assert all(fixed[k].equal(state["model." + k]) for k in fixed)
    assert runs.read(reference).epochs_done == 2


def test_second_writer_fails_at_once(reference, tmp_path):
    from lbfood.engine import checkpoint

    with checkpoint.lock(tmp_path / "runs" / "busy"):  # a first `pretrain --out runs/busy` still training
        before = tree(tmp_path / "runs")
        one_error_line(invoke("pretrain", *KILL_RUN, "--out", "runs/busy"),
                       "runs/busy is being written by another lbfood command; wait for it to finish")
        assert tree(tmp_path / "runs") == before
    with checkpoint.lock(reference):
        before = tree(reference)
        one_error_line(invoke("pretrain", "--resume", "--out", reference, "--epochs", "3", "--device", "cpu"),
                       "is being written by another lbfood command")
        assert tree(reference) == before
