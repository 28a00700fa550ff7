"""Shared set-up for the benchmark scripts: argument parsing, a model, a batch, step timing."""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    return p


def machine(rt) -> str:
    if rt.device.type == "cuda":
        return f"{torch.cuda.get_device_name(rt.device)}, {rt.precision}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, {rt.precision}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(rt) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def timed(fn, rt, steps: int, warmup: int) -> list[float]:
    """Seconds per call of `fn` (synchronised), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(rt)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(rt)
        times.append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def step_setup(args, rt, **build):
    """What a training-step benchmark times on: the model (seeded), its optimizer and scaler, one random batch."""
    import torch

    from lbfood.engine import models
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.training import loop as train

    torch.manual_seed(0)
    size = models.input_size(args.arch)
    model = rt.prepare(models.build(args.arch, num_classes=10, width=args.width, **build))
    opt = train.make_optimizer(TrainConfig(), model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    x = torch.randn(args.batch_size, 3, size, size, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=rt.device)
    return model, opt, scaler, x, y
