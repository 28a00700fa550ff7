"""`lbfood sweep`: does LFF help on this data, and with which δ, μ, λ and scorer? (selection on held-out
validation data only; test sets shown after it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import (
    OBJECTIVE_HELP,
    SCORER_NAMES,
    DataRoot,
    Device,
    Limit,
    Precision,
    Quiet,
    Seed,
    Workers,
    split_names,
)
from lbfood.commands.options import milestones as parse_milestones


def sweep(
    from_run: Annotated[Path, typer.Option("--from", help="Parent run every trial fine-tunes.")] = Path("runs/latest"),
    out: Annotated[Path, typer.Option(help="Sweep folder: study.db, trials/, sweep.json, sweep.md, "
                                           "sensitivity.png, best.")] = Path("sweeps/sweep"),
    mode: Annotated[str, typer.Option(help="paper (one factor at a time around the first values, Fig. 6), grid "
                                           "(every combination) or search (Optuna TPE, --trials).")] = "grid",
    objective: Annotated[str, typer.Option(help=f"Fine-tuning objectives, comma-separated: {OBJECTIVE_HELP}.")] = "lff",
    delta: Annotated[str, typer.Option(help="δ values (Eq. 5), comma-separated; 'preset' = the dataset's.")] = "preset",
    mu: Annotated[str, typer.Option(help="μ values (Eq. 6): numbers, auto, or qX (the X quantile of the parent's "
                                         "background norms); relX for lff-rel.")] = "auto",
    lam: Annotated[str, typer.Option("--lambda", help="λ values (Eq. 7); the λ = 0 control is always added.")] = "1",
    mask_from: Annotated[str, typer.Option(help="current and/or pretrained.")] = "current",
    trials: Annotated[int, typer.Option(help="--mode search: trials besides the control.")] = 8,
    method: Annotated[str, typer.Option(help=f"Scorers validated per trial (the best counts): {SCORER_NAMES}.")] = "react",
    select_by: Annotated[str, typer.Option(help="Validation OOD metric the selection maximises: auroc or fpr95 "
                                                "(lower is better).")] = "auroc",
    max_acc_drop: Annotated[float, typer.Option(help="ID validation accuracy points a trial may lose "
                                                     "against the control.")] = 1.0,
    min_gain: Annotated[float, typer.Option(help="Objective points by which a trial must beat the control to be "
                                                 "selected: the lower end of the 95 % paired-bootstrap interval "
                                                 "of its gain (over the held-out images) must exceed it; 0: any "
                                                 "gain beyond noise.")] = 0.0,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out for validation.")] = 0.1,
    val_ood: Annotated[str | None, typer.Option(help="Validation OOD set (DATASET or folder:PATH), never a test set.",
                                                show_default="pseudo-OOD from the held-out ID images")] = None,
    pseudo: Annotated[str, typer.Option(help="Pseudo-OOD generators.")] = "jigsaw,uniform,gaussian,blur",
    ood: Annotated[list[str] | None, typer.Option(help="Test OOD set (repeatable), evaluated after the selection.",
                                                  show_default="the ID set's benchmark")] = None,
    benchmark: Annotated[str | None, typer.Option(help="Test benchmark, evaluated after the selection.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL shared by workers: sqlite:///PATH (one "
                                                     "machine) or postgresql://USER:PASSWORD@HOST:PORT/DB "
                                                     "(several; pip install 'lbfood[postgres]').",
                                                show_default="sqlite:///OUT/study.db")] = None,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a worker's heartbeats; a trial silent for 4 is "
                                                "failed and re-queued for another worker.")] = 30,
    prune: Annotated[bool, typer.Option("--prune", help="Stop a trial whose epoch val accuracy falls more "
                                                        "than --max-acc-drop below the control's.")] = False,
    per_gpu: Annotated[int, typer.Option(help="Trials sharing one GPU (with --devices).")] = 1,
    worker: Annotated[bool, typer.Option("--worker", help="Only work on trials (no selection); for extra "
                                                          "workers on the same --storage.")] = False,
    epochs: Annotated[int | None, typer.Option(help="[default: the dataset's fine-tuning preset]")] = None,
    lr: Annotated[float | None, typer.Option(help="[default: preset]")] = None,
    milestones: Annotated[str | None, typer.Option(help="[default: preset]")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 128,
    weight_decay: Annotated[float | None, typer.Option(help="[default: 1e-4]")] = None,
    probe_batches: Annotated[int, typer.Option(help="ID training batches measured before the first step.")] = 4,
    data_root: DataRoot = None,
    limit: Limit = None,
    devices: Annotated[int, typer.Option(help="Worker processes, one per CUDA GPU (trials in parallel).")] = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: Seed = 0,
    workers: Workers = 4,
    quiet: Quiet = False,
) -> None:
    """Does LFF (or another background objective) help on this data? Fine-tune over the objectives, δ, μ, λ (and
    the λ = 0 control), select on held-out validation data only, then show every trial on the test OOD sets."""
    import sys

    from lbfood.engine.config import FinetuneConfig
    from lbfood.engine.errors import LbfoodError
    from lbfood.engine.sweep import parallel, results, space, study
    from lbfood.output import render, render_sweep, sweep_files

    given = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, data_root=str(data_root) if data_root else None,
                 milestones=parse_milestones(milestones) if milestones is not None else None)
    recipe = FinetuneConfig(parent=str(from_run), batch_size=batch_size, probe_batches=probe_batches,
                            limit=limit, device=device, precision=precision, seed=seed, workers=workers,
                            **given)  # None: the dataset's preset, filled by resolve()
    sc = space.SweepConfig(
        recipe=recipe, out=str(out),
        mode=mode, objectives=space.parse_values("objective", objective), delta=space.parse_values("delta", delta), mu=space.parse_values("mu", mu),
        lam=space.parse_values("lam", lam), mask_from=space.parse_values("mask_from", mask_from),
        trials=trials, methods=split_names([method]), objective=select_by, max_acc_drop=max_acc_drop,
        min_gain=min_gain,
        holdout=holdout, val_ood=val_ood, pseudo=split_names([pseudo]), storage=storage, heartbeat_s=heartbeat, prune=prune,
        ood=tuple(ood or ()), benchmark=benchmark)
    parallel.check(devices, per_gpu)
    on_event = render_sweep.progress(quiet)
    fresh = not out.exists()
    try:
        if devices * per_gpu > 1 and not worker:
            study.open_study(sc)  # check the options once, before the workers start
            parallel.spawn(sys.argv[1:], devices, per_gpu, device)
        else:
            study.work(sc, on_event)
    except LbfoodError:
        if fresh:  # refused before any trial finished: leave nothing half-made
            study.discard_unstarted(sc)
        raise
    except KeyboardInterrupt:
        raise typer.Exit(_interrupted(out)) from None
    if worker:
        render.console.print(f"worker done: no trial of {out} left to take")
        return
    try:
        doc = results.finalize(sc, on_event)
    except KeyboardInterrupt:
        raise typer.Exit(_interrupted(out)) from None
    sweep_files.write(doc, out)
    render_sweep.table(doc)
    render.console.print(f"→ {out}/sweep.json, sweep.md, sensitivity.png; {out}/best is the selected run")


def _interrupted(out: Path) -> int:
    """Ctrl-C: say that the same command continues the sweep (finished trials are kept); exit code 130."""
    from lbfood.output import render

    render.error(f"interrupted; run the same command again to continue the sweep in {out} (finished trials are "
                 "kept, the interrupted one starts over)")
    return 130
