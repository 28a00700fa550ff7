"""`lbfood import`: an existing classifier (torchvision or timm + its weights) as a parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import DATA_HELP, DataRoot, Device, Download, Limit, Quiet, Seed, Workers


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    from lbfood.engine.errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes three comma-separated numbers (R,G,B), got {text!r}") from None


def import_(
    model: Annotated[str, typer.Argument(help="torchvision:NAME[:WEIGHTS] (e.g. torchvision:resnet50:IMAGENET1K_V2) "
                                              "or timm:NAME (e.g. timm:resnet50.a1_in1k, timm:convnext_tiny).")],
    data: Annotated[str, typer.Option(help=DATA_HELP + " Its classes, in order, are the head's rows.")],
    weights: Annotated[Path | None, typer.Option(help="A local state dict (.safetensors, or a torch.save file "
                                                      "read with weights_only).",
                                                 show_default="the library's pretrained weights, from its cache")] = None,
    new_head: Annotated[bool, typer.Option("--new-head", help="Replace the classifier by a fresh linear head for "
                                                              "the data's classes (a backbone to fine-tune).")] = False,
    input_size: Annotated[int | None, typer.Option(help="Input side in pixels.",
                                                   show_default="the weights' own (timm/torchvision metadata)")] = None,
    mean: Annotated[str | None, typer.Option(help="Normalisation mean R,G,B.", show_default="the weights' own")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std R,G,B.", show_default="the weights' own")] = None,
    val_split: Annotated[float, typer.Option(help="imagefolder with no train/test folders: share held out for test.")] = 0.0,
    out: Annotated[Path | None, typer.Option(help="Run folder.",
                                             show_default="runs/<time>-<data>-<model>-imported")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size of the accuracy check.")] = 64,
    data_root: DataRoot = None,
    download: Download = False,
    limit: Limit = None,
    device: Device = "auto",
    seed: Seed = 0,
    workers: Workers = 4,
    quiet: Quiet = False,
) -> None:
    """Make an existing classifier an lbfood run (kind `imported`): its accuracy on the data's test split is
    checked first; then `finetune --from`, `report`, `score`, `explain`, `export` use it like a pretrained run."""
    from lbfood.engine import imported
    from lbfood.engine.config import ImportConfig
    from lbfood.output import render

    cfg = ImportConfig(source=model, weights=str(weights) if weights else None, data=data,
                       data_root=str(data_root) if data_root else None, val_split=val_split, new_head=new_head,
                       input_size=input_size, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                       batch_size=batch_size, device=device, seed=seed, out=str(out) if out else None,
                       workers=workers, limit=limit, download=download)
    imp = imported.prepare(cfg)
    render.training(iter(imp.notes), quiet=quiet)
    render.training(imported.write(imp), quiet=quiet)
    render.console.print(f"[green]done[/]: {imp.meta.arch} → {imp.run_dir} (test accuracy "
                         f"{imp.meta.metrics['test_acc']:.2%}); next: lbfood finetune --from {imp.run_dir}")
