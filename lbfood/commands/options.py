"""What the commands share: the multi-process launcher, shared options and parsers (the error guard
is lbfood/cli.py's: it wraps every command)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from lbfood.engine.catalog import DATASETS, MODELS, OBJECTIVES, SCORERS

ARCH_NAMES = MODELS.help()
DATA_HELP = (f"ID dataset: {DATASETS.help(role='id')}, or imagefolder:PATH (backdrops is embedded: no files). "
             "`lbfood datasets` lists all with their expected paths.")
SCORER_NAMES = SCORERS.help()
OBJECTIVE_HELP = OBJECTIVES.describe()

def rank() -> int:
    """This process's rank under torchrun, 0 otherwise (from the environment: no torch needed)."""
    import os

    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def launch(devices: int, device: str, command: str) -> bool:
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


def join(device: str):
    """Join the process group torchrun set up (nothing to do for one process); only rank 0 prints."""
    from lbfood.engine import distributed
    from lbfood.output import render

    dist = distributed.init_from_env(device)
    if not dist.is_main:
        render.console.quiet = True
    return dist


def milestones(text: str) -> tuple[int, ...]:
    from lbfood.engine.errors import ConfigError

    if not text.strip():
        return ()
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--milestones takes comma-separated epochs like 15 or 30,60; got {text!r}") from None


# Options shared by pretrain and finetune (Precision: training's rule; EvalPrecision: evaluation's).
Device = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option(help="auto = bf16 on CUDA GPUs that support it, fp16 + GradScaler on "
                                             "older ones, fp32 on CPU; or fp32, bf16, fp16.")]
EvalPrecision = Annotated[str, typer.Option(
    "--precision", help="auto = fp32 everywhere (as the reference OOD code computes its numbers); or bf16, fp16 "
                        "(faster on GPUs; they shift ViM and Mahalanobis).")]
Download = Annotated[bool, typer.Option("--download", help="Fetch missing datasets with torchvision (CIFAR, SVHN, "
                                                           "MNIST-family); others say where to get them.")]
Seed = Annotated[int, typer.Option(help="Random seed (weights, data order, augmentation).")]
Workers = Annotated[int, typer.Option(help="DataLoader worker processes (large-image datasets only).")]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the whole training step (CUDA "
                                        "graphs on CUDA) on in-memory small-image data; the model elsewhere.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line per epoch.")]
DataRoot = Annotated[Path | None, typer.Option(help="Where datasets live.", show_default="$LBFOOD_DATA or ./data")]
SyncBn = Annotated[bool, typer.Option("--sync-bn", help="Synchronise batch norm across processes (CUDA).")]
Limit = Annotated[int | None, typer.Option(help="Use only the first N training and test images (smoke tests).")]
EvalLimit = Annotated[int | None, typer.Option(
    "--limit", help="Use only the first N images of every split (smoke tests; `demo --quick` runs are reported "
                    "with --limit 256).")]
Devices = Annotated[int, typer.Option(help="Processes to launch on this machine (data parallel, one per GPU; "
                                           "--batch-size stays the global batch); 1 = no launcher. Under "
                                           "torchrun, leave at 1.")]


RunOpt = Annotated[str, typer.Option("--model", help="Run folder to evaluate.")]
Params = Annotated[list[str] | None, typer.Option(
    "--param", help="Scorer hyper-parameter METHOD.KEY=VALUE (repeatable), e.g. react.percentile=95.")]


def params(items: list[str] | None, methods: tuple[str, ...]) -> dict[str, dict[str, str]]:
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


def split_names(items: list[str] | None) -> tuple[str, ...]:
    return tuple(n.strip() for item in items or [] for n in item.split(",") if n.strip())


def _training_tail(
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
    """The options `pretrain` and `finetune` end with: how and where a training run runs (written once)."""


_TAIL_CONFIG = ("sync_bn", "limit", "device", "precision", "seed", "workers", "compile")  # the config's fields


def training_options(command: Callable) -> Callable:
    """Give `command(..., **run)` the shared tail of training options (`_training_tail`) as its own Typer
    options (its signature and annotations, which Typer reads); it receives their values in `run`."""
    import inspect

    own = inspect.signature(command, eval_str=True)
    tail = list(inspect.signature(_training_tail, eval_str=True).parameters.values())
    params = [q for q in own.parameters.values() if q.kind is not q.VAR_KEYWORD] + tail
    command.__signature__ = own.replace(parameters=params)
    command.__annotations__ = {**command.__annotations__, **{q.name: q.annotation for q in tail}}
    return command


def config_fields(run: dict[str, Any]) -> dict[str, Any]:
    """The training config's fields among the shared options (`devices` and `quiet` are how it runs)."""
    return {k: run[k] for k in _TAIL_CONFIG}
