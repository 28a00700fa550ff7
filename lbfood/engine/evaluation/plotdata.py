"""The numbers behind `lbfood report --plots`: score histograms, ROC curves and the paper's Fig. 5.

`collect` re-opens each run of a finished report and reads the features and fitted scorers that
`report` cached in the run folder, so it runs no forward pass (only ODIN, which perturbs its input,
scores again). Everything is returned as numpy arrays in dataclasses, for notebooks and for the
renderer (`lbfood/output/plots.py`); nothing here draws or writes files.

Scores are higher = more in-distribution (paper Eq. 3). ROC curves put ID as the positive class, the
paper's FPR95 convention: the marked point is the threshold that keeps 95 % of ID test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lbfood.engine import runs
from lbfood.engine.config import ReportConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import metrics
from lbfood.engine.evaluation.calibrate import stored_threshold
from lbfood.engine.evaluation.report import ReportResult
from lbfood.engine.evaluation.store import RunEval, data_root
from lbfood.engine.events import Step
from lbfood.engine.runtime import make_runtime

TPR = 0.95  # the operating point of FPR95


@dataclass(frozen=True)
class ScoreHistograms:
    """One run and method: ID test scores and each OOD set's on shared bins (counts of images)."""

    run: str
    method: str
    id_data: str
    edges: np.ndarray  # (bins + 1,), score units; shared by every set of this run and method
    id_counts: np.ndarray  # (bins,) int, sums to the number of ID test images
    ood_counts: dict[str, np.ndarray]  # OOD set -> (bins,) int, sums to its number of images
    threshold: float | None  # the run's calibrated γ for this method (run.json), if it has one
    summary: dict[str, dict[str, float]]  # OOD set -> {fpr95, auroc, aupr_in, aupr_out}, fractions
    convention: str  # FPR95 convention of `summary` (see metrics.py)


@dataclass(frozen=True)
class RocCurve:
    """One run, method and OOD set: sklearn's `roc_curve` with ID as the positive class."""

    run: str
    method: str
    ood: str
    fpr: np.ndarray  # (P,) share of OOD images accepted (score ≥ threshold)
    tpr: np.ndarray  # (P,) share of ID images accepted
    thresholds: np.ndarray  # (P,) score at each point (the first is +inf)
    point: tuple[float, float]  # (fpr, tpr) at the largest threshold keeping ≥ 95 % of ID images
    auroc: float


@dataclass(frozen=True)
class NormDistributions:
    """The paper's Fig. 5: the L2 norm of the pooled feature vector (GAP of the last feature map) of
    every image, per run and dataset, with histogram counts on bins shared by all runs and datasets."""

    runs: tuple[str, ...]
    datasets: tuple[str, ...]  # the ID set first, then the OOD sets
    norms: dict[str, dict[str, np.ndarray]]  # run -> dataset -> (N,) ‖GAP(z)‖₂
    edges: np.ndarray  # (bins + 1,)
    counts: dict[str, dict[str, np.ndarray]]  # run -> dataset -> (bins,) int


@dataclass(frozen=True)
class PlotData:
    """Everything `report --plots` draws: per (run, method) histograms and ROC curves, and Fig. 5."""

    id_data: str
    ood: tuple[str, ...]
    histograms: tuple[ScoreHistograms, ...]
    rocs: tuple[RocCurve, ...]
    norms: NormDistributions


def run_labels(paths: list[str]) -> list[str]:
    """Short names for runs: the folder name, made unique with its parent folder when names repeat."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(p).parent.name}/{Path(p).name}" if names.count(Path(p).name) > 1 else Path(p).name
            for p in paths]


def shared_edges(arrays: list[np.ndarray], bins: int) -> np.ndarray:
    """`bins` equal-width bins over the range of all `arrays` together."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    return np.histogram_bin_edges(np.concatenate([np.asarray(a, np.float64) for a in arrays]), bins=bins)


def counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.asarray(values, np.float64), bins=edges)[0].astype(np.int64)


def roc(id_scores: np.ndarray, ood_scores: np.ndarray, *, run: str = "", method: str = "",
        ood: str = "") -> RocCurve:
    """ROC points (ID positive, score ≥ t ⇒ ID) and the operating point at the threshold that keeps 95 % of
    ID images (the first ROC point with TPR ≥ 0.95; the paper-convention FPR95 of `metrics.fpr_at_tpr`
    counts ties at the threshold as the reference code does, so it may differ from it slightly)."""
    from sklearn.metrics import roc_curve

    ind, out = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    y = np.r_[np.ones(ind.size), np.zeros(out.size)]
    fpr, tpr, thresholds = roc_curve(y, np.r_[ind, out])
    t = metrics.keep_threshold(ind, TPR)  # the 95 %-TPR threshold
    return RocCurve(run=run, method=method, ood=ood, fpr=fpr, tpr=tpr, thresholds=thresholds,
                    point=(float(np.mean(out >= t)), float(np.mean(ind >= t))), auroc=metrics.auroc(ind, out))


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").double().numpy()


def collect(cfg: ReportConfig, result: ReportResult, *, bins: int = 40,
            on_event: Callable[[Step], None] | None = None) -> PlotData:
    """The arrays behind the pictures of a report `result` made from `cfg` (run it first: its caches
    in the run folders are what this reads)."""
    rt = make_runtime(cfg.device, cfg.precision, training=False)
    paths = [r.path for r in result.runs]
    labels = run_labels(paths)
    datasets = (result.id_data, *result.ood)
    histograms, rocs = [], []
    norms: dict[str, dict[str, np.ndarray]] = {}
    data: dict = {}
    for label, path in zip(labels, paths, strict=True):
        model, meta = runs.load_run(path, rt.device)
        model = rt.prepare(model)
        ev = RunEval(Path(path), model, meta, rt, id_data=result.id_data,
                     data_root=data_root(meta, cfg.data_root), batch_size=cfg.batch_size,
                     workers=cfg.workers, data=data, on_event=on_event, limit=cfg.limit)
        if on_event is not None:
            on_event(Step(f"collecting plot data of {label}"))
        norms[label] = {d: _np(ev.features(d, "test").features.norm(dim=1)) for d in datasets}
        for m in result.methods:
            params = cfg.params.get(m, {})
            s = ev.scorer(m, params)
            user_std = "std" in params
            scores = {d: _np(ev.scores(s, d, "test", user_std=user_std)) for d in datasets}
            edges = shared_edges(list(scores.values()), bins)
            ind = scores[result.id_data]
            histograms.append(ScoreHistograms(
                run=label, method=m, id_data=result.id_data, edges=edges, id_counts=counts(ind, edges),
                ood_counts={o: counts(scores[o], edges) for o in result.ood},
                threshold=stored_threshold(meta, s),
                summary={o: metrics.summarize(ind, scores[o], result.convention) for o in result.ood},
                convention=result.convention))
            rocs.extend(roc(ind, scores[o], run=label, method=m, ood=o) for o in result.ood)
        del model, ev
    edges = shared_edges([a for per in norms.values() for a in per.values()], bins)
    dist = NormDistributions(runs=tuple(labels), datasets=datasets, norms=norms, edges=edges,
                             counts={r: {d: counts(a, edges) for d, a in per.items()} for r, per in norms.items()})
    return PlotData(id_data=result.id_data, ood=tuple(result.ood), histograms=tuple(histograms),
                    rocs=tuple(rocs), norms=dist)
