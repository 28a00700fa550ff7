"""lbfood's command line: thin Typer commands over `lbfood.engine`.

torch is imported inside the commands, never at module import, so `lbfood --help` stays fast.
Engine errors (LbfoodError) are caught once, in `_guard`, and become one red line and exit code 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from lbfood import __version__

app = typer.Typer(
    name="lbfood",
    help="Local background feature fine-tuning (LFF) for out-of-distribution detection.\n\n"
    "Typical use: `lbfood pretrain`, `lbfood finetune`, `lbfood report`, `lbfood score image.jpg`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Kept as text so `--help` needs no torch; tests check they match the registries.
ARCH_NAMES = "resnet18, resnet34, resnet50, resnet50_imagenet, wrn28_10 (any wrnD_K)"
DATA_HELP = ("Dataset: backdrops (embedded, no files), cifar10, cifar100, imagenet100, mnist, fashion-mnist, "
             "imagefolder:PATH. `lbfood datasets` lists all with their expected paths.")


@contextlib.contextmanager
def _guard():
    """Turn engine errors into one line on stderr and exit code 2; Ctrl-C into exit code 130."""
    from lbfood import render
    from lbfood.engine.errors import LbfoodError

    try:
        yield
    except LbfoodError as e:
        from lbfood.engine.errors import ConfigError

        rank = _rank()
        if rank == 0:
            render.error(str(e))
        elif not isinstance(e, ConfigError):  # flag errors are the same on every rank: rank 0 says it
            render.error(f"rank {rank}: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        if _rank() == 0:
            render.error("interrupted")
        raise typer.Exit(130) from None


def _rank() -> int:
    """This process's rank under torchrun, 0 otherwise (from the environment: no torch needed)."""
    import os

    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _launch(devices: int, device: str, command: str) -> bool:
    """`--devices N`, N > 1: run this command line again in N processes on this machine (torchrun's
    agent) and return True when they all finished; False for N = 1 (nothing to launch)."""
    import sys

    from lbfood.engine import distributed
    from lbfood.engine.errors import ConfigError, DistributedError

    if devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {devices}")
    if devices == 1:
        return False
    args, i = [], 0
    raw = sys.argv[1:]
    while i < len(raw):  # the same arguments without --devices
        if raw[i] == "--devices":
            i += 2
            continue
        if not raw[i].startswith("--devices="):
            args.append(raw[i])
        i += 1
    if command not in args:
        raise ConfigError(f"--devices: cannot find the `{command}` command line to re-run; use "
                          f"`torchrun --nproc-per-node {devices} -m lbfood {command} ...`")
    try:
        distributed.launch_local(devices, args, cpu=not distributed.uses_cuda(device))
    except DistributedError as e:
        if e.exit_code == 2:  # a user error, which that process printed
            raise typer.Exit(2) from None
        raise
    except KeyboardInterrupt:  # rank 0 said how to resume
        raise typer.Exit(130) from None
    return True


def _join(device: str):
    """Join the process group torchrun set up (nothing to do for one process); only rank 0 prints."""
    from lbfood import render
    from lbfood.engine import distributed

    dist = distributed.init_from_env(device)
    if not dist.is_main:
        render.console.quiet = True
    return dist


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lbfood {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Local background feature fine-tuning (LFF) for OOD detection."""


def _milestones(text: str) -> tuple[int, ...]:
    from lbfood.engine.errors import ConfigError

    if not text.strip():
        return ()
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--milestones takes comma-separated epochs like 15 or 30,60; got {text!r}") from None


# Options shared by pretrain and finetune.
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option(help="auto = bf16 on CUDA GPUs that support it, fp16 + GradScaler on "
                                             "older ones, fp32 on CPU; or fp32, bf16, fp16.")]
Seed = Annotated[int, typer.Option(help="Random seed (weights, data order, augmentation).")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes (large-image datasets only).")]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line per epoch.")]
DataRoot = Annotated[Path | None, typer.Option(help="Where datasets live.", show_default="$LBFOOD_DATA or ./data")]
SyncBn = Annotated[bool, typer.Option("--sync-bn", help="Synchronise batch norm across processes (CUDA).")]
Limit = Annotated[int | None, typer.Option(help="Use only the first N training and test images (smoke tests).")]
Devices = Annotated[int, typer.Option(help="Processes to launch on this machine (data parallel, one per GPU; "
                                           "--batch-size stays the global batch); 1 = no launcher. Under "
                                           "torchrun, leave at 1.")]


@app.command()
def pretrain(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "backdrops",
    data_root: DataRoot = None,
    arch: Annotated[str, typer.Option(help=f"Architecture: {ARCH_NAMES}.")] = "resnet18",
    width: Annotated[float, typer.Option(help="Channel-width multiplier (e.g. 0.25 for CPU experiments).")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD).")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum.")] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (not on BN/bias).")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="cosine (per step) or multistep (see --milestones).")] = "cosine",
    milestones: Annotated[str, typer.Option(help="multistep: comma-separated epochs where lr ×= gamma.")] = "",
    gamma: Annotated[float, typer.Option(help="multistep decay factor.")] = 0.1,
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 0,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing for CE.")] = 0.0,
    jitter: Annotated[float, typer.Option(help="Colour-jitter strength (brightness, contrast, saturation); 0 = off.")] = 0.4,
    val_split: Annotated[float, typer.Option(help="imagefolder with no train/test folders: share held out for test.")] = 0.0,
    classes: Annotated[Path | None, typer.Option(help="imagenet100: class list file (one wnid per line).")] = None,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out, never trained on (the "
                                                "validation split of `sweep` and --method auto); 0 = none.")] = 0.0,
    init: Annotated[Path | None, typer.Option(help="resnet50_imagenet: start from a local torchvision state dict.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [default: runs/<time>-<data>-<arch>].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --out (or the newest run in runs/) from its last epoch.")] = False,
    download: Annotated[bool, typer.Option("--download", help="Fetch the dataset with torchvision if missing.")] = False,
    sync_bn: SyncBn = False,
    limit: Limit = None,
    devices: Devices = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: Seed = 0,
    workers: Workers = 4,
    compile: Compile = False,
    quiet: Quiet = False,
) -> None:
    """Pretrain a classifier with cross-entropy (paper §III-A) and write a run folder."""
    with _guard():
        from lbfood import render
        from lbfood.engine import distributed, train
        from lbfood.engine.config import TrainConfig

        cfg = TrainConfig(data=data, data_root=str(data_root) if data_root else None, arch=arch, width=width,
                          epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay, schedule=schedule, milestones=_milestones(milestones),
                          gamma=gamma, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, jitter=jitter,
                          val_split=val_split, classes_file=str(classes) if classes else None,
                          init=str(init) if init else None, device=device, precision=precision, seed=seed,
                          out=str(out) if out else None, workers=workers, compile=compile, download=download,
                          sync_bn=sync_bn, limit=limit, holdout=holdout)
        if _launch(devices, device, "pretrain"):
            return
        dist = _join(device)
        with distributed.lost_peer(dist):
            session = train.prepare_pretrain(cfg, resume=resume, dist=dist)
            _finish(render.training(train.fit(session), quiet=quiet))
        distributed.destroy()


def _finish(last) -> None:
    """Summarise the final event; an interrupted run exits 130 after saying how to resume it."""
    from lbfood import render
    from lbfood.engine.train import Interrupted

    if isinstance(last, Interrupted):
        if _rank() != 0:  # rank 0 says it
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


@app.command()
def finetune(
    from_run: Annotated[Path, typer.Option("--from", help="Parent run to fine-tune.")] = Path("runs/latest"),
    delta: Annotated[float | None, typer.Option(help="δ (Eq. 5): a location is background when p_j(true class) < δ. "
                                                     "[default: preset: CIFAR-10 0.1, CIFAR-100/ImageNet-100 0.01, else 1/K]")] = None,
    mu: Annotated[str | None, typer.Option(help="μ (Eq. 6): norm margin, a number or 'auto' (the --mu-quantile "
                                                "quantile of the parent's background norms). [default: preset: "
                                                "CIFAR-10 1, CIFAR-100 2, ImageNet-100 3, else auto]")] = None,
    lam: Annotated[float | None, typer.Option("--lambda", help="λ (Eq. 7): weight of L_LFF; 0 = CE-only control. "
                                                               "[default: 1]")] = None,
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
    jitter: Annotated[float | None, typer.Option(help="Colour jitter; the paper drops it when fine-tuning. [default: 0]")] = None,
    data: Annotated[str | None, typer.Option(help="ID dataset [default: the parent run's].")] = None,
    data_root: DataRoot = None,
    out: Annotated[Path | None, typer.Option(help="Run folder [default: runs/<time>-<data>-<arch>-lff (or -ce)].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue --out (or the newest run) from its last epoch.")] = False,
    probe_batches: Annotated[int, typer.Option(help="ID training batches measured before the first step.")] = 4,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out (validation, and the "
                                                "scorer of --method auto); 0 = none.")] = 0.0,
    sync_bn: SyncBn = False,
    limit: Limit = None,
    devices: Devices = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: Seed = 0,
    workers: Workers = 4,
    compile: Compile = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a run with CE + λ·L_LFF (paper Eq. 7) and write a new run."""
    with _guard():
        from lbfood import render
        from lbfood.engine import distributed, train
        from lbfood.engine import finetune as ft
        from lbfood.engine.config import FinetuneConfig

        given = dict(delta=delta, mu=ft.parse_mu(mu), lam=lam, epochs=epochs, lr=lr,
                     milestones=_milestones(milestones) if milestones is not None else None, momentum=momentum,
                     weight_decay=weight_decay, jitter=jitter, data=data,
                     data_root=str(data_root) if data_root else None)
        explicit = {k for k, v in given.items() if v is not None}
        cfg = FinetuneConfig(parent=str(from_run), mask_from=mask_from, mu_quantile=mu_quantile,
                             batch_size=batch_size, out=str(out) if out else None, probe_batches=probe_batches,
                             sync_bn=sync_bn, device=device, precision=precision, seed=seed, workers=workers,
                             compile=compile, limit=limit, holdout=holdout,
                             **{k: v for k, v in given.items() if v is not None})
        if _launch(devices, device, "finetune"):
            return
        dist = _join(device)
        with distributed.lost_peer(dist):
            session = ft.prepare_finetune(cfg, explicit, resume=resume, dist=dist)
            _finish(render.training(train.fit(session), quiet=quiet))
        distributed.destroy()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's runs (replaced if it holds an earlier demo).")]
    = Path("runs/demo"),
    device: Device = "auto",
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Pretrain, fine-tune with L_LFF and with CE only, and compare them on the embedded `backdrops`
    benchmark (offline, a few CPU minutes)."""
    with _guard():
        import shutil
        import time

        from lbfood import render, render_eval
        from lbfood.engine import demo as recipe
        from lbfood.engine import evaluate, finetune, train

        if out.exists():
            if not all((p / "run.json").is_file() for p in out.iterdir() if p.is_dir()):
                from lbfood.engine.errors import ConfigError

                raise ConfigError(f"--out {out} holds something other than demo runs; pick another folder")
            shutil.rmtree(out)
        t0 = time.time()
        render.console.rule("[bold]1/4 pretrain with cross-entropy")
        pre = render.training(train.fit(train.prepare_pretrain(recipe.pretrain_config(out, device=device,
                                                                                       seed=seed))), quiet=quiet)
        _finish(pre)
        runs = {}
        for step, lam, label in ((2, 1.0, "fine-tune with CE + λ·L_LFF"), (3, 0.0, "fine-tune with CE only "
                                                                                   "(the control, λ = 0)")):
            render.console.rule(f"[bold]{step}/4 {label}")
            cfg, explicit = recipe.finetune_config(out, pre.run_dir, lam=lam, device=device, seed=seed)
            last = render.training(train.fit(finetune.prepare_finetune(cfg, explicit)), quiet=quiet)
            _finish(last)
            runs[lam] = last
        render.console.rule("[bold]4/4 report: pretrained vs CE-only vs LFF on backdrops")
        rcfg = recipe.report_config(runs[1.0].run_dir, [pre.run_dir, runs[0.0].run_dir], device=device)
        with render_eval.progress(quiet) as on_event:
            result = evaluate.report(rcfg, on_event=on_event)
        render_eval.report(result)
        render.kv_table("lbfood demo", [
            ("ID test accuracy", f"pretrained {pre.metrics['test_acc']:.2%}, CE-only "
                                 f"{runs[0.0].metrics['test_acc']:.2%}, LFF {runs[1.0].metrics['test_acc']:.2%}"),
            ("time", f"{time.time() - t0:.0f} s"),
            ("runs", str(out)),
            ("next", f"lbfood score IMAGE --model {runs[1.0].run_dir}"),
        ])


# ---- evaluation: report, score, datasets ----------------------------------------------------------

# Kept as text so `--help` needs no torch; tests check it matches the scorer registry.
SCORER_NAMES = "ash, dice, dice_react, energy, featurenorm, knn, mahalanobis, maxlogit, msp, odin, react, vim"
RunOpt = Annotated[str, typer.Option("--model", help="Run folder to evaluate.")]
Params = Annotated[list[str] | None, typer.Option(
    "--param", help="Scorer hyper-parameter METHOD.KEY=VALUE (repeatable), e.g. react.percentile=95.")]


def _params(items: list[str] | None, methods: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`--param` values as {method: {key: value}}; KEY=VALUE alone applies to a single method."""
    from lbfood.engine.errors import ConfigError

    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        lhs, eq, value = item.partition("=")
        method, dot, key = lhs.strip().rpartition(".")
        if not dot and len(methods) == 1:
            method = methods[0]
        if not eq or not key or not method:
            raise ConfigError(f"--param {item!r}: expected METHOD.KEY=VALUE, e.g. react.percentile=95")
        out.setdefault(method, {})[key] = value.strip()
    return out


def _split_names(items: list[str] | None) -> tuple[str, ...]:
    return tuple(n.strip() for item in items or [] for n in item.split(",") if n.strip())


@app.command()
def report(
    model: RunOpt = "runs/latest",
    id_data: Annotated[str | None, typer.Option(
        "--id", help="ID dataset (its test split).", show_default="the benchmark's, else the run's dataset")] = None,
    ood: Annotated[list[str] | None, typer.Option(
        help="OOD dataset, repeatable (e.g. svhn, folder:PATH).",
        show_default="the benchmark's, else the built-in benchmark of the ID set")] = None,
    method: Annotated[list[str] | None, typer.Option(
        help=f"Scorer, repeatable or comma-separated: {SCORER_NAMES}, or auto (the run's scorer chosen on "
             "held-out images; --holdout runs).", show_default="react")] = None,
    compare: Annotated[list[str] | None, typer.Option(
        help="Another run shown side by side (repeatable), e.g. the pretrained parent of a fine-tuned run.")] = None,
    benchmark: Annotated[str | None, typer.Option(
        help="backdrops, cifar10, cifar100, imagenet100 or a TOML file: sets --id/--ood and shows the "
             "paper's numbers beside yours.")] = None,
    fpr_convention: Annotated[str, typer.Option(
        help="paper: ID positive (share of OOD kept at 95 % of ID kept); openood: OOD positive.")] = "paper",
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="Also show AUPR-In and AUPR-Out.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the result to FILE (.json, .csv or .md).")] = None,
    param: Params = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: Precision = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    workers: Workers = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line.")] = False,
) -> None:
    """OOD detection metrics (FPR95, AUROC) of a run per OOD dataset and method, and its ID accuracy."""
    with _guard():
        from lbfood import render_eval
        from lbfood.engine import distributed, evaluate
        from lbfood.engine.config import ReportConfig

        methods = _split_names(method) or ("react",)
        cfg = ReportConfig(model=model, id_data=id_data, ood=tuple(ood or ()), methods=methods,
                           compare=tuple(compare or ()), benchmark=benchmark,
                           data_root=str(data_root) if data_root else None, fpr_convention=fpr_convention,
                           batch_size=batch_size, device=device, precision=precision,
                           params=_params(param, methods), output=str(output) if output else None,
                           workers=workers)
        dist = _join(device)  # under torchrun: each rank extracts a shard; rank 0 prints and writes
        with distributed.lost_peer(dist), render_eval.progress(quiet or not dist.is_main) as on_event:
            result = evaluate.report(cfg, on_event=on_event, dist=dist)
        if dist.is_main:
            render_eval.report(result, all_metrics=all_metrics)
        distributed.destroy()


@app.command()
def score(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or globs.")],
    model: RunOpt = "runs/latest",
    method: Annotated[str, typer.Option(help=f"Scorer: {SCORER_NAMES}, or auto (the scorer chosen on held-out "
                                             "images when the run was trained with --holdout).")] = "react",
    threshold: Annotated[float | None, typer.Option(
        help="γ: score ≥ γ ⇒ ID (paper Eq. 3).",
        show_default="the run's threshold for --method keeping 95 % of its ID test images, computed and "
                     "stored on first use")] = None,
    param: Params = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Classify images and say whether each is in-distribution. Exit code 1 if any file failed."""
    with _guard():
        from lbfood import render_eval
        from lbfood.engine import evaluate
        from lbfood.engine.config import ScoreConfig

        cfg = ScoreConfig(paths=tuple(paths), model=model, method=method, threshold=threshold,
                          params=_params(param, (method,)).get(method, {}), batch_size=batch_size,
                          data_root=str(data_root) if data_root else None, device=device, precision=precision)
        with render_eval.progress(json_out) as on_event:
            rows = evaluate.score_images(cfg, on_event=on_event)
        if json_out:
            typer.echo(render_eval.score_json(rows))
        else:
            render_eval.score_table(rows)
    if any(r.error is not None for r in rows):
        raise typer.Exit(1)


@app.command()
def datasets(
    data_root: DataRoot = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list (name, role, found, count, path).")] = False,
) -> None:
    """Which datasets are on disk, where each is expected, and how to obtain it."""
    with _guard():
        import json

        from lbfood import render_eval
        from lbfood.engine.data import catalog, default_root

        root = data_root if data_root is not None else default_root()
        rows = catalog.describe(root)
        if json_out:
            keys = ("name", "role", "found", "count", "path")
            typer.echo(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        else:
            render_eval.datasets(rows, root)


@app.command()
def sweep(
    from_run: Annotated[Path, typer.Option("--from", help="Parent run every trial fine-tunes.")] = Path("runs/latest"),
    out: Annotated[Path, typer.Option(help="Sweep folder: study.db, trials/, sweep.json, sweep.md, "
                                           "sensitivity.png, best.")] = Path("sweeps/sweep"),
    mode: Annotated[str, typer.Option(help="paper (one factor at a time around the first values, Fig. 6), grid "
                                           "(every combination) or search (Optuna TPE, --trials).")] = "grid",
    delta: Annotated[str, typer.Option(help="δ values (Eq. 5), comma-separated; 'preset' = the dataset's.")] = "preset",
    mu: Annotated[str, typer.Option(help="μ values (Eq. 6): numbers, auto, or qX (the X quantile of the parent's "
                                         "background norms).")] = "auto",
    lam: Annotated[str, typer.Option("--lambda", help="λ values (Eq. 7); the λ = 0 control is always added.")] = "1",
    mask_from: Annotated[str, typer.Option(help="current and/or pretrained.")] = "current",
    trials: Annotated[int, typer.Option(help="--mode search: trials besides the control.")] = 8,
    method: Annotated[str, typer.Option(help=f"Scorers validated per trial (the best counts): {SCORER_NAMES}.")] = "react",
    objective: Annotated[str, typer.Option(help="Validation OOD objective: auroc or fpr95.")] = "auroc",
    max_acc_drop: Annotated[float, typer.Option(help="ID validation accuracy points a trial may lose "
                                                     "against the control.")] = 1.0,
    holdout: Annotated[float, typer.Option(help="Share of the training split held out for validation.")] = 0.1,
    val_ood: Annotated[str | None, typer.Option(help="Validation OOD set (DATASET or folder:PATH), never a test set.",
                                                show_default="pseudo-OOD from the held-out ID images")] = None,
    pseudo: Annotated[str, typer.Option(help="Pseudo-OOD generators.")] = "jigsaw,uniform,gaussian,blur",
    ood: Annotated[list[str] | None, typer.Option(help="Test OOD set (repeatable), evaluated after the selection.",
                                                  show_default="the ID set's benchmark")] = None,
    benchmark: Annotated[str | None, typer.Option(help="Test benchmark, evaluated after the selection.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL shared by workers.",
                                                show_default="sqlite:///OUT/study.db")] = None,
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
    limit: Limit = None,
    devices: Annotated[int, typer.Option(help="Worker processes, one per CUDA GPU (trials in parallel).")] = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    seed: Seed = 0,
    workers: Workers = 4,
    quiet: Quiet = False,
) -> None:
    """Does LFF help on this data? Fine-tune over δ, μ, λ (and the λ = 0 control), select on held-out
    validation data only, then show every trial on the test OOD sets."""
    with _guard():
        import sys

        from lbfood import render, render_sweep
        from lbfood.engine.config import FinetuneConfig
        from lbfood.engine.sweep import parallel, results, space, study

        given = dict(epochs=epochs, lr=lr, weight_decay=weight_decay,
                     milestones=_milestones(milestones) if milestones is not None else None)
        recipe = FinetuneConfig(parent=str(from_run), batch_size=batch_size, probe_batches=probe_batches,
                                limit=limit, device=device, precision=precision, seed=seed, workers=workers,
                                **{k: v for k, v in given.items() if v is not None})
        sc = space.SweepConfig(
            recipe=recipe, explicit=frozenset(k for k, v in given.items() if v is not None), out=str(out),
            mode=mode, delta=space.parse_values("delta", delta), mu=space.parse_values("mu", mu),
            lam=space.parse_values("lam", lam), mask_from=space.parse_values("mask_from", mask_from),
            trials=trials, methods=_split_names([method]), objective=objective, max_acc_drop=max_acc_drop,
            holdout=holdout, val_ood=val_ood, pseudo=_split_names([pseudo]), storage=storage, prune=prune,
            ood=tuple(ood or ()), benchmark=benchmark)
        on_event = render_sweep.progress(quiet)
        if devices * per_gpu > 1 and not worker:
            study.open_study(sc)  # check the options once, before the workers start
            parallel.spawn(sys.argv[1:], devices, per_gpu, device)
        else:
            study.work(sc, on_event)
        if worker:
            render.console.print(f"worker done: no trial of {out} left to take")
            return
        render_sweep.table(results.finalize(sc, on_event))
        render.console.print(f"→ {out}/sweep.json, sweep.md, sensitivity.png; {out}/best is the selected run")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
