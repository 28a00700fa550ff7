"""`lbfood export`: a run's model, a fitted scorer and its threshold γ, and `lbfood score`'s far-OOD gate
with its γ_far, as one deployable file.

The scorer and γ come from `calibrate.fitted_scorer_and_threshold`, the gate from `calibrate.fitted_gate`,
the functions `lbfood score` uses, so the file decides as `lbfood score` does on the same (already
resized) images; `far_gate=False` (`--no-far-gate`) exports the paper's verdict alone, as `score
--no-far-gate` gives it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbfood import __version__
from lbfood.engine import outputs
from lbfood.engine.config import ExportConfig
from lbfood.engine.errors import ConfigError

if TYPE_CHECKING:
    from lbfood.engine.runs import RunMeta

FORMAT = "lbfood-detector-1"
# How far an ONNX file's score may be from `lbfood score`'s on the same image: |ONNX - score| <=
# ABS + REL * |score|. Relative, because a float32 network is a few 1e-6 off in its features and large
# scores (Mahalanobis' squared distances, ASH's rescaled energy) amplify that in proportion to their size.
ONNX_AGREEMENT = (1e-4, 4e-6)  # (ABS, REL); tests/engine/test_export.py holds every method to it
REFUSED = {"odin": "odin perturbs each input along its gradient, which an exported inference graph "
                   "cannot compute; export another method (e.g. react or energy)"}


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the file, its size, the threshold baked in and the metadata recorded."""

    path: str
    format: str
    method: str
    threshold: float
    bytes: int
    metadata: dict[str, str]
    notes: tuple[str, ...] = ()  # what the user should know (e.g. the run is unfinished, a gate fitted now)
    far_threshold: float | None = None  # γ_far of the far-OOD gate baked in (None: --no-far-gate)


def exportable() -> list[str]:
    """Scorer names that can be exported (every registered one but those in REFUSED)."""
    from lbfood.engine.evaluation import scorers
    from lbfood.engine.export.detector import BUILDERS

    return [n for n in scorers.names() if n in BUILDERS]


def check(cfg: ExportConfig) -> None:
    """Raise ConfigError for anything wrong with `cfg` that needs no run: before any work."""
    from lbfood.engine.evaluation import scorers
    from lbfood.engine.export.detector import LAYOUTS
    from lbfood.engine.export.writer import FORMATS, is_detector

    cfg.check()
    if cfg.method in REFUSED:
        raise ConfigError(f"cannot export {cfg.method}: {REFUSED[cfg.method]}")
    if cfg.method not in exportable():
        raise ConfigError(f"unknown method {cfg.method!r}; valid for export: {', '.join(exportable())}")
    if cfg.format not in FORMATS:
        raise ConfigError(f"unknown --format {cfg.format!r}; valid: {', '.join(FORMATS)}")
    if cfg.format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ConfigError("--format onnx needs the onnx package: pip install 'lbfood[export]' "
                              "(or export with --format torchscript)") from None
    if cfg.out:
        out = Path(cfg.out).expanduser().absolute()
        other = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript"}.get(out.suffix.lower())
        if other is not None and other != cfg.format:
            shown = {"onnx": "an ONNX", "torchscript": "a TorchScript"}
            raise ConfigError(f"--out {cfg.out} names {shown[other]} file but --format {cfg.format} writes "
                              f"{shown[cfg.format][2:].lstrip()}; name it {out.stem}{FORMATS[cfg.format]} or pass "
                              f"--format {other}")
        # a run folder, a link, a folder, a device, a path under a file, a file lbfood did not export: refused
        # before the scorer is fitted
        outputs.check_file(cfg.out, "--out", ours=is_detector, what="the detector")
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"unknown --layout {cfg.layout!r}; valid: {', '.join(LAYOUTS)}")
    scorers.get(cfg.method, **cfg.params)  # unknown or out-of-range parameters raise


def check_bank(s: Any, max_mb: float) -> None:
    """KNN carries its training bank in the file: refuse one over `max_mb` MiB, saying how to shrink it."""
    if "bank" not in s.state:
        return
    n, d = s.state["bank"].shape
    mb = n * d * 4 / 2**20
    if mb > max_mb:
        keep = s.params["fraction"] * max_mb / mb
        raise ConfigError(f"knn: the feature bank is {mb:.3g} MiB ({n} × {d} float32), over --max-bank-mb "
                          f"{max_mb:g}; raise --max-bank-mb or keep fewer features with "
                          f"--param fraction={math.floor(keep * 1000) / 1000:g}")


def metadata(meta: RunMeta, s: Any, threshold: float, source: str, layout: str, gate: Any = None,
             far_threshold: float | None = None) -> dict[str, str]:
    """What the file records, as strings: classes, mean, std and params are JSON, the rest plain text."""
    from lbfood.engine.data.images import IMAGE_EXTENSIONS

    size = int(meta.input_size)
    shape = f"(batch, 3, {size}, {size})" if layout == "NCHW" else f"(batch, {size}, {size}, 3)"
    rule = "higher = more in-distribution; is_id = score >= threshold"
    if gate is not None:
        rule += " and far_score >= far_threshold (the far-OOD gate)"
    return {
        "format": FORMAT,
        "lbfood_version": __version__,
        "method": s.name,
        "params": json.dumps(s.params, sort_keys=True, default=list),
        "threshold": repr(float(threshold)),
        "threshold_source": source,
        "score": rule,
        "far_gate": gate.name if gate is not None else "",
        "far_params": json.dumps(gate.params, sort_keys=True, default=list) if gate is not None else "",
        "far_threshold": repr(float(far_threshold)) if gate is not None else "",
        "classes": json.dumps(list(meta.classes)),
        "input": f"images: uint8 {layout} {shape}, RGB, resized and centre-cropped to {size} px",
        "input_size": str(size),
        "layout": layout,
        "mean": json.dumps([float(v) for v in meta.mean]),
        "std": json.dumps([float(v) for v in meta.std]),
        "arch": meta.arch,
        "width": repr(float(meta.width)),
        "data": meta.data,
        "run": str(meta.run_dir),
        "parent_run": meta.parent or "",
        "image_extensions": json.dumps(list(IMAGE_EXTENSIONS)),  # the files `lbfood score` reads in a folder
    }


def build_detector(cfg: ExportConfig, on_event: Callable[[Any], None] | None = None, *,
                   channels_last: bool | None = None, notes: list[str] | None = None) -> tuple[Any, RunMeta, Any, float]:
    """The detector `export` writes (CPU, fp32, eval mode), its run's metadata, the fitted scorer and γ:
    the scorer is fitted (or loaded), γ resolved and the far-OOD gate loaded (or fitted) as `lbfood score`
    does. TorchScript runs channels-last (as `lbfood score` does on the CPU) unless `channels_last` says
    otherwise. The detector's `gate` and `far_threshold` are the gate's (None with `cfg.far_gate` False)."""
    import torch

    from lbfood.engine import runs
    from lbfood.engine.evaluation.calibrate import fitted_gate, fitted_scorer_and_threshold
    from lbfood.engine.export import detector
    from lbfood.engine.runtime import make_runtime

    check(cfg)
    rt = make_runtime(cfg.device, cfg.precision, training=False)
    model, meta = runs.load_run(cfg.model, rt.device)
    s, threshold = fitted_scorer_and_threshold(
        rt.prepare(model), meta, rt, cfg.method, cfg.params, threshold=cfg.threshold, root=cfg.data_root,
        batch_size=cfg.batch_size, on_event=on_event, notes=notes,
        vet=lambda fitted: check_bank(fitted, cfg.max_bank_mb))  # before the fit is stored in the run
    check_bank(s, cfg.max_bank_mb)  # a fit stored earlier (by `score` or `report`)
    gate, far_threshold = None, None
    if cfg.far_gate:
        gate, far_threshold = fitted_gate(rt.prepare(model), meta, rt, root=cfg.data_root, batch_size=cfg.batch_size,
                                          on_event=on_event, notes=notes)
    model = model.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()  # what is traced
    det = detector.build(model, s, size=int(meta.input_size), mean=meta.mean, std=meta.std, threshold=threshold,
                         layout=cfg.layout, gate=gate, far_threshold=far_threshold,
                         channels_last=cfg.format == "torchscript" if channels_last is None else channels_last)
    det.far_gate_scorer = gate
    return det, meta, s, threshold


def export(cfg: ExportConfig, on_event: Callable[[Any], None] | None = None) -> ExportResult:
    """Fit (or load) the scorer, resolve γ as `lbfood score` does, and write the detector file."""
    import torch

    from lbfood.engine.export import writer

    notes: list[str] = []
    det, meta, s, threshold = build_detector(cfg, on_event, notes=notes)
    source = "--threshold" if cfg.threshold is not None else "run"
    size = int(meta.input_size)
    shape = (2, 3, size, size) if cfg.layout == "NCHW" else (2, size, size, 3)
    example = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = Path(cfg.out) if cfg.out else Path(f"{meta.run_dir.name}-{s.name}{writer.FORMATS[cfg.format]}")
    far = det.far_threshold.item() if det.gate is not None else None
    md = metadata(meta, s, threshold, source, cfg.layout, det.far_gate_scorer, far)
    n = writer.write(det, example, out, cfg.format, md)
    from lbfood.engine import runs

    if unfinished := runs.unfinished(meta):  # a killed or still-training run exports its last epoch's weights
        notes.append(unfinished)
    return ExportResult(path=str(out), format=cfg.format, method=s.name, threshold=threshold, bytes=n, metadata=md,
                        notes=tuple(notes), far_threshold=far)


def exact_scores(cfg: ExportConfig, images: Any, output: str = "score") -> Any:
    """The scores (`output`: "score", or "far_score" of the far-OOD gate) the file exported with `cfg` would
    give `images` (a uint8 numpy array in `cfg.layout`) if every step ran in float64: exact arithmetic, to
    measure float32 runtimes against."""
    import torch

    det, _, _, _ = build_detector(cfg, channels_last=False)
    with torch.no_grad():
        return det.double()(torch.from_numpy(images))[det.outputs.index(output)].numpy()
