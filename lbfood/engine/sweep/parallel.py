"""`lbfood sweep --devices N --per-gpu K`: N·K worker processes on this machine sharing the study.

Each worker is the same command line with `--worker` (train trials until the queue is empty, no
selection) and `CUDA_VISIBLE_DEVICES` set to its GPU, so a worker sees one GPU as `cuda`. The parent
waits for all of them and then selects and evaluates (`results.finalize`). Workers on other machines
run the same command with `--storage URL --worker`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from lbfood.engine.errors import ConfigError, RunError

_DROP = ("--devices", "--per-gpu")


def worker_args(argv: Sequence[str]) -> list[str]:
    """The command line without --devices/--per-gpu (and their values), plus --worker."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _DROP:
            i += 2
            continue
        if not any(a.startswith(d + "=") for d in _DROP):
            out.append(a)
        i += 1
    return [*out, "--worker"]


def check(devices: int, per_gpu: int) -> None:
    """`--devices` and `--per-gpu` count processes: at least one each (checked before anything is made)."""
    if devices < 1 or per_gpu < 1:
        raise ConfigError(f"--devices and --per-gpu must be >= 1, got {devices} and {per_gpu}")


def spawn(argv: Sequence[str], devices: int, per_gpu: int, device: str) -> None:
    """Run devices·per_gpu workers, worker w on GPU w mod devices; raises RunError if any fails."""
    check(devices, per_gpu)
    if device == "cpu" or device == "mps":
        raise ConfigError("--devices/--per-gpu run one worker per CUDA GPU; on the CPU trials run one after "
                          "another (drop them)")
    import torch

    if torch.cuda.device_count() < devices:
        raise ConfigError(f"--devices {devices}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(devices)]
    procs = []
    for w in range(devices * per_gpu):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[w % devices]}
        procs.append(subprocess.Popen([sys.executable, "-m", "lbfood", *worker_args(argv)], env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.wait()
        raise
    bad = [(w, c) for w, c in enumerate(codes) if c != 0]
    if bad:
        raise RunError(f"worker(s) {', '.join(f'{w} (exit {c})' for w, c in bad)} failed; rerun the same command "
                       "to continue the sweep")
