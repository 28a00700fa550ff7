"""lbfood/engine/evaluation/bootstrap.py: the replicates equal an independent bootstrap loop (scipy's
Mann–Whitney U for the AUROC, a hand count for FPR95 and accuracy) draw for draw, the intervals agree with
scipy.stats.bootstrap within Monte Carlo error, and the paired difference is the quantile of the
replicate differences."""

import numpy as np
import pytest
from scipy import stats

from lbfood.engine.evaluation import bootstrap


def _data(seed=1):
    rng = np.random.default_rng(seed)
    ind = rng.normal(1.0, 1.0, 60)  # held-out ID scores
    ood = {"jigsaw": rng.normal(0.0, 1.0, 80), "blur": rng.normal(0.5, 1.0, 50)}
    correct = rng.random(60) < 0.8
    return ind, ood, correct


def _fpr95(ind, ood):
    """By hand, the paper's convention (`metrics.fpr_at_tpr`): over every score t that keeps every ID image
    or fewer, the OOD share ≥ t where the ID share ≥ t is closest to 95 % (of equally close ones, the lowest t)."""
    best = None
    for t in sorted(v for v in set(np.concatenate([ind, ood])) if v >= ind.min()):  # ascending: lowest t first
        gap = abs(np.mean(ind >= t) - 0.95)
        if best is None or gap < best[0]:
            best = (gap, float(np.mean(ood >= t)))
    return best[1]


def test_replicates_equal_an_independent_loop_draw_for_draw():
    ind, ood, correct = _data()
    for objective in ("auroc", "fpr95"):
        reps = bootstrap.replicates(ind, ood, correct, objective, resamples=200, seed=7)
        rng = np.random.default_rng(7)  # the documented draws: ID, then each OOD set, per replicate
        want_obj, want_acc = [], []
        for _ in range(200):
            i = rng.integers(0, 60, 60)
            vals = []
            for o in ood.values():
                j = rng.integers(0, o.size, o.size)
                if objective == "auroc":
                    vals.append(stats.mannwhitneyu(ind[i], o[j]).statistic / (60 * o.size))
                else:
                    vals.append(_fpr95(ind[i], o[j]))
            want_obj.append(np.mean(vals))
            want_acc.append(correct[i].mean())
        np.testing.assert_allclose(reps["objective"], want_obj, rtol=0, atol=1e-12)
        np.testing.assert_allclose(reps["val_acc"], want_acc, rtol=0, atol=1e-12)


def test_intervals_agree_with_scipy_bootstrap():
    ind, ood, correct = _data(2)
    one = {"jigsaw": ood["jigsaw"]}
    reps = bootstrap.replicates(ind, one, correct, "auroc", resamples=4000, seed=0)

    def auc(a, b):
        return stats.mannwhitneyu(a, b).statistic / (a.size * b.size)

    ref = stats.bootstrap((ind, one["jigsaw"]), auc, paired=False, vectorized=False, n_resamples=4000,
                          method="percentile", confidence_level=0.95, rng=np.random.default_rng(3))
    ci = ref.confidence_interval
    assert bootstrap.interval(reps["objective"]) == pytest.approx([ci.low, ci.high], abs=0.015)
    ref = stats.bootstrap((correct.astype(float),), np.mean, n_resamples=4000, method="percentile",
                          rng=np.random.default_rng(4))
    ci = ref.confidence_interval
    assert bootstrap.interval(reps["val_acc"]) == pytest.approx([ci.low, ci.high], abs=0.015)
    assert bootstrap.interval([0.0, 1.0, 2.0, 3.0, 4.0], level=0.5) == [1.0, 3.0]  # quantiles 0.25 and 0.75


def test_the_same_seed_and_sizes_pair_two_models_and_the_difference_is_paired():
    ind, ood, correct = _data(3)
    a = bootstrap.replicates(ind, ood, correct, "auroc", resamples=300, seed=5)
    b = bootstrap.replicates(ind + 0.5, ood, correct, "auroc", resamples=300, seed=5)  # a better "model"
    # a shift of the ID scores raises every replicate: the paired difference is positive throughout
    assert np.all(b["objective"] >= a["objective"])
    g = bootstrap.paired(b["objective"], a["objective"], 0.9, 0.8)
    assert g["value"] == pytest.approx(0.1) and 0 < g["low"] <= g["high"]
    assert g["low"] == pytest.approx(np.quantile(b["objective"] - a["objective"], 0.025))
    assert bootstrap.paired([0.3, 0.2], [0.4, 0.4], 0.25, 0.4, sign=-1.0) == pytest.approx(
        {"value": 0.15, "low": 0.1 + 0.1 * 0.025, "high": 0.1 + 0.1 * 0.975})
    with pytest.raises(ValueError, match="not paired"):
        bootstrap.paired([1, 2], [1, 2, 3], 0, 0)
