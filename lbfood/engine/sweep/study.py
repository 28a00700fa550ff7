"""The sweep's Optuna study: a queue of trials in a shared storage, worked by one or more processes.

Storage (`storage.py`): `sqlite:///<sweep>/study.db` by default, or `--storage URL` (SQLite, or PostgreSQL
for workers on several machines). Each worker loops: under the queue lock it reconciles the study with the
plan and takes the next trial; then it trains, validates and reports the trial without the lock. With
nothing left to take while other workers still run trials, it waits: a trial whose worker dies is
re-queued (below) and finished by whoever is waiting.

Reconcile, the rule that makes the command resumable: every planned point (the control, then the grid
or the paper's one-factor-at-a-time points) must have a trial that is COMPLETE, PRUNED, RUNNING or
WAITING; a point without one (never queued, or its trial failed or was interrupted) is queued again.
A RUNNING trial whose worker process is gone (same host, dead pid) is failed first; so is one whose
Optuna heartbeat stopped for 4 beats (a worker on another machine), which Optuna's
`RetryHeartbeatStaleTrialCallback` queues again. Finished trials are never repeated.
`search` mode queues the control only; TPE samples the other `trials` points.

Where trials write: `<sweep>/trials/<key>`, in the one sweep folder of the study (`--out`). With workers
on several machines it must be on a file system they all mount; the study records the folder's id
(`study.json` in it), and a worker whose `--out` does not hold that id is refused before it writes.
A retried point whose earlier attempt may still be written (its worker on another host, or alive) is
trained into `trials/<key>-t<number>`, so no folder is ever trained by two trials.

Grid and paper points are queued (Optuna's `enqueue_trial`) rather than drawn by `GridSampler`, which
may hand one grid point to two parallel workers; the queue gives each point to exactly one.
"""

from __future__ import annotations

import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError, Diverged, LbfoodError
from lbfood.engine.killpoints import kill_point
from lbfood.engine.sweep import folder, identity, preflight, space, storage, validate
from lbfood.engine.sweep.folder import STUDY_NAME
from lbfood.engine.sweep.space import FACTORS, SweepConfig


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
class Waiting:
    """Nothing left to take: this worker waits for `running` trials of other workers (or their re-queue)."""

    running: int


@dataclass(frozen=True)
class TrialDone:
    number: int
    key: str
    state: str  # complete | pruned | diverged (a loss became NaN/inf) | duplicate (a search point proposed
    # again: not trained) | lost
    val_acc: float | None
    value: float | None  # the validation objective of the best scorer
    method: str | None


def storage_of(sc: SweepConfig) -> storage.Storage:
    return storage.resolve(sc.storage, Path(sc.out))


def storage_url(sc: SweepConfig) -> str:
    """The storage URL as sweep.json records it (password hidden)."""
    return storage_of(sc).shown


def open_study(sc: SweepConfig):
    """Create or load the study; a continued sweep must have been started with the same options and
    storage and, on a shared storage, this --out must be the study's sweep folder. A new sweep is checked
    before anything is written (`preflight`); the folder records its study once it is known to be the
    study's. Bad input creates nothing."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    sc.check()
    st = storage_of(sc)
    given = st.shown if sc.storage else None  # what study.json records (password hidden)
    new = folder.check(Path(sc.out), given)  # a sweep folder, recognised by its study; the same storage
    storage.reach(st)
    if new:
        preflight.run(sc)  # every trial's options and data checked before the folder is made
    if st.dialect == "sqlite":
        Path(st.database).parent.mkdir(parents=True, exist_ok=True)  # the default database is in --out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw: dict[str, Any] = {"connect_args": {"timeout": 120}} if st.dialect == "sqlite" else {"pool_pre_ping": True}
    sampler = optuna.samplers.TPESampler(seed=sc.recipe.seed, n_startup_trials=min(4, sc.trials))
    direction = "maximize" if sc.objective == "auroc" else "minimize"
    with storage.queue_lock(st), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
        rdb = optuna.storages.RDBStorage(st.url, engine_kwargs=kw, heartbeat_interval=sc.heartbeat_s,
                                         grace_period=4 * sc.heartbeat_s,  # creates the tables once
                                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
        study = optuna.create_study(study_name=STUDY_NAME, storage=rdb, sampler=sampler,
                                    direction=direction, load_if_exists=True)
        want = identity.signature(sc)
        have = study.user_attrs.get("signature")
        if have is not None and have != want:
            where = sc.out if sc.storage is None else st.shown
            raise ConfigError(f"{where} holds a sweep started with other options: {'; '.join(identity.differences(have, want))}; "
                              "rerun it with the same flags to continue, or use a new --out (or database)")
        identity.bind_folder(study, sc, st)  # a worker whose --out is not the study's folder: refused here
        folder.record(Path(sc.out), given)
        if have is None:
            study.set_user_attr("signature", want)
    return study


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
    if not out.is_dir() or (trials.is_dir() and any(done(p) for p in trials.iterdir())):
        return False
    shutil.rmtree(out, ignore_errors=True)
    return True


def _control_acc(study) -> float | None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("key") == "control":
            return t.user_attrs.get("val_acc")
    return None


def lock(sc: SweepConfig):
    """The queue lock of the sweep's storage (one worker of any machine at a time takes a trial)."""
    return storage.queue_lock(storage_of(sc))


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
    """Under the lock: reconcile, then the next queued trial, a new TPE trial (search), the number of
    trials other workers still run (nothing to take yet), or None (the plan is done)."""
    from optuna.trial import TrialState

    with lock(sc):
        reconcile(study, sc)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        searched = sum(1 for t in trials if t.user_attrs.get("key") != "control" and not t.user_attrs.get("duplicate")
                       and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        size = len([p for p in space.grid_points(sc) if p["lam"] != "0"])  # search: stop when every point was tried
        more = sc.mode == "search" and searched < min(sc.trials, size)
        if not waiting and not more:  # nothing to take: wait while other workers still run trials
            return sum(1 for t in trials if t.state == TrialState.RUNNING) or None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # heartbeats with ask/tell: we run the thread ourselves
            trial = study.ask()
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        return trial


def work(sc: SweepConfig, on_event: Callable[[Any], None] = lambda e: None) -> int:
    """Run trials until the plan is done (by this and any other worker); returns how many this one ran.
    While other workers run the last trials, wait: one whose worker dies is re-queued and taken here."""
    import time

    study = open_study(sc)
    done, waited = 0, False
    while (trial := _next_trial(study, sc)) is not None:
        if isinstance(trial, int):
            if not waited:
                on_event(Waiting(trial))
            waited = True
            time.sleep(min(sc.heartbeat_s, 5))
            continue
        waited = False
        _settle(study, trial, sc, on_event)
        done += 1
    return done


def _settle(study, trial, sc: SweepConfig, on_event: Callable[[Any], None]) -> None:
    """Run one trial and tell the study how it ended. A trial the study failed meanwhile (this worker was
    silent for 4 heartbeats, so it was re-queued for another) is dropped with its folder."""
    from optuna.exceptions import TrialPruned, UpdateFinishedTrialError
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    try:
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                value = run_trial(study, trial, sc, on_event)
        except TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            a = trial.user_attrs
            state = "duplicate" if a.get("duplicate") else "diverged" if a.get("diverged") else "pruned"
            on_event(TrialDone(trial.number, a["key"], state, a.get("val_acc"), None, None))
        except UpdateFinishedTrialError:
            raise
        except BaseException:  # Ctrl-C, a crash: the trial is failed and queued again by the next reconcile
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        else:
            study.tell(trial, value)
            a = trial.user_attrs
            on_event(TrialDone(trial.number, a["key"], "complete", a["val_acc"], value, a["method"]))
    except UpdateFinishedTrialError:
        if trial.user_attrs.get("run"):
            shutil.rmtree(Path(sc.out) / trial.user_attrs["run"], ignore_errors=True)
        on_event(TrialDone(trial.number, trial.user_attrs.get("key", "?"), "lost", None, None, None))


def run_trial(study, trial, sc: SweepConfig, on_event: Callable[[Any], None]) -> float:
    """Fine-tune one point (an ordinary run folder, `<sweep>/trials/<key>`), validate it, return the objective."""
    from optuna.exceptions import TrialPruned

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
    name = key if sc.mode != "search" or key == "control" else f"t{trial.number:03d}-{key}"
    run_dir = Path(sc.out) / "trials" / name
    if not _writers_gone(study, key, trial.number):  # an earlier attempt's worker may still write its folder
        run_dir = run_dir.with_name(f"{name}-t{trial.number:03d}")  # (another host, or alive): never share one
    elif run_dir.exists():  # a failed or interrupted earlier attempt at this point, by a process that is gone
        shutil.rmtree(run_dir)
    session = prepare_finetune(space.trial_config(sc, point, str(run_dir)))
    trial.set_user_attr("run", os.path.relpath(run_dir, sc.out))
    on_event(TrialStarted(trial.number, key, point, run_dir))
    control = _control_curve(study) if sc.prune and key != "control" else {}
    try:
        _train(trial, sc, key, fit(session), control, on_event)
    except Diverged as e:  # a finding about this point, not the end of the sweep (unless it is the control)
        if key == "control":
            raise
        trial.set_user_attr("diverged", str(e))
        raise TrialPruned from e
    # The trial is trained: validate it on held-out ID images (no test image) and mark it done. Its
    # test-split threshold is calibrated only when `score` first needs one, after the selection.
    validation = validate.trial(sc, session)
    boot = validation["validation"].pop("bootstrap")  # the trial's, not the run's: kept in the study
    meta = runs.update(run_dir, status="done", **validation)
    val, auto = meta.validation, meta.auto
    trial.set_user_attr("val_acc", val["val_acc"])
    trial.set_user_attr("bootstrap", {k: boot[k] for k in ("method", "resamples", "level", "seed", "sizes")})
    trial.set_user_attr("val_acc_ci", boot["interval"]["val_acc"])
    trial.set_user_attr("value_ci", boot["interval"]["objective"])
    trial.set_user_attr("replicates", boot["replicates"])
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


def _train(trial, sc: SweepConfig, key: str, events, control: dict[int, float],
           on_event: Callable[[Any], None]) -> None:
    """Drive one trial's training: report each epoch's validation accuracy to the study, prune a trial
    below the control's curve (--prune), turn Ctrl-C into KeyboardInterrupt."""
    from optuna.exceptions import TrialPruned

    from lbfood.engine.events import EpochEnd, Finished, Interrupted

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


def _writers_gone(study, key: str, number: int) -> bool:
    """Every earlier attempt at `key` ran on this host in a process that is gone."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING)):
        w = t.user_attrs.get("worker") or {}
        if t.number != number and t.user_attrs.get("key") == key and w and \
                (w.get("host") != host or _alive(int(w.get("pid", 0)))):
            return False
    return True


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
