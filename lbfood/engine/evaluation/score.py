"""`lbfood score`: a verdict for each of the user's image files: ID when the paper's score passes its
threshold γ (Eq. 3) and the far-OOD gate (scorers/fargate.py) passes its own γ_far; `far_gate=False`
gives the paper's verdict alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lbfood.engine import runs
from lbfood.engine.config import ScoreConfig
from lbfood.engine.data.images import decode, eval_transform
from lbfood.engine.data.paths import expand_paths
from lbfood.engine.errors import DataError
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


@dataclass(frozen=True)
class Scoring:
    """A loaded run, its fitted scorer and threshold γ: what scoring a stream of images needs."""

    cfg: ScoreConfig
    model: Any
    scorer: Any
    threshold: float
    rt: Any
    size: int
    mean: torch.Tensor
    std: torch.Tensor
    run_std: tuple[float, ...]
    classes: list[str]
    gate: Any = None  # the far-OOD gate (scorers/fargate.py), None with --no-far-gate
    far_threshold: float | None = None  # its γ_far


def verdict(score: float, threshold: float, far_score: float | None, far_threshold: float | None) -> tuple[str, str | None]:
    """(verdict, reason): "ID" when score ≥ γ (paper Eq. 3) and the gate (if any) passes, far_score ≥ γ_far;
    else "OOD" with reason "far" when the gate failed (whatever the score), "score" when only the score did."""
    if far_score is not None and not far_score >= far_threshold:
        return "OOD", "far"
    return ("ID", None) if score >= threshold else ("OOD", "score")


def prepare(cfg: ScoreConfig, on_event: Callable[[Step], None] | None = None,
            notes: list[str] | None = None) -> Scoring:
    """Load the run and fit (or load) the scorer and γ once, before any image is read."""
    cfg.check()
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
    if cfg.far_gate:  # the far-OOD gate beside the paper's score (scorers/fargate.py)
        gate, far_thr = fitted_gate(model, meta, rt, root=cfg.data_root, batch_size=cfg.batch_size,
                                    on_event=on_event, notes=notes)
    run_std = tuple(float(v) for v in meta.std)
    return Scoring(cfg, model, s, threshold, rt, int(meta.input_size),
                   torch.tensor([float(v) for v in meta.mean]).view(1, 3, 1, 1), torch.tensor(run_std).view(1, 3, 1, 1),
                   run_std, list(meta.classes), gate, far_thr)


def iter_rows(sc: Scoring, entries: list[tuple[str, str | None]]) -> Iterator[list[Row]]:
    """The rows of `entries` (from `expand_paths`), in their order, one list per forward pass: only one
    batch of decoded images is held at a time, whatever the number of files."""
    s, rt, threshold = sc.scorer, sc.rt, sc.threshold
    rows: dict[str, Row] = {}
    order: list[str] = []
    good: list[tuple[str, np.ndarray]] = []

    def flush() -> list[Row]:
        if good:
            x = torch.from_numpy(np.stack([a for _, a in good])).permute(0, 3, 1, 2).float().div_(255)
            x = ((x - sc.mean) / sc.std).to(rt.device)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch = [(x, None)]
            feats = fx.extract(sc.model, batch, device=rt.device, precision=rt.precision,
                               blocks=s.needs_blocks or sc.gate is not None)
            if s.needs_images:
                v = s.score_images(sc.model, batch, device=rt.device, std=None if "std" in sc.cfg.params else sc.run_std)
            else:
                v = s.score(feats)
            far = sc.gate.score(feats).tolist() if sc.gate is not None else [None] * len(good)
            probs = torch.softmax(feats.logits, dim=1)
            conf, pred = probs.max(dim=1)
            for (f, _), c, p, val, g in zip(good, conf.tolist(), pred.tolist(), v.tolist(), far, strict=True):
                if not (math.isfinite(val) and math.isfinite(c)):  # no NaN row: it is no verdict (nor valid JSON)
                    rows[f] = Row(f, error=f"the {s.name} score is {val} (not a finite number), so there is no "
                                           "verdict", method=s.name, threshold=threshold, far_threshold=sc.far_threshold)
                    continue
                says, why = verdict(val, threshold, g, sc.far_threshold)
                rows[f] = Row(f, predicted=sc.classes[p] if p < len(sc.classes) else str(p), confidence=c, score=val,
                              verdict=says, reason=why, method=s.name, threshold=threshold, far_score=g,
                              far_threshold=sc.far_threshold)
            good.clear()
        out = [rows.pop(f) for f in order]
        order.clear()
        return out

    for f, err in entries:
        order.append(f)
        if err is not None:
            rows[f] = Row(f, error=err, method=s.name, threshold=threshold, far_threshold=sc.far_threshold)
            continue
        try:
            good.append((f, eval_transform(decode(f), sc.size)))
        except DataError as e:
            rows[f] = Row(f, error=str(e).removeprefix(f"{f}: "), method=s.name, threshold=threshold,
                          far_threshold=sc.far_threshold)
        if len(good) >= sc.cfg.batch_size:
            yield flush()
    if order:
        yield flush()


def score_images(cfg: ScoreConfig, on_event: Callable[[Step], None] | None = None,
                 notes: list[str] | None = None) -> list[Row]:
    """Score each image file with `cfg.method`: predicted class, confidence, score and verdict (ID if
    score ≥ γ, paper Eq. 3). γ is `cfg.threshold`, else the run's calibrated one (computed on the ID
    test split and stored in run.json on first use). Unreadable files become error rows. `notes`
    receives what the user should know (e.g. a read-only run: a fit or threshold not saved)."""
    sc = prepare(cfg, on_event, notes)
    return [r for batch in iter_rows(sc, expand_paths(sc.cfg.paths)) for r in batch]
