"""Seeded bootstrap intervals of a model's validation numbers, over the held-out images.

The percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13): each of
`resamples` replicates draws the held-out ID images with replacement (as many as there are) and,
independently, the images of each validation OOD set (a stratified bootstrap: every replicate keeps each
set's size, as the two-sample AUROC needs), then recomputes the statistic; the interval is the
(1 − level)/2 and (1 + level)/2 quantiles of the replicates. Statistics: the validation objective (the
average over the OOD sets of AUROC or FPR95, `metrics.summarize`'s definitions) and the ID accuracy (on
the same resampled ID images).

The draws depend only on the seed and the set sizes. Two models validated on the same images (every
trial of a sweep: one held-out split, one pseudo-OOD or `--val-ood` set) therefore get the same
resamples, and the replicate-by-replicate difference of two models is a paired bootstrap of their
difference (`paired`), which is how `lbfood sweep` decides whether a trial beat the control beyond noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lbfood.engine.evaluation import metrics

RESAMPLES = 1000
LEVEL = 0.95
_STATISTICS = {"auroc": metrics.auroc, "fpr95": lambda i, o: metrics.fpr_at_tpr(i, o, 0.95)}


def replicates(id_scores: Any, ood_scores: Mapping[str, Any], correct: Any, objective: str, *,
               resamples: int = RESAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """{"objective": (resamples,), "val_acc": (resamples,)}: the statistics on each replicate. `correct`
    is 1 where the held-out ID image `i` (the same order as `id_scores`) is classified right."""
    statistic = _STATISTICS[objective]
    ind = np.asarray(id_scores, dtype=np.float64)
    ood = [np.asarray(v, dtype=np.float64) for v in ood_scores.values()]
    right = np.asarray(correct, dtype=np.float64)
    if right.shape != ind.shape:
        raise ValueError(f"correct has shape {right.shape}, the ID scores {ind.shape}")
    rng = np.random.default_rng(seed)
    obj, acc = np.empty(resamples), np.empty(resamples)
    for b in range(resamples):
        i = rng.integers(0, ind.size, ind.size)
        obj[b] = np.mean([statistic(ind[i], o[rng.integers(0, o.size, o.size)]) for o in ood])
        acc[b] = right[i].mean()
    return {"objective": obj, "val_acc": acc}


def interval(reps: Any, level: float = LEVEL) -> list[float]:
    """[low, high]: the percentile interval of the replicates."""
    lo, hi = np.quantile(np.asarray(reps, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def paired(a_reps: Any, b_reps: Any, a: float, b: float, sign: float = 1.0,
           level: float = LEVEL) -> dict[str, float]:
    """The difference sign·(a − b) of two models validated on the same images: its value and the
    percentile interval of sign·(a_r − b_r) over the shared replicates r."""
    a_reps, b_reps = np.asarray(a_reps, dtype=np.float64), np.asarray(b_reps, dtype=np.float64)
    if a_reps.shape != b_reps.shape:
        raise ValueError(f"replicates differ in number ({a_reps.shape} vs {b_reps.shape}): not paired")
    low, high = interval(sign * (a_reps - b_reps), level)
    return {"value": float(sign * (a - b)), "low": low, "high": high}
