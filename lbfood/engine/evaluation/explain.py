"""The numbers behind `lbfood explain` (the paper's Fig. 7): where in an image the model's features are
strong, and which locations it treats as background.

For each image and run: the per-location L2 norm ‖z_j‖ of the last feature map z = forward_features(x)
(what L_LFF pushes below μ on background, Eq. 6), the same map bilinearly upsampled onto the image, the
background mask of Eq. 5 (p_j(c) < δ, with p_j = softmax(head(z_j)), Eq. 4) for the predicted class c
and for a user-given label, and the image's score, verdict and predicted class as `lbfood score` gives
them. Returned as numpy arrays; nothing here draws, and only `score_images` writes (the run's cached
threshold and fitted scorer, as `lbfood score` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lbfood.engine import runs
from lbfood.engine.background import background_mask
from lbfood.engine.config import ExplainConfig, ScoreConfig
from lbfood.engine.data.images import decode, eval_transform
from lbfood.engine.data.paths import expand_paths
from lbfood.engine.errors import ConfigError, DataError
from lbfood.engine.evaluation.plotdata import run_labels
from lbfood.engine.evaluation.score import Row, score_images
from lbfood.engine.events import Step
from lbfood.engine.presets import preset_values
from lbfood.engine.runs import RunMeta


@dataclass(frozen=True)
class RunMap:
    """One image under one run."""

    run: str
    delta: float  # δ of Eq. 5 for this run (see `run_delta`)
    norms: np.ndarray  # (h, w) float32: ‖z_j‖₂ at each location of forward_features
    heat: np.ndarray  # (S, S) float32: `norms` bilinearly upsampled onto the S×S input image
    mask: np.ndarray  # (h, w) bool: background for the predicted class, p_j(c) < δ (Eq. 5)
    label_mask: np.ndarray | None  # (h, w) bool: background for the given label, if one was given
    predicted: str
    confidence: float  # max softmax probability of the image
    score: float  # higher = more in-distribution (Eq. 3)
    verdict: str  # "ID" (score ≥ threshold and the far-OOD gate passed) or "OOD", as `lbfood score`
    threshold: float
    method: str
    reason: str | None = None  # why OOD: "far" (the far-OOD gate) or "score"


@dataclass(frozen=True)
class Explanation:
    """One image: as the model sees it, and its maps under each run (empty when `error` is set)."""

    file: str
    image: np.ndarray | None  # (S, S, 3) uint8 after the run's resize and centre crop
    maps: tuple[RunMap, ...] = ()
    label: str | None = None
    error: str | None = None


def run_delta(meta: RunMeta) -> float:
    """δ (Eq. 5) of a run: a fine-tuned run's own, else the fine-tuning preset of its dataset (the
    paper's 0.1 for CIFAR-10, 0.01 for CIFAR-100 and ImageNet-100, else 1/K)."""
    delta = meta.config.get("delta")
    if isinstance(delta, int | float) and 0 < delta < 1:
        return float(delta)
    return float(preset_values(meta.preset or "custom", int(meta.input_size), len(meta.classes))["delta"])


def _check(cfg: ExplainConfig) -> list[RunMeta]:
    cfg.check("lbfood explain photos/ --out pics")
    metas = [runs.read(p) for p in (cfg.model, *cfg.compare)]
    if len({m.run_dir for m in metas}) != len(metas):
        raise ConfigError("a run is given twice (--model/--compare); pass each run once")
    sizes = {int(m.input_size) for m in metas}
    if len(sizes) > 1:
        raise ConfigError(f"the runs take different input sizes ({', '.join(map(str, sorted(sizes)))} px); "
                          "compare runs of one input size")
    for meta in metas:
        if cfg.label is not None and cfg.label not in meta.classes:
            shown = ", ".join(meta.classes[:10]) + (", …" if len(meta.classes) > 10 else "")
            raise ConfigError(f"--label {cfg.label} is not a class of run {meta.run_dir.name}; its classes: {shown}")
    return metas


def _maps(model: torch.nn.Module, meta: RunMeta, arrays: list[np.ndarray], pred: list[int],
          label: int | None, delta: float, device: torch.device) -> list[tuple]:
    """(norms, heat, mask, label_mask) per image, from one forward_features pass in fp32."""
    size = int(meta.input_size)
    mean = torch.tensor([float(v) for v in meta.mean]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in meta.std]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    x = ((x - mean) / std).to(device)
    with torch.inference_mode():
        z = model.forward_features(x).float()
        norms = z.norm(dim=1)  # (B, h, w)
        heat = F.interpolate(norms[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        mask = background_mask(z, model.head, torch.tensor(pred, device=device), delta)
        lmask = None if label is None else \
            background_mask(z, model.head, torch.full((len(arrays),), label, device=device), delta)
    out = []
    for i in range(len(arrays)):
        out.append((norms[i].cpu().numpy(), heat[i].cpu().numpy(), mask[i].cpu().numpy(),
                    None if lmask is None else lmask[i].cpu().numpy()))
    return out


def explain(cfg: ExplainConfig, on_event: Callable[[Step], None] | None = None) -> list[Explanation]:
    """Fig. 7 for each image of `cfg.paths` under `cfg.model` and each `cfg.compare` run, in the order
    given. An unreadable file gets an `Explanation` with `error` set; the others are still explained."""
    from lbfood.engine.runtime import make_runtime

    metas = _check(cfg)
    size = int(metas[0].input_size)
    names = run_labels([str(m.run_dir) for m in metas])
    errors: dict[str, str] = {}
    images: dict[str, np.ndarray] = {}
    entries = expand_paths(cfg.paths)
    for f, err in entries:
        if err is not None:
            errors[f] = err
            continue
        try:
            images[f] = eval_transform(decode(f), size)
        except DataError as e:
            errors[f] = str(e).removeprefix(f"{f}: ")
    files = list(images)
    rt = make_runtime(cfg.device, cfg.precision, training=False)
    per_file: dict[str, list[RunMap]] = {f: [] for f in files}
    for name, meta in zip(names, metas, strict=True):
        run_dir = meta.run_dir
        if not files:
            break
        if on_event is not None:
            on_event(Step(f"explaining {len(files)} image(s) with {name}"))
        rows: list[Row] = score_images(ScoreConfig(
            paths=tuple(files), model=str(run_dir), method=cfg.method, threshold=cfg.threshold,
            params=cfg.params, batch_size=cfg.batch_size, data_root=cfg.data_root, device=cfg.device,
            precision=cfg.precision, far_gate=cfg.far_gate), on_event=on_event)
        model, meta = runs.load_run(run_dir, rt.device)
        classes = list(meta.classes)
        delta = run_delta(meta)
        label = classes.index(cfg.label) if cfg.label is not None else None
        for f, r in zip(files, rows, strict=True):
            if r.error is not None:  # changed since it was decoded above
                errors[f] = r.error
        scored = [(f, r) for f, r in zip(files, rows, strict=True) if r.error is None]
        for start in range(0, len(scored), cfg.batch_size):
            chunk = [f for f, _ in scored[start:start + cfg.batch_size]]
            batch_rows = [r for _, r in scored[start:start + cfg.batch_size]]
            pred = [classes.index(r.predicted) for r in batch_rows]
            maps = _maps(model, meta, [images[f] for f in chunk], pred, label, delta, rt.device)
            for f, r, (norms, heat, mask, lmask) in zip(chunk, batch_rows, maps, strict=True):
                per_file[f].append(RunMap(run=name, delta=delta, norms=norms, heat=heat, mask=mask,
                                          label_mask=lmask, predicted=r.predicted, confidence=r.confidence,
                                          score=r.score, verdict=r.verdict, threshold=r.threshold,
                                          method=r.method, reason=r.reason))
        del model
    return [Explanation(f, None, error=errors[f]) if f in errors else
            Explanation(f, images[f], tuple(per_file[f]), label=cfg.label) for f, _ in entries]
