"""Device, precision, seeding and threads: the few decisions every stage makes the same way."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from lbfood.engine.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed: device, autocast dtype (None = fp32), grad scaling."""

    device: torch.device
    precision: str  # resolved: "fp32", "bf16" or "fp16"
    channels_last: bool

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def use_scaler(self) -> bool:
        return self.precision == "fp16" and self.device.type == "cuda"

    def autocast(self):
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        return autocast(self.device, self.precision)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


def select_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # e.g. "meta" holds no data: nothing could be computed
        raise ConfigError(f"--device {name}: lbfood computes on cpu, cuda or mps; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available() \
            and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return dev


def autocast(device: torch.device, precision: str):
    """The one mixed-precision rule of training and extraction: autocast to bf16/fp16 on `device`, or a
    no-op for fp32. `precision` is resolved (see `resolve_precision`)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision not in PRECISIONS or precision == "auto":
        raise ConfigError(f"unknown precision {precision!r}; valid: fp32, bf16, fp16")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device, *, training: bool = True) -> str:
    """auto = for training, bf16 on CUDA GPUs that support it, fp16 (with a GradScaler) on older ones, fp32
    elsewhere; for evaluation (extraction, scoring, calibration) fp32, as the reference OOD code computes
    its numbers (bf16 shifts ViM and Mahalanobis). An explicit fp32/bf16/fp16 is used as given."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda" and training:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return precision


def make_runtime(device: str = "auto", precision: str = "auto", *, training: bool = True) -> Runtime:
    dev = select_device(device)
    if dev.type == "cuda":
        # Convolution shapes are fixed during training: let cuDNN pick the fastest kernels.
        torch.backends.cudnn.benchmark = True
        # TF32 (10-bit mantissa) speeds training's fp32 matmuls and convolutions on Ampere and later; an
        # evaluation in fp32 means fp32 (TF32 would move Mahalanobis and ViM scores by ~1e-3 relative).
        # Process-wide flags, set by each runtime: a sweep's trials alternate the two.
        torch.backends.cuda.matmul.allow_tf32 = training
        torch.backends.cudnn.allow_tf32 = training
    set_threads()
    # channels_last: faster convolutions on CUDA (tensor cores) and, measured here, on CPU with oneDNN.
    return Runtime(dev, resolve_precision(precision, dev, training=training), channels_last=dev.type in ("cuda", "cpu"))


def set_threads() -> None:
    """Use the cores this process may run on (not every core of a shared host), unless the user chose."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    torch.set_num_threads(max(1, min(n, 16)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
