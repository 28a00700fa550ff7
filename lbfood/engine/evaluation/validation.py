"""Leak-free validation of a trained model: ID accuracy on images held out from its training split, and
each scorer's OOD detection against a validation OOD set (pseudo-OOD made from the same held-out images,
or a real OOD set that is not a test set). The objective of `lbfood sweep` and the choice of `--method auto`.

Fitted scorers (ReAct's percentile, KNN's bank, …) are fitted on the images the model trained on, never
on the held-out ones, so a held-out image is never its own neighbour.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lbfood.engine.data import ImageSet
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import bootstrap, metrics, scorers
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation.scorers.base import head_of
from lbfood.engine.runtime import Runtime

# `--method auto` chooses among these: every post-hoc scorer that reads one forward pass (ODIN runs its own
# gradient pass per image, FeatureNorm its own jigsaw pass over the training split).
AUTO_CANDIDATES = ("msp", "maxlogit", "energy", "react", "ash", "dice", "knn", "mahalanobis", "vim")
OBJECTIVES = ("auroc", "fpr95")
TPR = 0.95  # the threshold keeps this share of held-out ID images (as `calibrate` does on the test split)


def validate(model: torch.nn.Module, *, train: ImageSet, held: ImageSet, val_ood: dict[str, ImageSet],
             methods: tuple[str, ...], mean, std, size: int, rt: Runtime, batch_size: int = 256,
             workers: int = 0, objective: str = "auroc", resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """{"val_acc", "num_held_out", "val_ood": {name: n}, "methods": {m: {"sets": {name: summary},
    "average": summary, "threshold": γ keeping TPR of held-out ID}}}; summaries as `metrics.summarize`.
    With `resamples`, also "bootstrap": the best scorer's objective and the accuracy, `resamples`
    seeded bootstrap replicates over the held-out images and their 95 % intervals (`bootstrap.py`)."""

    if not val_ood:
        raise ConfigError("validation needs at least one OOD set (a pseudo-OOD generator or --val-ood)")
    # A scorer that reads a head this model lacks (bghead on a run not trained with --objective bg-head)
    # does not apply to it and is left out: one sweep validates runs of several objectives.
    protos = [p for p in (scorers.get(m) for m in methods) if getattr(model, p.reads, None) is not None]
    if not protos:
        raise ConfigError(f"none of the scorers {', '.join(methods)} applies to this model; add e.g. --method react")
    blocks = any(p.needs_blocks for p in protos)
    jigsaw = any(p.name == "featurenorm" for p in protos)
    model.eval()

    def loader(images: ImageSet):
        return make_loader(images, batch_size=batch_size, mean=mean, std=std, image_size=size, train=False,
                           device=rt.device, channels_last=rt.channels_last, workers=workers)

    def extract(images: ImageSet, jig: bool = False) -> fx.Features:
        return fx.extract(model, loader(images), device=rt.device, precision=rt.precision,
                          blocks=blocks or jig, jigsaw=jig)

    train_feats = extract(train, jigsaw) if any(p.needs_fit for p in protos) else None
    id_feats = extract(held)
    ood_feats = {name: extract(images) for name, images in val_ood.items()}
    out: dict[str, Any] = {"val_acc": metrics.accuracy(id_feats.logits, id_feats.labels),
                           "num_held_out": len(held), "val_ood": {k: len(v) for k, v in val_ood.items()},
                           "methods": {}}
    kept = {}
    for s in protos:
        if s.needs_fit:
            s.fit(train_feats, head_of(s, model))
        if s.needs_images:
            id_scores = s.score_images(model, loader(held), device=rt.device, std=std)
            ood_scores = {k: s.score_images(model, loader(v), device=rt.device, std=std) for k, v in val_ood.items()}
        else:
            id_scores = s.score(id_feats)
            ood_scores = {k: s.score(f) for k, f in ood_feats.items()}
        sets = {k: metrics.summarize(id_scores, o) for k, o in ood_scores.items()}
        average = {k: float(np.mean([v[k] for v in sets.values()])) for k in metrics.SUMMARY_KEYS}
        out["methods"][s.name] = {"sets": sets, "average": average, "threshold": metrics.keep_threshold(id_scores, TPR)}
        kept[s.name] = (id_scores, ood_scores)
    if resamples:
        method, _ = best_method(out, objective)
        correct = id_feats.logits.argmax(1).cpu() == id_feats.labels.cpu()
        out["bootstrap"] = _interval(*kept[method], correct, objective, resamples, seed) | {"method": method}
    return out


def _interval(id_scores, ood_scores: dict, correct, objective: str, resamples: int, seed: int) -> dict[str, Any]:
    """The bootstrap entry of `validate`: settings, set sizes (what pairs two models), intervals, replicates."""
    def arr(x) -> np.ndarray:
        return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)

    reps = bootstrap.replicates(arr(id_scores), {k: arr(v) for k, v in ood_scores.items()}, arr(correct), objective,
                                resamples=resamples, seed=seed)
    return {"objective": objective, "resamples": resamples, "level": bootstrap.LEVEL, "seed": seed,
            "sizes": [len(arr(id_scores)), *(len(arr(v)) for v in ood_scores.values())],
            "interval": {k: bootstrap.interval(v) for k, v in reps.items()},
            "replicates": {k: [round(float(x), 7) for x in v] for k, v in reps.items()}}


def better(a: float, b: float, objective: str) -> bool:
    """Is objective value `a` strictly better than `b` (AUROC: higher; FPR95: lower)?"""
    return a > b if objective == "auroc" else a < b


def best_method(result: dict[str, Any], objective: str) -> tuple[str, float]:
    """The scorer with the best average validation objective (the first listed wins a tie)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    best: tuple[str, float] | None = None
    for name, cell in result["methods"].items():
        v = float(cell["average"][objective])
        if best is None or better(v, best[1], objective):
            best = (name, v)
    if best is None:
        raise ConfigError("no scorer was validated")
    return best
