"""The held-out ID validation split (TrainConfig.holdout): a stratified, seeded share of the training split.

Both wings read it: training trains on the rest and evaluates the held-out part each epoch; evaluation
fits scorers on the rest and validates them (`--method auto`, `lbfood sweep`) on the held-out part.
"""

from __future__ import annotations

from lbfood.engine.data.base import ImageSet
from lbfood.engine.data.folders import stratified_split
from lbfood.engine.errors import ConfigError

HOLDOUT_SEED = 0  # independent of --seed, so a pretrain and its fine-tunes hold out the same images


def split_holdout(train: ImageSet, holdout: float) -> tuple[ImageSet, ImageSet]:
    """(rest, held out): per class, round(n · holdout) images (at least one) held out."""
    if not 0 < holdout < 1:
        raise ConfigError(f"--holdout must be in (0, 1), got {holdout}")
    rest, held = stratified_split(train.labels, holdout, HOLDOUT_SEED)
    if len(held) == 0:
        raise ConfigError(f"--holdout {holdout} of {len(train)} training images holds out none; raise it")
    return train.subset(rest), train.subset(held, name=f"{train.name} (held out)")
