"""What needs both wings: train a run, then calibrate its ID/OOD threshold and mark it done.

Training (lbfood.engine.training) and evaluation (lbfood.engine.evaluation) never import each other;
the commands compose them here. A run is "trained" when its last epoch is saved and "done" once its
threshold is calibrated; only then does `runs/latest` point at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from lbfood.engine import runs
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
    yield finished


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
