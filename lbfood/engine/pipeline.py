"""What needs both wings: train a run, then calibrate its ID/OOD threshold and mark it done.

Training (lbfood.engine.training) and evaluation (lbfood.engine.evaluation) never import each other;
the commands compose them here. A run is "trained" when its last epoch is saved and "done" once its
threshold is calibrated; only then does `runs/latest` point at it. `--resume` on a trained run finishes
its calibration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from lbfood.engine import checkpoint, runs
from lbfood.engine.errors import RunError, StorageError
from lbfood.engine.evaluation.auto import calibrate_auto
from lbfood.engine.evaluation.calibrate import calibrate, calibrate_gate
from lbfood.engine.events import Event, Finished, Interrupted, Note, Step
from lbfood.engine.io import FULL_DISK
from lbfood.engine.killpoints import kill_point
from lbfood.engine.runtime import Runtime, make_runtime
from lbfood.engine.training.loop import fit
from lbfood.engine.training.setup import Session

DEFAULT_METHOD = "react"  # the paper's score (Sec. IV-C): the threshold `lbfood score` uses by default


def train(session: Session) -> Iterator[Event]:
    """`fit`, then (on rank 0) `finish`; the Finished event comes last, after calibration.

    Rank 0 holds the run folder's lock throughout (a second writer fails at once). A resumed run is first
    repaired up to its committed epoch; one whose epochs are all trained but that was never calibrated
    (killed or interrupted during calibration) is calibrated without training again."""
    if not session.dist.is_main:
        yield from _train(session)
        return
    try:
        yield from _locked(session)
    except StorageError as e:
        raise _after_full_disk(session, e) from None


def _after_full_disk(session: Session, e: StorageError) -> StorageError:
    """A full disk once an epoch is committed: the rerun must be `--resume` (the same command again is
    refused, its folder holding finished epochs), so that is the advice. Other failures keep theirs."""
    if e.reason != FULL_DISK or not (session.run_dir / checkpoint.STATE).is_file():
        return e
    return StorageError(f"cannot write {e.path}: {e.reason}; free some space, then continue the run with "
                        f"`lbfood {session.kind} --resume --out {session.run_dir}`", path=e.path, reason=e.reason)


def _locked(session: Session) -> Iterator[Event]:
    with checkpoint.lock(session.run_dir):
        if not session.resume:
            if not runs.startable(session.run_dir):  # another command finished a run here meanwhile
                raise RunError(runs.not_startable_message(session.run_dir))
            runs.start_over(session.run_dir)  # what a run killed in its first epoch left
        elif checkpoint.recover(session.run_dir) >= session.cfg.epochs:
            meta = runs.read(session.run_dir)
            if meta.status != "done":
                yield from _calibrate_only(session, meta)
                return
        yield from _train(session)


def _train(session: Session) -> Iterator[Event]:
    finished = None
    for ev in fit(session):
        if isinstance(ev, Finished):
            finished = ev
            continue
        yield ev
    if finished is None:  # interrupted: fit has said so
        return
    if session.dist.is_main and not (yield from _calibrated(session, runs.unwrap(session.model))):
        return
    yield finished


def _calibrate_only(session: Session, meta: runs.RunMeta) -> Iterator[Event]:
    run_dir = session.run_dir
    yield Note(f"{run_dir} has trained all {meta.epochs_done} epochs but was not calibrated; calibrating it now")
    checkpoint.load(run_dir, session.model)
    model = session.rt.prepare(session.model)
    runs.update(run_dir, status="trained")
    if (yield from _calibrated(session, model)):
        yield Finished(run_dir, meta.metrics, meta.seconds or 0.0)


def _calibrated(session: Session, model: torch.nn.Module) -> Iterator[Event]:
    """`finish` (and, for a --holdout run, the choice of its `auto` scorer); returns False (after an
    Interrupted event saying how to finish it) on Ctrl-C."""
    # Calibration extracts features as `report` does: fp32 unless the user chose a precision.
    rt = make_runtime(str(session.rt.device), session.cfg.precision, training=False)
    try:
        if session.cfg.holdout:
            yield from choose_auto(session, model, rt)
        yield from finish(session.run_dir, model, rt, batch_size=max(session.cfg.batch_size, 256),
                          workers=session.cfg.workers)
    except KeyboardInterrupt:  # the run stays "trained": --resume calibrates it
        yield Interrupted(session.run_dir, runs.read(session.run_dir).epochs_done)
        return False
    return True


def choose_auto(s: Session, model: torch.nn.Module, rt: Runtime) -> Iterator[Event]:
    """`--method auto` of a `--holdout` run: every candidate scorer fitted on what it trained on and
    validated on its held-out ID images against pseudo-OOD made from them; no test image is read."""
    yield Step("choosing the run's `auto` scorer on its held-out images")
    found = calibrate_auto(model.eval(), train=s.train_set, held=s.test_set, mean=s.spec.mean, std=s.spec.std,
                           size=s.meta.input_size, rt=rt, batch_size=max(s.cfg.batch_size, 256), seed=s.cfg.seed,
                           holdout=s.cfg.holdout)
    runs.update(s.run_dir, **found)
    a = found["auto"]
    yield Note(f"--method auto: {a['method']} (validation AUROC {a['objective_value']:.2%} on held-out images "
               f"against pseudo-OOD), threshold {a['value']:.4g}")


def finish(run_dir: Path, model: torch.nn.Module, rt: Runtime, *, batch_size: int = 256,
           workers: int = 4) -> Iterator[Event]:
    """Calibrate a trained run's default threshold (95 % of held-out ID images kept) and fit its far-OOD
    gate (99.7 % of its training images kept), point runs/latest at it and mark it done (in that order: a
    run marked done has been pointed at)."""
    meta = runs.read(run_dir)
    yield Step(f"calibrating the {DEFAULT_METHOD} threshold on {meta.data} test images")
    model.eval()
    t = calibrate(run_dir, model, meta, rt, method=DEFAULT_METHOD, batch_size=batch_size, workers=workers)
    kill_point("calibrated")
    yield Note(f"calibrated threshold: {t['method']} score {t['value']:.4g} keeps {t['tpr']:.0%} of "
               f"{t['data']} test images (ID/OOD verdicts of `lbfood score`)")
    yield Step(f"fitting the far-OOD gate on {meta.data} training images")
    g = calibrate_gate(run_dir, model, meta, rt, batch_size=batch_size, workers=workers)
    yield Note(f"far-OOD gate: Mahalanobis distance, γ_far {g['value']:.4g} keeps {g['keep']:.1%} of "
               f"{g['data']} training images (`lbfood score` calls an image ID only if both pass)")
    runs.point_latest(run_dir)
    kill_point("latest")
    runs.update(run_dir, status="done", threshold=t, far_gate=g)
