"""Calibration: the threshold γ of paper Eq. 3 (S(x) ≥ γ ⇒ ID) that keeps 95 % of a run's held-out ID
images, and the far-OOD gate's γ_far (keeping 99.7 % of its training images, scorers/fargate.py), both
stored in run.json (through `lbfood.engine.runs`) for `lbfood score`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError, DataError, StorageError
from lbfood.engine.evaluation.features import FORMAT as FEATURES_FORMAT
from lbfood.engine.evaluation.metrics import keep_threshold
from lbfood.engine.evaluation.scorers import Scorer, fargate
from lbfood.engine.evaluation.store import RunEval, data_root, jsonable, scorer_key, weights_fingerprint
from lbfood.engine.events import Step
from lbfood.engine.runs import RunMeta
from lbfood.engine.runtime import Runtime


def calibrate(run_dir: str | os.PathLike, model: torch.nn.Module, meta: RunMeta, rt: Runtime,
              method: str = "react", tpr: float = 0.95, *, params: dict[str, Any] | None = None,
              root: str | os.PathLike | None = None, batch_size: int = 256, workers: int = 4,
              on_event: Callable[[Step], None] | None = None, limit: int | None = None,
              notes: list[str] | None = None) -> dict[str, Any]:
    """The threshold γ (paper Eq. 3) that keeps a share `tpr` of the run's held-out ID images (its
    dataset's test split): {"method", "value", "tpr", "split", "data", "params"}, for run.json's
    "threshold". Features and fitted scorers are cached in the run folder, so later reports reuse them.
    `limit` (default: the run's own `--limit`, if it was trained with one) uses only the first images
    of the training and test splits, as the run's smoke-test training did. `notes` receives what the
    user should know (e.g. a cache file that could not be saved).
    """
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    run_dir = Path(run_dir)
    if limit is None:
        limit = meta.config.get("limit")
    ev = RunEval(run_dir, model, meta, rt, id_data=meta.data, data_root=data_root(meta, root),
                  batch_size=batch_size, workers=workers, on_event=on_event, limit=limit)
    # The training split is extracted here (RunEval.train_features: with FeatureNorm's jigsaw norms too),
    # so that later reports fit every scorer from the cache without another pass over the training data.
    s = ev.scorer(method, params)
    scores = ev.scores(s, meta.data, "test", user_std=bool(params and "std" in params))
    entry = {"method": method, "value": keep_threshold(scores, tpr), "tpr": tpr, "split": "test",
             "data": meta.data, "params": jsonable(s.params)}
    if limit is not None:
        entry["limit"] = limit
    if s.needs_blocks:  # block norms change meaning with the feature format (stages, then residual blocks)
        entry["features"] = FEATURES_FORMAT
    if notes is not None:
        notes.extend(n for n in ev.notes if n not in notes)
    return entry


def _gate_entry(ev: RunEval, keep: float) -> dict[str, Any]:
    s = ev.scorer(fargate.NAME)  # fitted (and stored in <run>/scorers/) or loaded
    train = ev.train_features(False)
    entry = {"method": s.name, "format": fargate.FORMAT, "value": fargate.threshold(train, s, keep), "keep": keep,
             "split": "train", "data": ev.meta.data, "images": len(train), "folds": fargate.FOLDS,
             "params": jsonable(s.params), "weights": ev.fp}
    if ev.limit is not None:
        entry["limit"] = ev.limit
    return entry


def calibrate_gate(run_dir: str | os.PathLike, model: torch.nn.Module, meta: RunMeta, rt: Runtime,
                   keep: float = fargate.KEEP, *, root: str | os.PathLike | None = None, batch_size: int = 256,
                   workers: int = 4, on_event: Callable[[Step], None] | None = None,
                   notes: list[str] | None = None) -> dict[str, Any]:
    """The far-OOD gate of `lbfood score` (scorers/fargate.py) fitted on the run's training split (its
    statistics stored in `<run>/scorers/`) and run.json's "far_gate" entry: its threshold γ_far, keeping a
    share `keep` of the training images (cross-fitted). Reads the training features calibration cached."""
    ev = RunEval(Path(run_dir), model, meta, rt, id_data=meta.data, data_root=data_root(meta, root),
                 batch_size=batch_size, workers=workers, on_event=on_event, limit=meta.config.get("limit"))
    entry = _gate_entry(ev, keep)
    if notes is not None:
        notes.extend(n for n in ev.notes if n not in notes)
    return entry


def stored_gate(meta: RunMeta, s: Scorer) -> float | None:
    """The run's γ_far for the gate `s` (same parameters, weights and training data), if run.json has it."""
    g = meta.far_gate
    if not isinstance(g, dict) or g.get("method") != s.name or g.get("keep") != fargate.KEEP:
        return None
    if g.get("format") != fargate.FORMAT:
        return None  # another definition of the gate (an older lbfood): its γ_far does not fit this one
    if g.get("params") != jsonable(s.params) or g.get("data") != meta.data or g.get("limit") != meta.config.get("limit"):
        return None
    if g.get("weights") != weights_fingerprint(meta.run_dir):
        return None
    return float(g["value"])


def fitted_gate(model: torch.nn.Module, meta: RunMeta, rt: Runtime, *, root: str | os.PathLike | None = None,
                batch_size: int = 64, on_event: Callable[[Step], None] | None = None,
                notes: list[str] | None = None) -> tuple[Scorer, float]:
    """The run's far-OOD gate (loaded from `<run>/scorers/`, or fitted) and its γ_far from run.json. A run
    calibrated before lbfood had the gate gets it now (one pass over its training split unless cached),
    stored in run.json, with a note. What `score` and `export` both use."""
    ev = RunEval(meta.run_dir, model, meta, rt, id_data=meta.data, data_root=data_root(meta, root),
                 batch_size=batch_size, workers=0, on_event=on_event, limit=meta.config.get("limit"))
    try:
        s = ev.scorer(fargate.NAME)
        value = None if ev.fits else stored_gate(meta, s)  # statistics fitted now: their γ_far too
        if value is None:
            entry = _gate_entry(ev, fargate.KEEP)
            value = entry["value"]
            ev.notes.append(f"run {meta.run_dir.name} had no far-OOD gate (calibrated before lbfood had one, or "
                            f"its gate was stale): fitted it now on {entry['images']} {meta.data} training images, "
                            f"γ_far {value:.4g} keeps {fargate.KEEP:.1%} of them; --no-far-gate skips it")
            try:
                if runs.read(meta.run_dir).status == "done":
                    runs.update(meta.run_dir, far_gate=entry)
            except StorageError as e:  # a read-only run: use the gate now, fit it again next time
                ev.unsaved(e)
    except DataError as e:
        raise DataError(f"the far-OOD gate must be fitted on the run's training data first ({e}); or pass "
                        "--no-far-gate") from None
    if notes is not None:
        notes.extend(n for n in ev.notes if n not in notes)
    return s, value


def stored_threshold(meta: RunMeta, s: Scorer) -> float | None:
    """The run's calibrated threshold for scorer `s` (same method and parameters), if it has one."""
    want = jsonable(s.params)
    candidates = [meta.thresholds.get(scorer_key(s)), meta.threshold]
    for entry in candidates:
        if not isinstance(entry, dict) or entry.get("method") != s.name or "value" not in entry:
            continue
        if s.needs_blocks and entry.get("features") != FEATURES_FORMAT:
            continue  # calibrated on block norms of another layout: calibrate again
        if entry.get("params", want) == want:
            return float(entry["value"])
    return None


def store_threshold(run_dir: str | os.PathLike, key: str, entry: dict[str, Any]) -> None:
    """Add `entry` to run.json's "thresholds" under `key` (and as "threshold" if the run has none)."""
    meta = runs.read(run_dir)
    if meta.status != "done":  # unfinished: its weights will still change, and a kept γ would outlive them
        return
    runs.update(run_dir, thresholds={**meta.thresholds, key: entry}, threshold=meta.threshold or entry)



def fitted_scorer_and_threshold(model: torch.nn.Module, meta: RunMeta, rt: Runtime, method: str,
                                params: dict[str, Any] | None = None, *, threshold: float | None = None,
                                root: str | os.PathLike | None = None, batch_size: int = 64,
                                on_event: Callable[[Step], None] | None = None,
                                notes: list[str] | None = None,
                                vet: Callable[[Scorer], None] | None = None) -> tuple[Scorer, float]:
    """The run's scorer `method`, fitted (or loaded from `<run>/scorers/`), and its threshold γ (paper
    Eq. 3): `threshold` if given, else the run's stored one, else calibrated now on the ID test split
    and stored in run.json. What `score` and `export` both use, so an exported detector decides as
    `lbfood score` does. `notes` receives what the user should know (e.g. a read-only run: a fit or
    threshold not saved). `vet` may refuse a new fit before it is stored (`RunEval.scorer`)."""
    run_dir = meta.run_dir
    ev = RunEval(run_dir, model, meta, rt, id_data=meta.data, data_root=data_root(meta, root),
                 batch_size=batch_size, workers=0, on_event=on_event,
                 limit=meta.config.get("limit"))  # fitted as calibrate fits it
    try:
        s = ev.scorer(method, params, vet=vet)
    except DataError as e:
        raise DataError(f"{method} must be fitted on the run's training data first: {e}") from None
    if threshold is None:
        threshold = stored_threshold(meta, s)
    if threshold is None:
        try:
            entry = calibrate(run_dir, model, meta, rt, method, params=params, root=root, batch_size=batch_size,
                              workers=0, on_event=on_event, notes=ev.notes)
        except DataError as e:
            raise DataError(f"the run has no {method} threshold and calibrating one needs its ID test "
                            f"split ({e}); or pass --threshold X") from None
        try:
            store_threshold(run_dir, scorer_key(s), entry)
        except StorageError as e:  # a read-only run: use the threshold now, compute it again next time
            ev.unsaved(e)
        threshold = entry["value"]
    if notes is not None:
        notes.extend(ev.notes)
    return s, float(threshold)
