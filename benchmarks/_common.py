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
