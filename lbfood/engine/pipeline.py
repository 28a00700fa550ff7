"""What needs both wings: train a run, then calibrate its ID/OOD threshold and mark it done.

Training (lbfood.engine.training) and evaluation (lbfood.engine.evaluation) never import each other;
the commands compose them here. A run is "trained" when its last epoch is saved and "done" once its
threshold is calibrated; only then does `runs/latest` point at it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch

from lbfood.engine import runs
from lbfood.engine.evaluation.auto import calibrate_auto
from lbfood.engine.evaluation.calibrate import calibrate
from lbfood.engine.events import Event, Finished, Note, Step
from lbfood.engine.runtime import Runtime, make_runtime
from lbfood.engine.training.loop import fit
from lbfood.engine.training.setup import Session

DEFAULT_METHOD = "react"  # the paper's score (Sec. IV-C): the threshold `lbfood score` uses by default


def train(session: Session) -> Iterator[Event]:
    """`fit`, then (on rank 0) `finish`; the Finished event comes last, after calibration."""
    finished = None
    for ev in fit(session):
        if isinstance(ev, Finished):
            finished = ev
            continue
        yield ev
    if finished is None:  # interrupted: fit has said so
        return
    if session.dist.is_main:
        # Calibration extracts features as `report` does: fp32 unless the user chose a precision.
        rt = make_runtime(str(session.rt.device), session.cfg.precision, training=False)
        yield from finish(finished.run_dir, runs.unwrap(session.model), rt,
                          batch_size=max(session.cfg.batch_size, 256), workers=session.cfg.workers)
        if session.cfg.holdout:
            yield from choose_auto(session, rt)
    yield finished


def choose_auto(s: Session, rt: Runtime) -> Iterator[Event]:
    """`--method auto` of a `--holdout` run: every candidate scorer fitted on what it trained on and
    validated on its held-out ID images against pseudo-OOD made from them; no test image is read."""
    yield Step("choosing the run's `auto` scorer on its held-out images")
    t0 = time.time()
    found = calibrate_auto(runs.unwrap(s.model).eval(), train=s.train_set, held=s.test_set, mean=s.spec.mean,
                           std=s.spec.std, size=s.meta.input_size, rt=rt, batch_size=max(s.cfg.batch_size, 256),
                           seed=s.cfg.seed, holdout=s.cfg.holdout)
    runs.update(s.run_dir, validation_seconds=round(time.time() - t0, 3), **found)
    a = found["auto"]
    yield Note(f"--method auto: {a['method']} (validation AUROC {a['objective_value']:.2%} on held-out images "
               f"against pseudo-OOD), threshold {a['value']:.4g}")


def finish(run_dir: Path, model: torch.nn.Module, rt: Runtime, *, batch_size: int = 256,
           workers: int = 4) -> Iterator[Event]:
    """Calibrate a trained run's default threshold (95 % of held-out ID images kept), store it, mark the
    run done and point runs/latest at it."""
    meta = runs.read(run_dir)
    yield Step(f"calibrating the {DEFAULT_METHOD} threshold on {meta.data} test images")
    model.eval()
    t = calibrate(run_dir, model, meta, rt, method=DEFAULT_METHOD, batch_size=batch_size, workers=workers)
    yield Note(f"calibrated threshold: {t['method']} score {t['value']:.4g} keeps {t['tpr']:.0%} of "
               f"{t['data']} test images (ID/OOD verdicts of `lbfood score`)")
    runs.update(run_dir, status="done", threshold=t)
    runs.point_latest(run_dir)
