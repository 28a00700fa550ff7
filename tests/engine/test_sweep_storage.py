"""`lbfood sweep --storage` (lbfood/engine/sweep/storage.py, identity.py): URLs refused before anything is
created, and a real PostgreSQL server (tests/pgserver.py) shared by workers that share nothing else: three
worker processes, one of them SIGKILLed mid-trial, and the examples/slurm/ shell loop."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbfood.engine.config import FinetuneConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.sweep.space import SweepConfig

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RECIPE = dict(epochs=1, batch_size=64, device="cpu", workers=0, probe_batches=1)
LAMBDAS = ("0.5", "1")


def _config(out, parent, storage=None, **kw) -> SweepConfig:
    return SweepConfig(recipe=FinetuneConfig(parent=str(parent), **RECIPE), out=str(out), lam=LAMBDAS,
                       methods=("react",), storage=storage, ood=("backdrops-noise",), heartbeat_s=2, **kw)


def _args(parent, out, storage, *extra):
    return ["sweep", "--from", str(parent), "--out", str(out), "--storage", storage, "--lambda", ",".join(LAMBDAS),
            "--epochs", "1", "--batch-size", "64", "--probe-batches", "1", "--device", "cpu", "--workers", "0",
            "--method", "react", "--ood", "backdrops-noise", "--heartbeat", "2", "--quiet", *extra]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LBFOOD_TEST_FAKE_HOST": "machine", **extra}


def _study(url):
    import optuna

    from lbfood.engine.sweep import storage

    return optuna.load_study(study_name="lbfood-sweep", storage=storage.resolve(url, Path(".")).url)


def _comparable(doc):
    """sweep.json without what depends on who trained what when: trial numbers, folders, seconds."""
    drop = ("number", "run", "train_seconds")
    return {"selected": {k: v for k, v in doc["selected"].items() if k not in drop},
            "trials": sorted(({k: v for k, v in r.items() if k not in drop} for r in doc["trials"]), key=lambda r: r["key"]),
            "accuracy_floor": doc["accuracy_floor"]}


# ---- URLs refused before anything is created ------------------------------------------------------


def _refused(tmp_path, make_run, storage, *needles):
    from cli_checks import one_error_line
    from typer.testing import CliRunner

    from lbfood.cli import app

    parent = tmp_path / "runs/parent"
    if not parent.exists():
        make_run(tmp_path, name="parent")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(app, _args(parent, tmp_path / "sw", storage))
    line = " ".join(one_error_line(r, *needles).split())
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no .lock, no folder
    return line


@pytest.mark.parametrize("url, needles", [
    ("not a url", ("'not a url' is not a database URL", "postgresql://USER:PASSWORD@HOST:PORT/DATABASE")),
    ("sqlite:///nowhere/study.db", ("the folder nowhere does not exist",)),
    ("sqlite:///:memory:", ("in-memory database", "name a file")),
    ("sqlite://", ("in-memory database",)),
    ("mysql://u:pw@localhost/db", ("SQLite or PostgreSQL, not mysql",)),
    ("postgresql+pg8000://u:pw@localhost/db", ("the PostgreSQL driver (pg8000) is not installed",
                                               "pip install 'lbfood[postgres]'")),
])
def test_storage_urls_that_cannot_hold_a_shared_study_are_one_line(tmp_path, monkeypatch, make_run, url, needles):
    monkeypatch.chdir(tmp_path)
    _refused(tmp_path, make_run, url, *needles)


def test_a_folder_a_missing_driver_and_an_unreachable_host_are_one_line(tmp_path, monkeypatch, make_run):
    import importlib.util

    import pgserver

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dbdir").mkdir()
    assert "--storage sqlite:///dbdir names a folder" in _refused(tmp_path, make_run, "sqlite:///dbdir")
    port = pgserver.free_port()  # nothing listens there
    line = _refused(tmp_path, make_run, f"postgresql://u:hunter2@127.0.0.1:{port}/db",
                    f"cannot use the database at 127.0.0.1:{port} (Connection refused)")
    assert "hunter2" not in line and "u:***@" in line  # the password is never printed
    line = _refused(tmp_path, make_run, "postgresql://u:pw@db.invalid/x", "cannot use the database at db.invalid:5432",
                    "failed to resolve host")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    for driver in ("psycopg", "psycopg2"):  # neither installed: plain postgresql:// has no driver
        monkeypatch.setitem(sys.modules, driver, None)
    line = _refused(tmp_path, make_run, "postgresql://u:pw@db.invalid/x", "is not installed; pip install 'lbfood[postgres]'")
    assert "the PostgreSQL driver (psycopg" in line


def test_a_continued_study_names_each_option_that_differs(tmp_path, monkeypatch, make_run):
    import lbfood
    from lbfood.engine.sweep import study

    monkeypatch.chdir(tmp_path)
    sc = _config(tmp_path / "sw", make_run(tmp_path))
    study.open_study(sc)
    with pytest.raises(ConfigError) as e:
        study.open_study(dataclasses.replace(sc, max_acc_drop=2.0, recipe=dataclasses.replace(sc.recipe, epochs=3)))
    assert "options: --max-acc-drop (2.0 here, 1.0 in the study); --epochs (3 here, 1 in the study); rerun" in str(e.value)
    monkeypatch.setattr(lbfood, "__version__", "9.9.9")
    with pytest.raises(ConfigError, match=r"lbfood version \(9.9.9 here, 0.1.0 in the study\)"):
        study.open_study(sc)


# ---- a real PostgreSQL server ---------------------------------------------------------------------


def test_wrong_password_and_a_worker_without_the_sweep_folder_are_refused(tmp_path, monkeypatch, make_run,
                                                                          postgres_server, postgres_url):
    from lbfood.engine.sweep import study

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    line = _refused(tmp_path, make_run, postgres_url.replace(":s3cret-pw@", ":Not-The-Pw@"),
                    f"cannot use the database at 127.0.0.1:{postgres_server.port}",
                    'password authentication failed for user "lbfood"')
    assert "Not-The-Pw" not in line and "lbfood:***@" in line
    study.open_study(_config(tmp_path / "shared" / "sw", parent, postgres_url))  # the study records its folder
    assert json.loads((tmp_path / "shared/sw/study.json").read_text())["storage"].startswith("postgresql://lbfood:***@127.0.0.1:")
    with pytest.raises(ConfigError, match=r"--out .*elsewhere/sw is not the sweep folder of the study in .*made at "
                                          r".*shared/sw on .*put it on a file system all machines mount"):
        study.open_study(_config(tmp_path / "elsewhere" / "sw", parent, postgres_url))
    assert not (tmp_path / "elsewhere").exists()


def test_three_workers_on_postgres_train_each_point_once_and_a_killed_one_is_finished_by_another(
        tmp_path, monkeypatch, make_run, small_backdrops, postgres_url):
    """Three worker processes share only the database URL (each its own working folder and, as far as
    lbfood can tell, its own host); --out is the shared sweep folder. One is SIGKILLed while it trains:
    its heartbeat stops, Optuna fails the trial after 4 missed beats and re-queues it, and a waiting
    worker trains it into a new folder. The selection and sweep.json equal a one-worker SQLite run's."""
    from lbfood.engine.sweep import results, study

    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    shared = tmp_path / "shared" / "sw"
    procs = []
    for i in range(3):
        (tmp_path / f"machine{i}").mkdir()
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests/sweep_cli.py"),
                                       *_args(parent, shared, postgres_url, "--worker")],
                                      cwd=tmp_path / f"machine{i}", env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    by_pid = {p.pid: p for p in procs}
    victim, deadline = None, time.time() + 240
    while victim is None:  # the first LFF trial that has started training (its run.json is written)
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
        try:
            running = [t for t in _study(postgres_url).get_trials() if t.state.name == "RUNNING" and "run" in t.user_attrs
                       and t.user_attrs["key"] != "control" and (shared / t.user_attrs["run"] / "run.json").exists()]
        except KeyError:  # no study yet
            running = []
        if running:
            victim = running[0]
        time.sleep(0.2)
    killed = by_pid[victim.user_attrs["worker"]["pid"]]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p is killed or p.returncode == 0, err

    trials = _study(postgres_url).get_trials()
    doc = results.finalize(_config(shared, parent, postgres_url))
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["key"] for t in done) == sorted(r["key"] for r in doc["trials"]) and len(done) == 3
    assert [(t.number, t.state.name) for t in trials if t.state.name != "COMPLETE"] == [(victim.number, "FAIL")]
    retry = next(t for t in done if t.user_attrs["key"] == victim.user_attrs["key"])
    assert retry.system_attrs["failed_trial"] == victim.number  # re-queued by the heartbeat's callback
    assert retry.user_attrs["worker"]["pid"] != killed.pid
    runs_ = [t.user_attrs["run"] for t in trials]
    assert len(set(runs_)) == len(runs_) and retry.user_attrs["run"] == f"{victim.user_attrs['run']}-t{retry.number:03d}"
    assert doc["control"] == 0 and doc["trials"][0]["key"] == "control"

    one = _config(tmp_path / "one", parent)  # the same sweep, one worker, SQLite
    assert study.work(one) == 3
    assert _comparable(doc) == _comparable(results.finalize(one))
    assert json.loads((shared / "sweep.json").read_text())["storage"].startswith("postgresql://lbfood:***@127.0.0.1:")


def test_the_slurm_array_task_and_the_shell_loop_run_one_sweep_on_postgres(tmp_path, monkeypatch, make_run,
                                                                             small_backdrops, postgres_url):
    slurm = ROOT / "examples/slurm"
    for script in ("sweep.sbatch", "sweep-loop.sh"):
        assert subprocess.run(["bash", "-n", str(slurm / script)], capture_output=True).returncode == 0
    assert "#SBATCH --array=0-3" in (slurm / "sweep.sbatch").read_text()
    monkeypatch.chdir(tmp_path)
    parent = make_run(tmp_path)
    out = tmp_path / "sw"
    args = [a for a in _args(parent, out, postgres_url)[1:]]
    i = args.index("--storage")
    del args[i:i + 2]  # the script passes $LBFOOD_STORAGE
    env = _env(LBFOOD_STORAGE=postgres_url, LBFOOD=f"{sys.executable} {ROOT / 'tests/sweep_cli.py'}")
    task1 = subprocess.Popen(["bash", str(slurm / "sweep.sbatch"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**env, "SLURM_ARRAY_TASK_ID": "1"})
    p = subprocess.run(["bash", str(slurm / "sweep-loop.sh"), "1", *args], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=600)  # one worker and the driver, beside the array's task 1
    assert p.returncode == 0, p.stdout + p.stderr
    assert task1.wait(timeout=300) == 0 and "worker done" in task1.stdout.read()
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "done" and [r["key"] for r in doc["trials"]][0] == "control"
    assert sorted(r["key"] for r in doc["trials"]) == sorted(["control", *(f"dpreset-muauto-l{x}-current" for x in LAMBDAS)])
    assert p.stdout.count("worker done") == 1 and "selected" in p.stdout


def test_a_worker_whose_trial_was_re_queued_meanwhile_drops_it_and_its_folder(tmp_path, monkeypatch, make_run):
    """A worker silent for 4 heartbeats (stalled, not dead) finds its trial failed when it next reports:
    it stops that trial, removes the folder it was writing, and goes on (its replacement trains elsewhere)."""
    from optuna.trial import TrialState

    from lbfood.engine.sweep import study

    monkeypatch.chdir(tmp_path)
    sc = _config(tmp_path / "sw", make_run(tmp_path))
    s = study.open_study(sc)
    study.reconcile(s, sc)
    with pytest.warns(UserWarning, match="Heartbeat"):  # lbfood runs the heartbeat thread itself (study._settle)
        trial = s.ask()

    def run_trial(st, t, sc_, on_event):
        folder = tmp_path / "sw/trials/control"
        folder.mkdir(parents=True)
        t.set_user_attr("run", "trials/control")
        st._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # what another worker's reconcile does
        t.report(0.5, 0)
        raise AssertionError("report on a failed trial must raise")

    monkeypatch.setattr(study, "run_trial", run_trial)
    events = []
    study._settle(s, trial, sc, events.append)
    assert [(e.number, e.state) for e in events] == [(trial.number, "lost")]
    assert not (tmp_path / "sw/trials/control").exists() and s.get_trials()[trial.number].state == TrialState.FAIL
