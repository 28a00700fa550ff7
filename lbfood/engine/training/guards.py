"""Stops for a training run that is going nowhere: a loss that is not finite, or a pretraining whose
held-out accuracy (test, or validation with --holdout) is still at chance after a few epochs and enough
optimizer steps. Each names the likely cause and the fix."""

from __future__ import annotations

import math

from lbfood.engine.config import CHANCE_MIN_STEPS, FinetuneConfig, TrainConfig
from lbfood.engine.errors import Diverged


def _fixes(cfg: TrainConfig | FinetuneConfig, input_size: int) -> str:
    fixes = f"try --lr {cfg.lr / 10:g} or a linear warm-up (--warmup-epochs 5)"
    if input_size >= 224 and cfg.init is None:
        fixes += ", or start from pretrained weights (--init)"
    return fixes


def check_finite(metrics: dict[str, float], cfg: TrainConfig | FinetuneConfig, epoch: int, step: int,
                 input_size: int) -> None:
    """Raise Diverged if a loss read this epoch is NaN or infinite (the weights are not saved)."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        k, v = next(iter(bad.items()))
        raise Diverged(f"training diverged: {k} is {v} at epoch {epoch + 1}, step {step}; the learning rate "
                       f"(--lr {cfg.lr:g}) is likely too high: {_fixes(cfg, input_size)} (in a new run)")


def chance_epoch(epochs: int, steps_per_epoch: int) -> int:
    """The epoch after which a pretraining must beat chance: the first with at least max(3, 20 % of the
    epochs) epochs and `CHANCE_MIN_STEPS` optimizer steps done (it may lie past the last epoch: no check)."""
    return max(3, math.ceil(0.2 * epochs), math.ceil(CHANCE_MIN_STEPS / max(steps_per_epoch, 1)))


def at_chance(acc: float, classes: int, cfg: TrainConfig, epochs_done: int, steps_per_epoch: int,
              input_size: int, split: str = "test") -> str | None:
    """The message if, after `chance_epoch` epochs, the `split` accuracy is below 1.5 × chance (1.5 / K);
    else None."""
    if epochs_done != chance_epoch(cfg.epochs, steps_per_epoch) or acc >= 1.5 / classes:
        return None
    return (f"{split} accuracy is {acc:.1%} after {epochs_done} epochs ({epochs_done * steps_per_epoch} steps), "
            f"still at chance ({1 / classes:.1%} for {classes} classes): the model is not learning; the learning "
            f"rate (--lr {cfg.lr:g}) is likely too high for this data or model: {_fixes(cfg, input_size)}")
