import math

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from lbfood.engine.errors import LbfoodError
from lbfood.engine.evaluation import metrics


def _labels(ind, ood):
    return np.r_[np.ones(len(ind)), np.zeros(len(ood))], np.r_[ind, ood]


def _ref_fpr95(ind, ood, convention):
    """FPR95 written out the slow way, one threshold at a time."""
    y_id, s = _labels(ind, ood)
    if convention == "openood":  # OOD positive, scores negated: sklearn's roc_curve, first TPR ≥ 0.95
        fpr, tpr, _ = roc_curve(1 - y_id, -s, drop_intermediate=False)
        return fpr[np.argmax(tpr >= 0.95)]
    # paper (Outlier Exposure's fpr_and_fdr_at_recall, ID positive): every distinct score t ≥ min(ID) is
    # a threshold; take the recall closest to 0.95 and, among the thresholds with that recall, the lowest
    thresholds = sorted({float(v) for v in s if v >= ind.min()})
    recall = [np.sum(ind >= t) / ind.size for t in thresholds]
    best = min(abs(r - 0.95) for r in recall)
    t = next(t for t, r in zip(thresholds, recall, strict=True) if abs(r - 0.95) == best)
    return np.sum(ood >= t) / ood.size


def _cases():
    rng = np.random.default_rng(0)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        yield rng.normal(1, 1, 200), rng.normal(0, 1, 150)  # continuous
        yield rng.integers(0, 6, 120).astype(float), rng.integers(0, 4, 90).astype(float)  # many ties
    yield np.arange(20.0), np.arange(20.0)  # identical sets


@pytest.mark.parametrize("convention", ["paper", "openood"])
def test_against_reference(convention):
    for ind, ood in _cases():
        y_id, s = _labels(ind, ood)
        assert metrics.fpr_at_tpr(ind, ood, convention=convention) == pytest.approx(
            _ref_fpr95(ind, ood, convention), abs=1e-12)
        assert metrics.auroc(ind, ood) == pytest.approx(roc_auc_score(y_id, s), abs=1e-12)
        if convention == "paper":
            assert metrics.aupr_in(ind, ood) == pytest.approx(average_precision_score(y_id, s), abs=1e-12)
            assert metrics.aupr_out(ind, ood) == pytest.approx(average_precision_score(1 - y_id, -s), abs=1e-12)
        else:  # OpenOOD's trapezoidal areas under precision_recall_curve
            p, r, _ = precision_recall_curve(y_id, s)
            assert metrics.aupr_in(ind, ood, "openood") == pytest.approx(auc(r, p), abs=1e-12)
            p, r, _ = precision_recall_curve(1 - y_id, -s)
            assert metrics.aupr_out(ind, ood, "openood") == pytest.approx(auc(r, p), abs=1e-12)


def test_fpr95_hand_made():
    ind = np.arange(1.0, 21.0)  # 20 ID scores; keeping 19 of them (95 %) puts the threshold at 2
    ood = np.array([0.0, 2.0, 2.5, 25.0])  # 2 (a tie at the threshold), 2.5 and 25 pass it
    assert metrics.fpr_at_tpr(ind, ood) == 0.75
    # OpenOOD: 95 % of 4 OOD images needs all four, cut-off 25, so every ID image is flagged.
    assert metrics.fpr_at_tpr(ind, ood, convention="openood") == 1.0
    ood20 = np.arange(-10.0, 10.0)  # cut-off at the 19th smallest OOD score = 8 → ID ≤ 8 are 8 of 20
    assert metrics.fpr_at_tpr(ind, ood20, convention="openood") == 0.4
    assert metrics.fpr_at_tpr(ind, ood20) == 0.4  # paper: OOD ≥ 2 are 2..9 → 8 of 20


def test_fpr95_paper_counts_below_the_threshold():
    # ID 1..20, OOD 0, 1.5, 2.5, 30. Thresholds (score ≥ t ⇒ ID) at the distinct scores ≥ min(ID) = 1:
    #   t = 2:   ID ≥ 2 are 19 of 20 (recall 0.95), OOD ≥ 2 are 2.5, 30        → 2 FPs
    #   t = 1.5: ID ≥ 1.5 are the same 19 (recall 0.95), OOD 1.5, 2.5, 30      → 3 FPs
    #   t = 1:   recall 1.0
    # The recall closest to 0.95 is 0.95 itself; of its two thresholds the reference takes the lower
    # one, 1.5, so FPR95 = 3/4 (sklearn's roc_curve at the first TPR ≥ 0.95 stops at t = 2: 2/4).
    ind, ood = np.arange(1.0, 21.0), np.array([0.0, 1.5, 2.5, 30.0])
    assert metrics.fpr_at_tpr(ind, ood) == 0.75
    assert _sk_first_tpr95(ind, ood) == 0.5


def test_fpr95_paper_ties_and_recall_below_tpr():
    # ID: nine 2s and one 1 (ties); OOD 0, 0, 1, 1.5. Thresholds at the distinct scores ≥ 1:
    #   t = 2:   ID ≥ 2 are 9 of 10, recall 0.9, OOD ≥ 2: none                    → 0 FPs
    #   t = 1.5: recall 0.9, OOD ≥ 1.5: 1.5                                        → 1 FP
    #   t = 1:   recall 1.0 (the tied 1s: ID 1 and OOD 1 enter together), OOD 1, 1.5 → 2 FPs
    # No threshold gives 0.95. In float64 |0.9 − 0.95| = 0.04999999999999993 < |1.0 − 0.95| =
    # 0.050000000000000044, so the reference takes recall 0.9, at its lower threshold 1.5: FPR95 = 1/4.
    # sklearn's first TPR ≥ 0.95 is recall 1.0 at t = 1: 2/4.
    ind, ood = np.r_[np.full(9, 2.0), 1.0], np.array([0.0, 0.0, 1.0, 1.5])
    assert metrics.fpr_at_tpr(ind, ood) == 0.25
    assert _sk_first_tpr95(ind, ood) == 0.5
    # All tied: one threshold, recall 1.0, every OOD image counted: 4/4.
    assert metrics.fpr_at_tpr(np.full(10, 1.0), np.full(4, 1.0)) == 1.0
    # The OpenOOD convention is unchanged: OOD positive, cut-off at the ⌈0.95·4⌉ = 4th smallest OOD
    # score, 1.5; ID ≤ 1.5 are the single 1 → 1/10.
    assert metrics.fpr_at_tpr(ind, ood, convention="openood") == 0.1


def _sk_first_tpr95(ind, ood):
    y_id, s = _labels(ind, ood)
    fpr, tpr, _ = roc_curve(y_id, s, drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def test_auroc_and_ap_hand_made():
    # pairs (3,1) (3,2) (2,1) win, (2,2) ties: (3 + 0.5) / 4
    assert metrics.auroc([3.0, 2.0], [1.0, 2.0]) == 0.875
    # ranking 3(id) 2(ood) 1(id): AP = ½·1 + ½·⅔
    assert metrics.aupr_in([3.0, 1.0], [2.0]) == pytest.approx(0.5 + 1 / 3)
    assert metrics.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert metrics.auroc([0.0], [1.0]) == 0.0


@pytest.mark.parametrize("convention", ["paper", "openood"])
def test_ties_do_not_flatter(convention):
    ind, ood = np.full(50, 0.3), np.full(40, 0.3)
    s = metrics.summarize(ind, ood, convention)
    assert s["auroc"] == 0.5
    assert s["fpr95"] == 1.0
    assert list(s) == ["fpr95", "auroc", "aupr_in", "aupr_out"]
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in s.values())


def test_tensor_inputs_and_infinities():
    ind, ood = torch.tensor([1.0, 2.0, float("inf")]), torch.tensor([float("-inf"), 0.5])
    assert metrics.auroc(ind, ood) == 1.0
    assert metrics.fpr_at_tpr(ind, ood) == 0.0


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [[1.0, 2.0], [3.0, 4.0]]])
def test_bad_input(bad):
    for fn in (metrics.auroc, metrics.fpr_at_tpr, metrics.aupr_in, metrics.aupr_out, metrics.summarize):
        with pytest.raises(metrics.MetricInputError) as e:
            fn(bad, [1.0])
        assert isinstance(e.value, ValueError) and isinstance(e.value, LbfoodError)
    with pytest.raises(metrics.MetricInputError):
        metrics.summarize([1.0], [0.0], convention="sklearn")


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 0, -1])  # the unlabelled row is ignored
    assert metrics.accuracy(logits, labels) == pytest.approx(2 / 3)
    assert metrics.accuracy(np.array([1, 1, 0]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(metrics.MetricInputError):
        metrics.accuracy(logits, torch.full((4,), -1))
