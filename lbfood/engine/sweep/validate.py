"""A trained sweep trial's validation, on held-out ID images and a validation OOD set (pseudo-OOD made
from the held-out images, or `--val-ood`): never a test image."""

from __future__ import annotations

from typing import Any

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.sweep.space import SweepConfig


def trial(sc: SweepConfig, s) -> dict[str, Any]:
    """A trained trial's validation on held-out ID images against the validation OOD (no test image):
    run.json's "auto", "validation" and "validation_seconds", with the bootstrap of its objective and
    accuracy over the held-out images in "validation" (seeded by the sweep's seed: every trial the same)."""
    from lbfood.engine.evaluation.auto import calibrate_auto
    from lbfood.engine.evaluation.bootstrap import RESAMPLES
    from lbfood.engine.runtime import make_runtime

    rt = make_runtime(str(s.rt.device), s.cfg.precision, training=False)
    return calibrate_auto(runs.unwrap(s.model).eval(), train=s.train_set, held=s.test_set, mean=s.spec.mean,
                          std=s.spec.std, size=int(s.meta.input_size), rt=rt, batch_size=max(s.cfg.batch_size, 256),
                          seed=s.cfg.seed, holdout=sc.holdout, methods=sc.methods, objective=sc.objective,
                          val_ood=load_val_ood(sc, s) if sc.val_ood else None, pseudo=sc.pseudo, resamples=RESAMPLES)


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
