"""OOD detection metrics: FPR at 95 % TPR, AUROC, AUPR-In/Out, and classification accuracy.

Scores are higher = more in-distribution (paper Eq. 3). Everything is computed on the CPU in float64
from two 1-D score arrays, one for the ID test set and one for an OOD set. Ties never flatter a
detector: an OOD image scoring exactly at the threshold counts as a false positive, and tied pairs
count half in AUROC (all-equal scores give AUROC 0.5 and FPR95 1.0).

Two conventions for FPR95 (`convention=`):

* "paper" (default): ID is the positive class, as in the paper's "FPR when the TPR is 95 %", counted
  as the reference OOD code counts it: `fpr_and_fdr_at_recall` of the Outlier Exposure code base
  (hendrycks/outlier-exposure, `utils/display_results.py`), which the ReAct, KNN and FeatureNorm
  repositories reuse with the ID scores as the positive class. Over the distinct score values taken as
  thresholds (score ≥ t ⇒ ID), down to the lowest ID score, it takes the ID recall closest to `tpr`
  (float64 |recall − tpr|; it may lie below `tpr`, and of two equally close the higher recall wins)
  and, of the thresholds with that recall, the lowest one: OOD scores between the last ID score kept
  and the next ID score below count as false positives. This is not sklearn's `roc_curve` at the
  first TPR ≥ 0.95, which stops at the ID score itself and never goes below `tpr`.
* "openood": OOD is the positive class (OpenOOD v1.5, `evaluators/metrics.py::auc_and_fpr_recall`:
  `roc_curve(ood_indicator, -conf)`, FPR at the first point with TPR ≥ 0.95): the cut-off c is the
  smallest score with share(ood ≤ c) ≥ tpr, and FPR = share(id ≤ c). Its AUPRs are OpenOOD's
  trapezoidal areas under `precision_recall_curve`, where "paper" uses average precision (sklearn's
  `average_precision_score`, the step-wise area).

AUROC is the same under both conventions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lbfood.engine.errors import ConfigError

CONVENTIONS = ("paper", "openood")
SUMMARY_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out")


class MetricInputError(ConfigError, ValueError):
    """Scores that no metric can be computed from (empty, NaN, wrong shape)."""


def _as_scores(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().to("cpu").double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise MetricInputError(f"{what} must be a 1-D array of scores, got shape {a.shape}")
    if a.size == 0:
        raise MetricInputError(f"{what} is empty; score at least one image of each set")
    if np.isnan(a).any():
        raise MetricInputError(f"{what} contains {int(np.isnan(a).sum())} NaN score(s); check the scorer "
                               "and the model (non-finite logits or features)")
    return a


def _pair(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise MetricInputError(f"unknown metric convention {convention!r}; valid: {', '.join(CONVENTIONS)}")


def _keep_count(n: int, tpr: float) -> int:
    """Smallest k with k / n ≥ tpr (robust to float error in tpr·n, e.g. 0.95·20)."""
    k = math.ceil(tpr * n - 1e-9)
    return min(max(k, 1), n)


def keep_threshold(scores: Any, tpr: float = 0.95) -> float:
    """The largest γ with share(scores ≥ γ) ≥ tpr: the k-th largest score, k = ⌈tpr·n⌉ (paper Eq. 3's
    γ that keeps a share `tpr` of ID images)."""
    s = _as_scores(scores, "scores")
    if not 0.0 < tpr <= 1.0:
        raise MetricInputError(f"tpr must be in (0, 1], got {tpr}")
    return float(np.sort(s)[::-1][_keep_count(s.size, tpr) - 1])


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95, convention: str = "paper") -> float:
    """False-positive rate at the threshold that keeps a share `tpr` of the positive class (FPR95)."""
    _check_convention(convention)
    if not 0.0 < tpr <= 1.0:
        raise MetricInputError(f"tpr must be in (0, 1], got {tpr}")
    ind, ood = _pair(id_scores, ood_scores)
    if convention == "paper":
        return _fpr_at_recall(ind, ood, tpr)
    c = np.sort(ood)[_keep_count(ood.size, tpr) - 1]  # the k-th smallest OOD score
    return float(np.mean(ind <= c))


def _fpr_at_recall(ind: np.ndarray, ood: np.ndarray, recall_level: float) -> float:
    """FPR at the ID recall closest to `recall_level`, counted as the Outlier Exposure code's
    `fpr_and_fdr_at_recall(labels, scores)` with ID labelled 1 (see the module docstring)."""
    scores = np.concatenate([ind, ood])
    is_id = np.concatenate([np.ones(ind.size), np.zeros(ood.size)])
    order = np.argsort(scores, kind="mergesort")[::-1]  # descending, as the reference sorts
    scores, is_id = scores[order], is_id[order]
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last index of each tie block
    tps = np.cumsum(is_id, dtype=np.float64)[ends]  # ID images with score ≥ each threshold
    fps = 1 + ends - tps  # OOD images with score ≥ each threshold
    recall = tps / tps[-1]
    # From the lowest threshold that keeps every ID image up to the highest: argmin takes the first of
    # equally close recalls, so the lowest threshold of a run of equal recalls (the most false
    # positives). The reference also appends a point (recall 1, 0 FPs) after these; it never wins,
    # because the first point already has recall exactly 1 and argmin keeps the first.
    full = int(np.searchsorted(tps, tps[-1]))
    recall, fps = recall[full::-1], fps[full::-1]
    return float(fps[np.argmin(np.abs(recall - recall_level))] / ood.size)


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve = P(id > ood) + ½·P(id = ood) (Mann–Whitney U / (n_id·n_ood))."""
    ind, ood = _pair(id_scores, ood_scores)
    ranks = _average_ranks(np.concatenate([ind, ood]))
    u = ranks[: ind.size].sum() - ind.size * (ind.size + 1) / 2.0
    return float(min(max(u / (ind.size * ood.size), 0.0), 1.0))


def _pr_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score, thresholds descending (score ≥ t ⇒ positive)."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]  # last index of each tie block
    tp = np.cumsum(is_pos)[last]
    fp = (last + 1) - tp
    return tp / (tp + fp), tp / pos.size


def _aupr(pos: np.ndarray, neg: np.ndarray, convention: str) -> float:
    precision, recall = _pr_points(pos, neg)
    if convention == "paper":  # average precision: Σ (R_n − R_{n−1}) P_n
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    # OpenOOD: trapezoids through (recall, precision), starting at sklearn's (0, 1) end point
    r, p = np.r_[0.0, recall], np.r_[1.0, precision]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2.0))


def aupr_in(id_scores: Any, ood_scores: Any, convention: str = "paper") -> float:
    """Area under the precision–recall curve with ID as the positive class."""
    _check_convention(convention)
    ind, ood = _pair(id_scores, ood_scores)
    return _aupr(ind, ood, convention)


def aupr_out(id_scores: Any, ood_scores: Any, convention: str = "paper") -> float:
    """Area under the precision–recall curve with OOD as the positive class (scores negated)."""
    _check_convention(convention)
    ind, ood = _pair(id_scores, ood_scores)
    return _aupr(-ood, -ind, convention)


def summarize(id_scores: Any, ood_scores: Any, convention: str = "paper") -> dict[str, float]:
    """All detection metrics, keys `fpr95, auroc, aupr_in, aupr_out` (fractions in [0, 1])."""
    _check_convention(convention)
    ind, ood = _pair(id_scores, ood_scores)
    return {
        "fpr95": fpr_at_tpr(ind, ood, 0.95, convention),
        "auroc": auroc(ind, ood),
        "aupr_in": aupr_in(ind, ood, convention),
        "aupr_out": aupr_out(ind, ood, convention),
    }


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Top-1 accuracy over the labelled images (label ≥ 0); logits (N, K) or predictions (N,)."""
    if hasattr(logits_or_preds, "detach"):
        logits_or_preds = logits_or_preds.detach().to("cpu").numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().to("cpu").numpy()
    out, y = np.asarray(logits_or_preds), np.asarray(labels).reshape(-1)
    preds = out.argmax(axis=1) if out.ndim == 2 else out.reshape(-1)
    if preds.shape[0] != y.shape[0]:
        raise MetricInputError(f"accuracy: {preds.shape[0]} predictions but {y.shape[0]} labels")
    keep = y >= 0
    if not keep.any():
        raise MetricInputError("accuracy: no labelled images (every label is -1); use a labelled ID test set")
    return float(np.mean(preds[keep] == y[keep]))
