"""An epoch's commit, its repair after a crash, and the lock a writer holds on a run folder.

`train_state.safetensors` is the commit point of an epoch: one file, written atomically (temp file,
then rename), that holds the weights *and* the optimizer buffers, RNG state and next epoch, with the
epoch's metrics in its header. `model.safetensors` (what evaluation loads), the metrics.jsonl line and
the run's description follow it; a run killed in between is repaired from the train state (`recover`)
before it resumes, so an epoch is never trained twice and never lost.

`lock` holds an exclusive `flock` on RUN/.lock while a command writes the run: a second writer fails
at once instead of interleaving its epochs with the first one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lbfood.engine import runs
from lbfood.engine.errors import RunError
from lbfood.engine.io import atomic_write_bytes, load_tensors, read_metadata, save_tensors, storage_error
from lbfood.engine.killpoints import kill_point

STATE, MODEL, LOCK = runs.STATE_FILE, "model.safetensors", runs.LOCK_FILE
_W = "model."  # key prefix of the weights inside the train state


def save(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
         metrics: dict[str, float], scaler: torch.amp.GradScaler | None = None) -> None:
    """Commit `epoch` epochs: the train state (weights included) in one atomic write, then the weights
    alone in model.safetensors, both stamped with the epoch."""
    weights = runs.unwrap(model).state_dict()
    tensors: dict[str, torch.Tensor] = {"epoch": torch.tensor(epoch), "rng_cpu": torch.get_rng_state()}
    tensors.update({_W + k: v for k, v in weights.items()})
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            st = optimizer.state.get(p, {})
            if st.get("momentum_buffer") is not None:
                tensors[f"opt.{i}.{j}.momentum_buffer"] = st["momentum_buffer"]
    if scaler is not None and scaler.is_enabled():
        tensors["scaler_scale"] = scaler.get_scale() * torch.ones(())
    save_tensors(run_dir / STATE, tensors, metadata={"epoch": str(epoch), "metrics": json.dumps(metrics)})
    kill_point("state")
    save_tensors(run_dir / MODEL, weights, metadata={"epoch": str(epoch)})
    kill_point("model")


def committed(run_dir: Path) -> tuple[int, dict[str, float]] | None:
    """(epochs committed, that epoch's metrics) from the train state's header; None if there is none."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    head = read_metadata(path)
    if not head or "epoch" not in head or "metrics" not in head:
        raise RunError(f"{path} is damaged or was written by an older lbfood (no epoch stamp); resume the run "
                       "with the version that wrote it, or start it afresh in a new --out folder")
    return int(head["epoch"]), json.loads(head["metrics"])


def load(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         scaler: torch.amp.GradScaler | None = None) -> int:
    """Restore weights (and optimizer buffers, RNG, scaler) from the train state; returns the next epoch."""
    if committed(run_dir) is None:
        raise RunError(runs.no_epoch_message(run_dir))
    try:
        t = load_tensors(Path(run_dir) / STATE)
    except Exception:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise RunError(f"{Path(run_dir) / STATE} is corrupt; start the run afresh in a new --out folder") from None
    target = runs.unwrap(model)
    device = next(target.parameters()).device
    target.load_state_dict({k[len(_W):]: v.to(device) for k, v in t.items() if k.startswith(_W)})
    if optimizer is not None:
        for i, group in enumerate(optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                key = f"opt.{i}.{j}.momentum_buffer"
                if key in t:
                    optimizer.state[p]["momentum_buffer"] = t[key].to(p.device)
        torch.set_rng_state(t["rng_cpu"])
    if scaler is not None and "scaler_scale" in t:
        scaler.update(float(t["scaler_scale"]))
    return int(t["epoch"])


def recover(run_dir: Path) -> int:
    """Bring model.safetensors, metrics.jsonl and run.json up to the committed epoch (a crash may have
    stopped between the writes that follow the commit); returns that epoch."""
    run_dir = Path(run_dir)
    found = committed(run_dir)
    if found is None:
        raise RunError(runs.no_epoch_message(run_dir))
    epoch, metrics = found
    stamp = (read_metadata(run_dir / MODEL) or {}).get("epoch") if (run_dir / MODEL).is_file() else None
    if stamp != str(epoch):
        t = load_tensors(run_dir / STATE)
        save_tensors(run_dir / MODEL, {k[len(_W):]: v for k, v in t.items() if k.startswith(_W)},
                     metadata={"epoch": str(epoch)})
    _repair_metrics(run_dir / "metrics.jsonl", epoch, metrics)
    meta = runs.read(run_dir)
    if meta.epochs_done != epoch:
        runs.update(run_dir, epochs_done=epoch, metrics=metrics)
    return epoch


def _repair_metrics(path: Path, epoch: int, metrics: dict[str, Any]) -> None:
    """metrics.jsonl with one line per committed epoch: later lines dropped, the last one restored."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epoch:
            kept.append(line)
    if not any(json.loads(line)["epoch"] == epoch for line in kept):
        kept.append(json.dumps({"epoch": epoch, **metrics}))
    if kept != lines:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` (created if missing) for the block; a second holder fails at once."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:  # a read-only disk, or a file where a folder of the path should be
        raise storage_error(run_dir, e, verb="use") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"{run_dir} is being written by another lbfood command; wait for it to finish, "
                       "or pick another --out") from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock (the kernel also does when the process dies)
