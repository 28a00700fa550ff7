"""The sweep's Optuna study: a queue of trials in a shared storage, worked by one or more processes.

Storage: `sqlite:///<sweep>/study.db` by default, or any Optuna URL (`--storage`), so that several
processes or machines running the same command work on one study. Each worker loops: under a file lock
(`<sweep>/.lock`, which serialises the workers of one machine; SQLite's own locking does not make
Optuna's pop of a queued trial atomic) it reconciles the study with the plan and takes the next trial;
then it trains, validates and reports the trial without the lock.

Reconcile, the rule that makes the command resumable: every planned point (the control, then the grid
or the paper's one-factor-at-a-time points) must have a trial that is COMPLETE, PRUNED, RUNNING or
WAITING; a point without one (never queued, or its trial failed or was interrupted) is queued again.
A RUNNING trial whose worker process is gone (same host, dead pid) is failed first; so is one whose
Optuna heartbeat stopped (a worker on another machine). Finished trials are never repeated.
`search` mode queues the control only; TPE samples the other `trials` points.

Grid and paper points are queued (Optuna's `enqueue_trial`) rather than drawn by `GridSampler`, which
may hand one grid point to two parallel workers; the queue gives each point to exactly one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError, LbfoodError, RunError
from lbfood.engine.killpoints import kill_point
from lbfood.engine.sweep import space
from lbfood.engine.sweep.space import FACTORS, SweepConfig

STUDY_NAME = "lbfood-sweep"


@dataclass(frozen=True)
class TrialStarted:
    number: int
    key: str
    point: dict[str, str]
    run_dir: Path


@dataclass(frozen=True)
class TrialEvent:
    """A training event (train.Started, EpochEnd, …) of trial `number`."""

    number: int
    key: str
    event: Any


@dataclass(frozen=True)
class TrialDone:
    number: int
    key: str
    state: str  # complete | pruned | duplicate (a search point proposed again: not trained)
    val_acc: float | None
    value: float | None  # the validation objective of the best scorer
    method: str | None


def storage_url(sc: SweepConfig) -> str:
    return sc.storage or f"sqlite:///{(Path(sc.out) / 'study.db').resolve()}"


def signature(sc: SweepConfig) -> dict[str, Any]:
    """What must not change when the same sweep is continued (device, workers and test sets may)."""
    recipe = {k: v for k, v in sc.recipe.to_dict().items() if k not in ("device", "precision", "workers", "out")}
    return {"recipe": recipe, "mode": sc.mode,
            **{space.FIELDS[f]: list(space.values(sc, f)) for f in FACTORS}, "trials": sc.trials, "methods": list(sc.methods),
            "objective": sc.objective, "max_acc_drop": sc.max_acc_drop, "holdout": sc.holdout,
            "val_ood": sc.val_ood, "pseudo": list(sc.pseudo)}


def open_study(sc: SweepConfig):
    """Create or load the study; a continued sweep must have been started with the same options."""
    import optuna

    space.check(sc)
    check_out(Path(sc.out))
    Path(sc.out).mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(sc)
    kw: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    sampler = optuna.samplers.TPESampler(seed=sc.recipe.seed, n_startup_trials=min(4, sc.trials))
    direction = "maximize" if sc.objective == "auroc" else "minimize"
    with lock(sc), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kw, heartbeat_interval=sc.heartbeat_s,
                                             grace_period=4 * sc.heartbeat_s)  # creates the tables once
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                                    direction=direction, load_if_exists=True)
        want = signature(sc)
        have = study.user_attrs.get("signature")
        if have is None:
            study.set_user_attr("signature", want)
        elif have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ConfigError(f"{sc.out} holds a sweep started with other options ({', '.join(diff)}); rerun it "
                              "with the same flags to continue, or pick a new --out")
    return study


SWEEP_MARKS = ("study.db", ".lock", "trials", "sweep.json")  # what only a sweep folder holds


def check_out(out: Path) -> None:
    """Refuse an --out that is a file, or a folder holding other things than a sweep (a run, your files)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the sweep (a new one, or a sweep's to continue it)")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in SWEEP_MARKS):
        what = "a run folder" if (out / "run.json").exists() else "not a sweep folder"
        raise ConfigError(f"--out {out} already holds files and is {what}; pass a new or empty folder, or a "
                          "sweep's folder to continue it")


def discard_unstarted(sc: SweepConfig) -> bool:
    """After a failed first attempt: remove a sweep folder that this command created and in which no trial
    finished (a refused option, missing data), so that nothing half-made is left. True if removed."""
    out = Path(sc.out)

    def done(trial: Path) -> bool:
        try:
            return runs.read(trial).status == "done"
        except LbfoodError:
            return False

    trials = out / "trials"
    if sc.storage or not out.is_dir() or (trials.is_dir() and any(done(p) for p in trials.iterdir())):
        return False
    shutil.rmtree(out, ignore_errors=True)
    return True


def _control_acc(study) -> float | None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("key") == "control":
            return t.user_attrs.get("val_acc")
    return None


@contextlib.contextmanager
def lock(sc: SweepConfig) -> Iterator[None]:
    """An exclusive lock on `<sweep>/.lock` (the workers of one machine take turns at the queue)."""
    Path(sc.out).mkdir(parents=True, exist_ok=True)
    with open(Path(sc.out) / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile(study, sc: SweepConfig) -> None:
    """Fail RUNNING trials whose worker is gone; queue every planned point that has no live trial."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") == host and not _alive(int(w.get("pid", 0))):
            study._storage.set_trial_user_attr(t._trial_id, "failed", "its worker process died")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    have = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False, states=live)}
    for p in space.planned_points(sc):
        if space.key(p) not in have:
            study.enqueue_trial({}, user_attrs={"point": p, "key": space.key(p)})


def _next_trial(study, sc: SweepConfig):
    """Under the lock: reconcile, then the next queued trial, a new TPE trial (search), or None."""
    from optuna.trial import TrialState

    with lock(sc):
        reconcile(study, sc)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        searched = sum(1 for t in trials if t.user_attrs.get("key") != "control" and not t.user_attrs.get("duplicate")
                       and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        size = len([p for p in space.grid_points(sc) if p["lam"] != "0"])  # search: stop when every point was tried
        more = sc.mode == "search" and searched < min(sc.trials, size)
        if not waiting and not more:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # heartbeats with ask/tell: we run the thread ourselves
            trial = study.ask()
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        return trial


def work(sc: SweepConfig, on_event: Callable[[Any], None] = lambda e: None) -> int:
    """Run trials until the plan is done (by this and any other worker); returns how many this one ran."""
    from optuna.exceptions import TrialPruned
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    study = open_study(sc)
    done = 0
    while (trial := _next_trial(study, sc)) is not None:
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                value = run_trial(study, trial, sc, on_event)
        except TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            state = "duplicate" if trial.user_attrs.get("duplicate") else "pruned"
            on_event(TrialDone(trial.number, trial.user_attrs["key"], state, trial.user_attrs.get("val_acc"),
                               None, None))
        except BaseException:  # Ctrl-C, a crash: the trial is failed and queued again by the next reconcile
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            a = trial.user_attrs
            on_event(TrialDone(trial.number, a["key"], "complete", a["val_acc"], value, a["method"]))
        done += 1
    return done


def run_trial(study, trial, sc: SweepConfig, on_event: Callable[[Any], None]) -> float:
    """Fine-tune one point (an ordinary run folder, `<sweep>/trials/<key>`), validate it, return the objective."""
    from optuna.exceptions import TrialPruned

    from lbfood.engine.events import EpochEnd, Finished, Interrupted
    from lbfood.engine.training.finetune import prepare_finetune
    from lbfood.engine.training.loop import fit

    point = trial.user_attrs.get("point")
    if point is None:  # a search trial: TPE picks the point
        point = space.normalise(sc, {f: trial.suggest_categorical(f, list(space.values(sc, f))) for f in FACTORS})
        trial.set_user_attr("point", point)
        trial.set_user_attr("key", space.key(point))
        if space.key(point) in _tried(study, exclude=trial.number):  # TPE may propose a point again
            trial.set_user_attr("duplicate", True)
            raise TrialPruned
    key = space.key(point)
    run_dir = Path(sc.out) / "trials" / (key if sc.mode != "search" or key == "control" else f"t{trial.number:03d}-{key}")
    if run_dir.exists():  # a failed or interrupted earlier attempt at this point
        shutil.rmtree(run_dir)
    session = prepare_finetune(space.trial_config(sc, point, str(run_dir)))
    trial.set_user_attr("run", os.path.relpath(run_dir, sc.out))
    on_event(TrialStarted(trial.number, key, point, run_dir))
    control = _control_curve(study) if sc.prune and key != "control" else {}
    events = fit(session)
    for ev in events:
        on_event(TrialEvent(trial.number, key, ev))
        if isinstance(ev, EpochEnd):
            acc = ev.metrics["val_acc"]
            trial.report(acc, ev.epoch)
            kill_point("trial-epoch", str(trial.number))
            floor = control.get(ev.epoch)
            if floor is not None and acc < floor - sc.max_acc_drop / 100:
                events.close()
                trial.set_user_attr("val_acc", acc)
                trial.set_user_attr("pruned_at_epoch", ev.epoch + 1)
                raise TrialPruned
        elif isinstance(ev, Interrupted):
            raise KeyboardInterrupt
        elif isinstance(ev, Finished):
            break
    # The trial is trained: validate it on held-out ID images (no test image) and mark it done. Its
    # test-split threshold is calibrated only when `score` first needs one, after the selection.
    meta = runs.update(run_dir, status="done", **_validate(sc, session))
    val, auto = meta.validation, meta.auto
    trial.set_user_attr("val_acc", val["val_acc"])
    control = _control_acc(study) if key != "control" else val["val_acc"]
    # TPE's constraint (<= 0 feasible): at most max_acc_drop points below the control (feasible until it is known)
    trial.set_constraint("accuracy", 0.0 if control is None else control - sc.max_acc_drop / 100 - val["val_acc"])
    trial.set_user_attr("method", auto["method"])
    trial.set_user_attr("methods", {m: c["average"] for m, c in val["methods"].items()})
    trial.set_user_attr("mu", meta.config["mu"])
    trial.set_user_attr("delta", meta.config["delta"])
    trial.set_user_attr("train_seconds", meta.seconds)
    trial.set_user_attr("validation_seconds", meta.validation_seconds)
    return float(auto["objective_value"])


def _tried(study, exclude: int = -1) -> set[str]:
    """Keys of points that have a finished or running trial (duplicates of a search excluded)."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False, states=live)
            if t.number != exclude and not t.user_attrs.get("duplicate")}


def _control_curve(study) -> dict[int, float]:
    """The control's ID validation accuracy per epoch (empty until the control has finished)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("key") == "control":
            return {int(k): float(v) for k, v in t.intermediate_values.items()}
    return {}


def _validate(sc: SweepConfig, s) -> dict[str, Any]:
    """A trained trial's validation on held-out ID images against the validation OOD (no test image):
    run.json's "auto", "validation" and "validation_seconds"."""
    from lbfood.engine.evaluation.auto import calibrate_auto
    from lbfood.engine.runtime import make_runtime

    rt = make_runtime(str(s.rt.device), s.cfg.precision, training=False)
    return calibrate_auto(runs.unwrap(s.model).eval(), train=s.train_set, held=s.test_set, mean=s.spec.mean,
                          std=s.spec.std, size=int(s.meta.input_size), rt=rt, batch_size=max(s.cfg.batch_size, 256),
                          seed=s.cfg.seed, holdout=sc.holdout, methods=sc.methods, objective=sc.objective,
                          val_ood=load_val_ood(sc, s) if sc.val_ood else None, pseudo=sc.pseudo)


def load_val_ood(sc: SweepConfig, s) -> dict:
    """`--val-ood DATASET|folder:PATH`: a real OOD set used for validation only (never a test set)."""
    from lbfood.engine.data import get as get_dataset
    from lbfood.engine.training.setup import load_options

    spec = get_dataset(sc.val_ood)
    if spec.role != "ood":
        raise ConfigError(f"--val-ood {sc.val_ood} is an ID dataset; pass an OOD set or folder:PATH")
    images = spec.load(load_options(s.cfg, int(s.meta.input_size)), "test")
    if len(images) == 0:
        raise RunError(f"--val-ood {sc.val_ood}: no images")
    return {sc.val_ood: images}
