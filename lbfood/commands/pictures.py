"""`lbfood explain`: the paper's Fig. 7 for the user's images (heat maps of ‖z_j‖, background outlined)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import SCORER_NAMES, DataRoot, Device, EvalPrecision, Params, RunOpt
from lbfood.commands.options import params as parse_params


def explain(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    out: Annotated[Path, typer.Option(help="Folder for one PNG per image and index.html.")],
    model: RunOpt = "runs/latest",
    compare: Annotated[list[str] | None, typer.Option(
        help="Another run drawn beside --model (repeatable), e.g. its pretrained parent.")] = None,
    label: Annotated[str | None, typer.Option(
        help="A class name: also outline the locations that are background for this class (Eq. 5).")] = None,
    method: Annotated[str, typer.Option(help=f"Scorer for the score and verdict: {SCORER_NAMES}.")] = "react",
    threshold: Annotated[float | None, typer.Option(
        help="γ: score ≥ γ ⇒ ID (paper Eq. 3).", show_default="each run's calibrated threshold")] = None,
    param: Params = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: EvalPrecision = "auto",
) -> None:
    """Heat maps of the feature norm ‖z_j‖ over each image, background locations outlined (paper Fig. 7),
    runs side by side. Exit code 1 if any file could not be read."""
    from lbfood.engine.evaluation import explain as ex
    from lbfood.output import plots as pictures
    from lbfood.output import render, render_eval

    pictures.check_out_dir(out)  # refused before any work
    cfg = ex.ExplainConfig(paths=tuple(paths), model=model, compare=tuple(compare or ()), label=label,
                           method=method, threshold=threshold,
                           params=parse_params(param, (method,)).get(method, {}), batch_size=batch_size,
                           data_root=str(data_root) if data_root else None, device=device, precision=precision)
    with render_eval.progress() as on_event:
        drawn, failed = pictures.write_explanations(ex.explain(cfg, on_event=on_event), out)
    for line in failed:
        render.warn(line)
    render_eval.pictures_line(drawn, out)
    if failed:
        raise typer.Exit(1)
