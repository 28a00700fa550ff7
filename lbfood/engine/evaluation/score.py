"""`lbfood score`: a verdict for each of the user's image files: ID when the paper's score passes its
threshold γ (Eq. 3) and the far-OOD gate (scorers/fargate.py) passes its own γ_far; `far_gate=False`
gives the paper's verdict alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lbfood.engine import runs
from lbfood.engine.config import ScoreConfig
from lbfood.engine.data.images import decode, eval_transform
from lbfood.engine.data.paths import expand_paths
from lbfood.engine.errors import ConfigError, DataError
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import scorers
from lbfood.engine.evaluation.auto import resolve_score
from lbfood.engine.evaluation.calibrate import fitted_gate, fitted_scorer_and_threshold
from lbfood.engine.events import Step
from lbfood.engine.runtime import make_runtime


@dataclass(frozen=True)
class Row:
    """One scored file. `error` is set (and the rest None) when it could not be read or scored."""

    file: str
    predicted: str | None = None  # class name
    confidence: float | None = None  # max softmax probability
    score: float | None = None  # higher = more in-distribution (paper Eq. 3)
    verdict: str | None = None  # "ID" (score ≥ threshold and, with the gate, far_score ≥ far_threshold) or "OOD"
    reason: str | None = None  # why OOD: "far" (the far-OOD gate failed), else "score" (score < threshold)
    error: str | None = None
    method: str = ""
    threshold: float | None = None
    far_score: float | None = None  # the far-OOD gate's score (higher = nearer the training data); None: no gate
    far_threshold: float | None = None  # γ_far, keeping 99.7 % of the run's training images

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_image_options(paths, batch_size: int, threshold: float | None, example: str) -> None:
    """What `score` and `explain` refuse before any work: no images, a batch < 1, a non-finite γ."""
    if not paths:
        raise ConfigError(f"no images given; pass files, folders or globs, e.g. `{example}`")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"--threshold must be a finite number, got {threshold}")


def verdict(score: float, threshold: float, far_score: float | None, far_threshold: float | None) -> tuple[str, str | None]:
    """(verdict, reason): "ID" when score ≥ γ (paper Eq. 3) and the gate (if any) passes, far_score ≥ γ_far;
    else "OOD" with reason "far" when the gate failed (whatever the score), "score" when only the score did."""
    if far_score is not None and not far_score >= far_threshold:
        return "OOD", "far"
    return ("ID", None) if score >= threshold else ("OOD", "score")


def score_images(cfg: ScoreConfig, on_event: Callable[[Step], None] | None = None,
                 notes: list[str] | None = None) -> list[Row]:
    """Score each image file with `cfg.method`: predicted class, confidence, score and verdict: ID if
    score ≥ γ (paper Eq. 3) and, unless `cfg.far_gate` is False, the far-OOD gate passes too. γ is
    `cfg.threshold`, else the run's calibrated one (computed on the ID test split and stored in run.json on
    first use); the gate and its γ_far are fitted on the training split when the run is calibrated (on first
    use for older runs). Unreadable files become error rows. `notes` receives what the user should know
    (e.g. a read-only run: a fit or threshold not saved; a gate fitted now)."""
    check_image_options(cfg.paths, cfg.batch_size, cfg.threshold, "lbfood score photos/")
    cfg = resolve_score(cfg)  # --method auto: the run's validated scorer and threshold
    s = scorers.get(cfg.method, **cfg.params)  # unknown names and parameters raise before any work
    rt = make_runtime(cfg.device, cfg.precision, training=False)
    model, meta = runs.load_run(cfg.model, rt.device)
    if notes is not None and (unfinished := runs.unfinished(meta)):  # killed or still training
        notes.append(unfinished)
    model = rt.prepare(model)
    s, threshold = fitted_scorer_and_threshold(model, meta, rt, cfg.method, cfg.params, threshold=cfg.threshold,
                                               root=cfg.data_root, batch_size=cfg.batch_size, on_event=on_event,
                                               notes=notes)
    gate, far_thr = None, None
    if cfg.far_gate:
        gate, far_thr = fitted_gate(model, meta, rt, root=cfg.data_root, batch_size=cfg.batch_size,
                                    on_event=on_event, notes=notes)

    entries = expand_paths(cfg.paths)
    rows: dict[str, Row] = {}
    good: list[tuple[str, np.ndarray]] = []
    size = int(meta.input_size)
    run_std = tuple(float(v) for v in meta.std)
    mean = torch.tensor([float(v) for v in meta.mean]).view(1, 3, 1, 1)
    std = torch.tensor(run_std).view(1, 3, 1, 1)
    classes = list(meta.classes)

    def flush() -> None:
        if not good:
            return
        x = torch.from_numpy(np.stack([a for _, a in good])).permute(0, 3, 1, 2).float().div_(255)
        x = ((x - mean) / std).to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch = [(x, None)]
        feats = fx.extract(model, batch, device=rt.device, precision=rt.precision, blocks=s.needs_blocks or gate is not None)
        if s.needs_images:
            sc = s.score_images(model, batch, device=rt.device, std=None if "std" in cfg.params else run_std)
        else:
            sc = s.score(feats)
        far = gate.score(feats).tolist() if gate is not None else [None] * len(good)
        probs = torch.softmax(feats.logits, dim=1)
        conf, pred = probs.max(dim=1)
        for (f, _), c, p, v, g in zip(good, conf.tolist(), pred.tolist(), sc.tolist(), far, strict=True):
            says, why = verdict(v, threshold, g, far_thr)
            rows[f] = Row(f, predicted=classes[p] if p < len(classes) else str(p), confidence=c, score=v,
                          verdict=says, reason=why, method=s.name, threshold=threshold, far_score=g,
                          far_threshold=far_thr)
        good.clear()

    for f, err in entries:
        if err is not None:
            rows[f] = Row(f, error=err, method=s.name, threshold=threshold, far_threshold=far_thr)
            continue
        try:
            good.append((f, eval_transform(decode(f), size)))
        except DataError as e:
            msg = str(e)
            rows[f] = Row(f, error=msg.removeprefix(f"{f}: "), method=s.name, threshold=threshold,
                          far_threshold=far_thr)
        if len(good) >= cfg.batch_size:
            flush()
    flush()
    return [rows[f] for f, _ in entries]
