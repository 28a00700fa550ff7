"""`lbfood export`: a run's classifier, OOD score and threshold as one deployable ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import DataRoot, Device, EvalPrecision, Params
from lbfood.commands.options import params as parse_params
from lbfood.engine.catalog import SCORERS

# From the scorer registry (no torch); a test checks it matches `export.exportable()`.
EXPORT_NAMES = ", ".join(n for n in SCORERS.names() if n not in ("odin",))


def export(
    model: Annotated[str, typer.Option("--model", help="Run folder to export.")] = "runs/latest",
    method: Annotated[str, typer.Option(help=f"Scorer baked into the file: {EXPORT_NAMES} "
                                             "(not odin: it needs input gradients).")] = "react",
    format: Annotated[str, typer.Option(help="onnx or torchscript.")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="File to write.", show_default="<run name>-<method>.onnx (.pt)")] = None,
    layout: Annotated[str, typer.Option(help="Input images: uint8 NCHW or NHWC at the run's input size.")] = "NCHW",
    threshold: Annotated[float | None, typer.Option(
        help="γ baked in: is_id = score ≥ γ (paper Eq. 3).",
        show_default="the run's threshold for --method, as `lbfood score` uses it")] = None,
    no_far_gate: Annotated[bool, typer.Option(
        "--no-far-gate", help="Leave out `lbfood score`'s far-OOD gate: is_id = score ≥ γ alone, as "
                              "`lbfood score --no-far-gate`.")] = False,
    param: Params = None,
    max_bank_mb: Annotated[float, typer.Option(help="knn: refuse a training-feature bank larger than this (MiB).")] = 256.0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass when fitting or calibrating.")] = 64,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: EvalPrecision = "auto",
) -> None:
    """Write a run's classifier, OOD score and threshold as one ONNX or TorchScript file (see README)."""
    import json

    from lbfood.engine.export import ExportConfig
    from lbfood.engine.export import export as run_export
    from lbfood.output import render, render_eval

    cfg = ExportConfig(model=model, method=method, format=format, out=str(out) if out else None, layout=layout,
                       threshold=threshold, params=parse_params(param, (method,)).get(method, {}),
                       max_bank_mb=max_bank_mb, batch_size=batch_size,
                       data_root=str(data_root) if data_root else None, device=device, precision=precision,
                       far_gate=not no_far_gate)
    with render_eval.progress() as on_event:  # fitting and calibrating, when the run has no stored ones
        res = run_export(cfg, on_event=on_event)
    md = res.metadata
    render.kv_table(f"lbfood export → {res.path}", [
        ("format", f"{res.format}, {res.bytes / 2**20:.2f} MiB"),
        ("input", md["input"]),
        ("outputs", f"logits (batch, {len(json.loads(md['classes']))}) float32, score (batch,) float32, "
                    "is_id (batch,) bool" + (", far_score (batch,) float32" if md["far_gate"] else "")),
        ("method", f"{md['method']} {md['params']}"),
        ("threshold", f"{res.threshold:.6g} ({md['threshold_source']})"),
        ("far-OOD gate", f"far_score ≥ {res.far_threshold:.6g} also needed for is_id (Mahalanobis, "
                         f"{md['far_params']})" if md["far_gate"] else "none (--no-far-gate)"),
    ])
    render_eval.notes(list(res.notes))
