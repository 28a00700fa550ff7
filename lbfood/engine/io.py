"""Safe, atomic file writes: a temp file in the same folder, fsync, then rename.

A crash or Ctrl-C mid-write leaves the old file (or nothing), never a half-written one.
Tensors are stored as safetensors; loading never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a dict of tensors as safetensors, atomically (tensors are made contiguous CPU copies)."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle involved)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """A safetensors file's string metadata (header only); None for a damaged or foreign file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - a damaged or foreign file is a cache miss, not an error
        return None


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a line is written in one call, so a crash never leaves half a line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
