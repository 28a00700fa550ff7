"""Stops for a training run that is going nowhere: a loss that is not finite, or a pretraining whose
test accuracy is still at chance after a few epochs. Each names the likely cause and the fix."""

from __future__ import annotations

import math

from lbfood.engine.config import FinetuneConfig, TrainConfig
from lbfood.engine.errors import RunError


def _fixes(cfg: TrainConfig | FinetuneConfig, input_size: int) -> str:
    fixes = f"try --lr {cfg.lr / 10:g} or a linear warm-up (--warmup-epochs 5)"
    if input_size >= 224 and cfg.init is None:
        fixes += ", or start from pretrained weights (--init)"
    return fixes


def check_finite(metrics: dict[str, float], cfg: TrainConfig | FinetuneConfig, epoch: int, step: int,
                 input_size: int) -> None:
    """Raise RunError if a loss read this epoch is NaN or infinite (the weights are not saved)."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        k, v = next(iter(bad.items()))
        raise RunError(f"training diverged: {k} is {v} at epoch {epoch + 1}, step {step}; the learning rate "
                       f"(--lr {cfg.lr:g}) is likely too high: {_fixes(cfg, input_size)} (in a new run)")


def chance_epoch(epochs: int) -> int:
    """The epoch after which a pretraining must beat chance: max(3, 20 % of the epochs)."""
    return max(3, math.ceil(0.2 * epochs))


def at_chance(test_acc: float, classes: int, cfg: TrainConfig, epochs_done: int, input_size: int) -> str | None:
    """The message if, after `chance_epoch` epochs, test accuracy is below 1.5 × chance (1.5 / K); else None."""
    if epochs_done != chance_epoch(cfg.epochs) or test_acc >= 1.5 / classes:
        return None
    return (f"test accuracy is {test_acc:.1%} after {epochs_done} epochs, still at chance ({1 / classes:.1%} for "
            f"{classes} classes): the model is not learning; the learning rate (--lr {cfg.lr:g}) is likely too "
            f"high for this data or model: {_fixes(cfg, input_size)}")
