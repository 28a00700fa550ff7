"""Training commands: `lbfood pretrain`, `lbfood finetune` and `lbfood demo`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from lbfood.commands.options import (
    ARCH_NAMES,
    DATA_HELP,
    OBJECTIVE_HELP,
    DataRoot,
    Device,
    Download,
    Quiet,
    Seed,
    config_fields,
    join,
    launch,
    rank,
    training_options,
)
from lbfood.commands.options import (
    milestones as parse_milestones,
)
from lbfood.engine.config import CHANCE_MIN_STEPS

INIT_HELP = ("Start from these weights: a state dict FILE (.safetensors, or torch.save read with weights_only), "
             "torchvision:NAME[:WEIGHTS] or timm:NAME (the library's cache; offline, the error names the file "
             "to place there); a head with another class count is left fresh.")


@training_options
def pretrain(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "backdrops",
    data_root: DataRoot = None,
    arch: Annotated[str, typer.Option(help=f"Architecture: {ARCH_NAMES}.")] = "resnet18",
    width: Annotated[float, typer.Option(help="Channel-width multiplier (e.g. 0.25 for CPU experiments).")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD).")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (on BN weights/biases too with --wd-on-bn).")] = 5e-4,
    wd_on_bn: Annotated[bool, typer.Option("--wd-on-bn/--no-wd-on-bn",
                                           help="Weight decay on BN weights and biases too.")] = False,
    schedule: Annotated[str, typer.Option(help="cosine (per step) or multistep (see --milestones).")] = "cosine",
    milestones: Annotated[str, typer.Option(help="multistep: comma-separated epochs where lr ×= gamma.")] = "",
    gamma: Annotated[float, typer.Option(help="multistep decay factor.")] = 0.1,
    warmup_epochs: Annotated[int | None, typer.Option(help="Linear warm-up epochs. [default: 5 for 224-px "
                                                          "architectures (resnet50_imagenet), else 0]")] = None,
    stop_at_chance: Annotated[bool, typer.Option("--stop-at-chance/--no-stop-at-chance", help=(
        "Stop when test accuracy (validation with --holdout) is still at chance (< 1.5/K) after max(3, 20 % of "
        f"--epochs) epochs and at least {CHANCE_MIN_STEPS} optimizer steps; --no-stop-at-chance warns and trains on."))] = True,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing for CE.")] = 0.0,
    jitter: Annotated[float, typer.Option(help="Colour-jitter strength (brightness, contrast, saturation); 0 = off.")] = 0.4,
    val_split: Annotated[float, typer.Option(help="imagefolder with no train/test folders: share held out for test.")] = 0.0,
    classes: Annotated[Path | None, typer.Option(help="imagenet100: class list file (one wnid per line).")] = None,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out, never trained on (the "
                                                "validation split of `sweep` and --method auto); 0 = none.")] = 0.0,
    init: Annotated[str | None, typer.Option(help=INIT_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [default: runs/<time>-<data>-<arch>].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --out (or the newest run in runs/) from its last epoch.")] = False,
    download: Download = False,
    **run,  # the options every training command shares: options.training_options
) -> None:
    """Pretrain a classifier with cross-entropy (paper §III-A) and write a run folder."""
    from lbfood.engine import distributed, pipeline
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.training.setup import prepare_pretrain
    from lbfood.output import render

    cfg = TrainConfig(data=data, data_root=str(data_root) if data_root else None, arch=arch, width=width,
                      epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                      weight_decay=weight_decay, wd_on_bn=wd_on_bn, schedule=schedule, milestones=parse_milestones(milestones),
                      gamma=gamma, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, jitter=jitter,
                      val_split=val_split, classes_file=str(classes) if classes else None,
                      init=init, out=str(out) if out else None, download=download, holdout=holdout,
                      stop_at_chance=stop_at_chance, **config_fields(run))
    if launch(run["devices"], run["device"], "pretrain"):
        return
    dist = join(run["device"])
    if resume:
        cfg = resume_settings(ctx, cfg, also=("arch", "width"))
    with distributed.lost_peer(dist):
        session = prepare_pretrain(cfg, resume=resume, dist=dist)
        if resume:  # once the run is known to resume: an error is then the only line
            ignored_on_resume(ctx, keep={"arch", "width"})
        _finish(render.training(pipeline.train(session), quiet=run["quiet"]))
    distributed.destroy()


RUN_FLAGS = {"resume", "quiet", "devices"}  # how a command runs, not what it trains


def ignored_on_resume(ctx: typer.Context, keep: set[str] = frozenset()) -> None:
    """`--resume` continues a run with the settings it recorded: warn (one line) about every flag the user
    typed that it therefore ignores (all but RESUME_CHANGES, --out and `keep`)."""
    from lbfood.engine.config import RESUME_CHANGES
    from lbfood.output import render

    typed = ("COMMANDLINE", "ENVIRONMENT")  # ParameterSource names (not DEFAULT): what the user gave
    changes = set(RESUME_CHANGES) | {"out"} | set(keep)
    given = [p for p in ctx.command.params if p.name not in changes | RUN_FLAGS
             and getattr(ctx.get_parameter_source(p.name), "name", None) in typed]
    if given and rank() == 0:
        flags = ", ".join(max(p.opts, key=len) for p in given)
        names = [f"--{k}" for k in RESUME_CHANGES]
        may = ", ".join(names[:-1]) + " and " + names[-1]
        render.warn(f"--resume continues the run with the settings in its run.json; ignored: {flags} "
                    f"(only {may} change on resume)")


def resume_settings(ctx: typer.Context, cfg, also: tuple[str, ...] = ()):
    """On --resume, every setting it may change (`RESUME_CHANGES`, plus `also`) that the user did not type
    keeps the run's recorded value (a CLI default must not replace it: a finished 1-epoch run stays 1 epoch)."""
    from lbfood.engine import runs
    from lbfood.engine.config import RESUME_CHANGES

    old = runs.read(runs.resume_target(cfg.out))
    keep = [k for k in RESUME_CHANGES + also if k in old.config or k in ("arch", "width")]
    untyped = [k for k in keep if getattr(ctx.get_parameter_source(k), "name", None) != "COMMANDLINE"]
    recorded = {"arch": old.arch, "width": float(old.width), **old.config}
    return cfg.replace(**{k: recorded[k] for k in untyped})


def _finish(last) -> None:
    """Summarise the final event; an interrupted run exits 130 after saying how to resume it."""
    from lbfood.engine.events import Interrupted
    from lbfood.output import render

    if isinstance(last, Interrupted):
        if rank() != 0:  # rank 0 says it
            raise typer.Exit(130)
        if last.run_dir is None:
            render.warn("interrupted before the first epoch finished: nothing was kept")
        else:
            render.warn(f"interrupted after {last.epochs_done} epoch(s); continue with --resume --out {last.run_dir}")
        raise typer.Exit(130)
    if last is not None:
        m = last.metrics
        render.console.print(f"[green]done[/] in {last.seconds:.0f} s: {'val' if 'val_acc' in m else 'test'} accuracy "
                             f"{m.get('test_acc', m.get('val_acc', 0)):.2%} "
                             f"→ {last.run_dir}")


@training_options
def finetune(
    ctx: typer.Context,
    from_run: Annotated[Path, typer.Option("--from", help="Parent run to fine-tune.")] = Path("runs/latest"),
    objective: Annotated[str, typer.Option(help=f"The term added to CE: {OBJECTIVE_HELP}.")] = "lff",
    delta: Annotated[float | None, typer.Option(help="δ (Eq. 5): a location is background when p_j(true class) < δ. "
                                                     "[default: preset: CIFAR-10 0.1, CIFAR-100/ImageNet-100 0.01, else 1/K]")] = None,
    mu: Annotated[str | None, typer.Option(help="μ (Eq. 6): norm margin, a number or 'auto' (the --mu-quantile "
                                                "quantile of the parent's background norms); lff-rel: relX = X × "
                                                "the image's mean foreground norm. [default: preset: CIFAR-10 1, "
                                                "CIFAR-100 2, ImageNet-100 3, else auto; lff-rel rel0.5]")] = None,
    lam: Annotated[float | None, typer.Option("--lambda", help="λ (Eq. 7): weight of the objective's term; 0 = "
                                                               "CE-only control. [default: 1; bg-energy 0.1]")] = None,
    m_in: Annotated[str, typer.Option(help="bg-energy: ID free-energy margin, a number or auto (the median of "
                                           "the parent's ID image energies).")] = "auto",
    m_out: Annotated[str, typer.Option(help="bg-energy: background free-energy margin, a number or auto (the "
                                            "median of the parent's background-location energies).")] = "auto",
    mask_from: Annotated[str, typer.Option(help="Which model picks background locations: current (the model being "
                                                "fine-tuned) or pretrained (a frozen copy of the parent).")] = "current",
    mu_quantile: Annotated[float, typer.Option(help="--mu auto: quantile of the parent's background norms.")] = 0.5,
    epochs: Annotated[int | None, typer.Option(help="[default: preset: CIFAR 30, ImageNet-100 10, backdrops 4]")] = None,
    lr: Annotated[float | None, typer.Option(help="[default: preset: CIFAR 0.1, ImageNet-100 5e-5, backdrops 0.01]")] = None,
    milestones: Annotated[str | None, typer.Option(help="Epochs where lr ÷= 10. [default: preset: CIFAR 15, "
                                                        "ImageNet-100 5, backdrops 2]")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 128,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum. [default: 0.9]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay. [default: 1e-4]")] = None,
    wd_on_bn: Annotated[bool | None, typer.Option(
        "--wd-on-bn/--no-wd-on-bn", help="Weight decay on BN weights and biases too. [default: on, as the paper "
                                        "states it; --no-wd-on-bn skips them like pretraining]")] = None,
    jitter: Annotated[float | None, typer.Option(help="Colour jitter; the paper drops it when fine-tuning. [default: 0]")] = None,
    data: Annotated[str | None, typer.Option(help="ID dataset [default: the parent run's].")] = None,
    data_root: DataRoot = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [default: runs/<time>-<data>-<arch>-lff (or -ce)].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --out (or the newest run) from its last epoch.")] = False,
    probe_batches: Annotated[int, typer.Option(help="ID training batches measured before the first step.")] = 4,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out (validation, and the "
                                                "scorer of --method auto); 0 = none.")] = 0.0,
    init: Annotated[str | None, typer.Option(help=INIT_HELP + " Instead of the parent's weights (its architecture, "
                                                              "classes and data stay).")] = None,
    **run,  # the options every training command shares: options.training_options
) -> None:
    """Fine-tune a run with CE + λ·L_LFF (paper Eq. 7), or another background --objective, and write a new run."""
    from lbfood.engine import distributed, pipeline
    from lbfood.engine.config import FinetuneConfig
    from lbfood.engine.training import finetune as ft
    from lbfood.output import render

    given = dict(delta=delta, mu=ft.parse_mu(mu), lam=lam, epochs=epochs, lr=lr, objective=objective,
                 m_in=ft.parse_margin("--m-in", m_in), m_out=ft.parse_margin("--m-out", m_out),
                 milestones=parse_milestones(milestones) if milestones is not None else None, momentum=momentum,
                 weight_decay=weight_decay, wd_on_bn=wd_on_bn, jitter=jitter, data=data,
                 data_root=str(data_root) if data_root else None)
    cfg = FinetuneConfig(parent=str(from_run), mask_from=mask_from, mu_quantile=mu_quantile,
                         batch_size=batch_size, out=str(out) if out else None, probe_batches=probe_batches,
                         holdout=holdout, init=init, **config_fields(run),
                         **given)  # None: the preset or the parent fills it
    if launch(run["devices"], run["device"], "finetune"):
        return
    dist = join(run["device"])
    if resume:
        cfg = resume_settings(ctx, cfg)
    with distributed.lost_peer(dist):
        session = ft.prepare_finetune(cfg, resume=resume, dist=dist)
        if resume:
            ignored_on_resume(ctx)
        _finish(render.training(pipeline.train(session), quiet=run["quiet"]))
    distributed.destroy()


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's runs (replaced if it holds an earlier demo).")]
    = Path("runs/demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run for CI (< 1 min on 2 CPU cores): a smaller "
                                                        "model on the first images of each split.")] = False,
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Pretrain, fine-tune with L_LFF and with CE only, and compare them on the embedded `backdrops`
    benchmark (offline, a few CPU minutes; --quick: under a minute)."""
    with contextlib.ExitStack() as stack:
        import time

        from lbfood.engine import demo as recipe
        from lbfood.engine import pipeline
        from lbfood.engine.evaluation import report as evaluate
        from lbfood.engine.training.finetune import prepare_finetune
        from lbfood.engine.training.setup import prepare_pretrain
        from lbfood.output import render, render_eval

        recipe.prepare_out(out)  # removes an earlier demo's runs; refuses anything else
        if quick:
            stack.enter_context(recipe.quick_threads())
        t0 = time.time()
        render.console.rule("[bold]1/4 pretrain with cross-entropy")
        pre = render.training(pipeline.train(prepare_pretrain(recipe.pretrain_config(
            out, device=device, seed=seed, quick=quick))), quiet=quiet)
        _finish(pre)
        runs = {}
        for step, lam, label in ((2, 1.0, "fine-tune with CE + λ·L_LFF"), (3, 0.0, "fine-tune with CE only "
                                                                                   "(the control, λ = 0)")):
            render.console.rule(f"[bold]{step}/4 {label}")
            cfg = recipe.finetune_config(out, pre.run_dir, lam=lam, device=device, seed=seed, quick=quick)
            last = render.training(pipeline.train(prepare_finetune(cfg)), quiet=quiet)
            _finish(last)
            runs[lam] = last
        render.console.rule("[bold]4/4 report: pretrained vs CE-only vs LFF on backdrops")
        rcfg = recipe.report_config(runs[1.0].run_dir, [pre.run_dir, runs[0.0].run_dir], device=device,
                                    quick=quick)
        with render_eval.progress(quiet) as on_event:
            result = evaluate.report(rcfg, on_event=on_event)
        render_eval.report(result)
        drawn = None
        if not quick:  # --quick stays a smoke run under a minute: no pictures
            from lbfood.output import plots

            with render_eval.progress(quiet) as on_event:
                drawn = plots.demo_pictures([pre.run_dir, runs[0.0].run_dir, runs[1.0].run_dir], out / "pictures",
                                            device=device, on_event=on_event)
        far = recipe.far_case(runs[1.0].run_dir, device=device, seed=seed)
        render.kv_table("lbfood demo", [
            ("ID test accuracy", f"pretrained {pre.metrics['test_acc']:.2%}, CE-only "
                                 f"{runs[0.0].metrics['test_acc']:.2%}, LFF {runs[1.0].metrics['test_acc']:.2%}"),
            ("time", f"{time.time() - t0:.0f} s"),
            ("runs", str(out)),
            ("pictures", f"{len(drawn)} PNGs: {out / 'pictures' / 'index.html'}" if drawn is not None
             else "not drawn with --quick"),
            *((case, f"{n} images scored by the LFF run: {alone} called ID by the react score alone, {gated} "
                     "with `lbfood score`'s far-OOD gate (Mahalanobis distances to the training features; "
                     "--no-far-gate: the score alone)") for case, (n, alone, gated) in far.items()),
            ("next", f"lbfood score IMAGE --model {runs[1.0].run_dir}"),
        ])
        if quick:
            render.warn(f"--quick: a smoke run ({recipe.QUICK_LIMIT} images per split, width {recipe.QUICK_WIDTH}, "
                        f"{recipe.QUICK_PRETRAIN_EPOCHS}+{recipe.QUICK_FINETUNE_EPOCHS} epochs); the numbers "
                        "are not meaningful at that size, only that the install works end to end")

