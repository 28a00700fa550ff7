"""`--method auto`: the run's default scorer, chosen when it is calibrated by leak-free validation.

A run trained with `--holdout F` keeps a share F of its training split unseen. After training, every
candidate scorer (`validation.AUTO_CANDIDATES`) is fitted on the images the run trained on and scored
on the held-out ID images against pseudo-OOD made from them (`pseudo_ood.py`); the scorer with the best
average AUROC becomes run.json's "auto" entry, with the threshold γ (paper Eq. 3) that keeps 95 % of
the held-out ID images. `score --method auto` and `report --method auto` then use it. No test image,
ID or OOD, is read. A run trained without `--holdout` has no unseen ID images, so it has no "auto".
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from lbfood.engine import runs
from lbfood.engine.config import ReportConfig, ScoreConfig
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import pseudo_ood, scorers
from lbfood.engine.evaluation.validation import AUTO_CANDIDATES, TPR, best_method, validate

PSEUDO = tuple(pseudo_ood.GENERATORS)


def entry_from(result: dict[str, Any], objective: str = "auroc", holdout: float | None = None) -> dict[str, Any]:
    """run.json's "auto": the best scorer of a `validate` result and its held-out-ID threshold."""
    method, value = best_method(result, objective)
    return {"method": method, "params": {}, "value": result["methods"][method]["threshold"], "tpr": TPR,
            "split": "holdout", "holdout": holdout, "objective": objective, "objective_value": value,
            "val_acc": result["val_acc"], "val_ood": result["val_ood"],
            "candidates": {m: c["average"] for m, c in result["methods"].items()}}


def calibrate_auto(model, *, train, held, mean, std, size: int, rt, batch_size: int, seed: int, holdout: float,
                   methods: tuple[str, ...] = AUTO_CANDIDATES, objective: str = "auroc",
                   val_ood: dict | None = None, pseudo: tuple[str, ...] = PSEUDO, resamples: int = 0) -> dict[str, Any]:
    """run.json's {"auto", "validation", "validation_seconds"} for a run trained with `--holdout`: `train`
    is what it trained on, `held` its held-out ID images; the validation OOD is `val_ood` (a real OOD set,
    never a test set) or pseudo-OOD made from `held` by the `pseudo` generators. No test image is read.
    With `resamples`, "validation" also holds the bootstrap of the best scorer (`validation.validate`)."""
    t0 = time.time()
    if val_ood is None:
        val_ood = pseudo_ood.make(held, pseudo, seed=seed)
    # A candidate that cannot be fitted on this few training images (KNN's k) is not a candidate.
    methods = tuple(m for m in methods if scorers.get(m).can_fit(len(train)))
    result = validate(model, train=train, held=held, val_ood=val_ood, methods=methods, mean=mean, std=std,
                      size=size, rt=rt, batch_size=batch_size, workers=0, objective=objective,
                      resamples=resamples, seed=seed)
    return {"auto": entry_from(result, objective, holdout), "validation": result,
            "validation_seconds": round(time.time() - t0, 3)}


def _entry(model: str) -> dict[str, Any]:
    meta = runs.read(model)
    run_dir, entry = meta.run_dir, meta.auto
    if not isinstance(entry, dict) or "method" not in entry:
        raise ConfigError(f"{run_dir} has no `auto` scorer: it was trained without --holdout (no unseen ID "
                          "images to choose on); fine-tune it with --holdout 0.1, or pass --method NAME")
    return entry


def resolve_score(cfg: ScoreConfig) -> ScoreConfig:
    """`score --method auto`: the run's chosen scorer and, unless --threshold is given, its threshold."""
    if cfg.method != "auto":
        return cfg
    if cfg.params:
        raise ConfigError("--method auto uses the scorer's recorded parameters; drop --param")
    e = _entry(cfg.model)
    return dataclasses.replace(cfg, method=e["method"], params=dict(e.get("params") or {}),
                               threshold=cfg.threshold if cfg.threshold is not None else float(e["value"]))


def resolve_report(cfg: ReportConfig) -> ReportConfig:
    """`report --method auto`: "auto" replaced by the chosen scorer of the report's first run."""
    if "auto" not in cfg.methods:
        return cfg
    if "auto" in cfg.params:
        raise ConfigError("--method auto uses the scorer's recorded parameters; drop --param auto.…")
    method = _entry(cfg.model)["method"]
    return dataclasses.replace(cfg, methods=tuple(method if m == "auto" else m for m in cfg.methods))
