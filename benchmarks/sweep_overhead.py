"""A sweep trial's wall time / a plain fine-tune of the same recipe (validation excluded). Target ≤ 1.05.

The trial is the sweep's CE-only control (`lbfood sweep --lambda 0`: the study has that one trial) and
goes through everything a trial does: the Optuna study in SQLite, the lock, reconcile, the queue, the
heartbeat thread, `prepare_finetune` and `fit`. Its validation (feature extraction, scorers,
pseudo-OOD) is measured separately and subtracted, as run.json records it. The plain fine-tune is
`prepare_finetune` + `fit` of the same config (same --holdout, so the same training images), with
no closing calibration. The two alternate so that drifting machine load hits both equally.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import _common
import torch

from lbfood.engine import models, runs
from lbfood.engine.config import FinetuneConfig, TrainConfig
from lbfood.engine.data import get
from lbfood.engine.data.backdrops import CLASSES
from lbfood.engine.runtime import make_runtime
from lbfood.engine.sweep import study
from lbfood.engine.sweep.space import SweepConfig
from lbfood.engine.training.finetune import prepare_finetune
from lbfood.engine.training.loop import fit
from lbfood.engine.training.setup import new_meta


def parent_run(root: Path, width: float) -> Path:
    """A random resnet18 saved as a finished run (timing does not need a trained parent)."""
    cfg = TrainConfig(data="backdrops", width=width, epochs=1, device="cpu")
    meta = new_meta("pretrain", cfg, get("backdrops"), CLASSES, 32).replace(status="done", epochs_done=1)
    torch.manual_seed(0)
    run = root / "parent"
    run.mkdir(parents=True)
    runs.save_model(run, models.build("resnet18", num_classes=len(CLASSES), width=width))
    runs.write(run, meta)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--limit", type=int, default=1000, help="training images (of which 10 %% held out)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lbfood-sweep-bench-"))
    os.chdir(root)  # fit points runs/latest at each run: keep that link out of the caller's folder
    parent = parent_run(root, args.width)
    recipe = FinetuneConfig(parent=str(parent), epochs=args.epochs, batch_size=64, limit=args.limit, device="cpu",
                            workers=0, lam=0.0, holdout=0.1)
    plain_t, trial_t, val_t = [], [], []
    warm = prepare_finetune(dataclasses.replace(recipe, out=str(root / "warm-up"), epochs=1))
    for _ in fit(warm):  # the first fit pays one-off imports (torch's optimizer, compile stack)
        pass
    study.open_study(SweepConfig(recipe=recipe, out=str(root / "warm-up-study")))  # and optuna, SQLAlchemy
    for i in range(args.repeats):
        t = time.perf_counter()
        s = prepare_finetune(dataclasses.replace(recipe, out=str(root / f"plain{i}")))
        for _ in fit(s):
            pass
        plain_t.append(time.perf_counter() - t)
        sc = SweepConfig(recipe=recipe, out=str(root / f"sweep{i}"), lam=("0",),
                         methods=("react",))
        t = time.perf_counter()
        study.work(sc)
        total = time.perf_counter() - t
        v = json.loads((Path(sc.out) / "trials/control/run.json").read_text())["validation_seconds"]
        trial_t.append(total - v)
        val_t.append(v)
    # The sweep's own per-trial cost, without training noise: 8 trials whose training is a no-op.
    def no_training(study_, trial, sc_, on_event):
        trial.set_user_attr("val_acc", 1.0)
        trial.set_user_attr("method", "react")
        return 0.5

    real, study.run_trial = study.run_trial, no_training
    sc = SweepConfig(recipe=recipe, out=str(root / "bookkeeping"), lam=tuple(str(v) for v in range(1, 8)))
    t = time.perf_counter()
    n = study.work(sc)
    per_trial = (time.perf_counter() - t) / n
    study.run_trial = real
    rt = make_runtime("cpu", "auto")
    print(f"machine: {_common.machine(rt)}; resnet18 width {args.width}, {args.limit} backdrops images "
          f"(10 % held out), {args.epochs} epochs, batch 64, {args.repeats} alternating repeats")
    print("plain fine-tune s: " + ", ".join(f"{x:.2f}" for x in plain_t))
    print("sweep trial s (validation excluded): " + ", ".join(f"{x:.2f}" for x in trial_t)
          + "; validation s: " + ", ".join(f"{x:.2f}" for x in val_t))
    print(f"sweep_trial ratio: {min(trial_t) / min(plain_t):.3f}  (best of each; target <= 1.05); "
          f"median ratio {_common.median(trial_t) / _common.median(plain_t):.3f}")
    print(f"study bookkeeping per trial (open, lock, reconcile, ask, heartbeat, tell; {n} no-op trials): "
          f"{per_trial:.3f} s = {per_trial / min(plain_t):.3%} of the fastest plain fine-tune; "
          f"bookkeeping ratio {(min(plain_t) + per_trial) / min(plain_t):.3f}")


if __name__ == "__main__":
    main()
