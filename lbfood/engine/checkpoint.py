"""Runs: folders of plain, safe files.

    model.safetensors        the weights (unwrapped: no `module.` / `_orig_mod.` prefixes)
    run.json                 architecture, width, classes, input size, normalisation, dataset,
                             full config, versions, status and final metrics
    train_state.safetensors  optimizer buffers, epoch, RNG state: what `--resume` needs
    metrics.jsonl            one JSON line per epoch

Every write is atomic. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from lbfood import RUN_FORMAT, __version__
from lbfood.engine import models
from lbfood.engine.errors import RunError
from lbfood.engine.io import atomic_write_json, load_tensors, save_tensors

RUNS_DIR = Path("runs")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def new_run_dir(data: str, arch: str, root: Path = RUNS_DIR, kind: str = "") -> Path:
    """runs/<time>-<data>-<arch>[-kind], made unique with a suffix if needed (not created here)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in data.split("/")[-1] or data)
    base = root / f"{stamp}-{safe}-{arch}{'-' + kind if kind else ''}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    meta = {"format": RUN_FORMAT, "lbfood": __version__, "torch": torch.__version__, **meta}
    atomic_write_json(run_dir / "run.json", meta)


def save_model(run_dir: Path, model: torch.nn.Module) -> None:
    save_tensors(run_dir / "model.safetensors", unwrap(model).state_dict())


def read_meta(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(resolved run folder, run.json) with clear errors for what is not a run of this version."""
    run_dir = resolve(path)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise RunError(f"{run_dir} is not an lbfood run (no run.json); pass a folder written by "
                       "`lbfood pretrain` or `lbfood finetune`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{meta_path} is corrupt (not JSON); re-run the training that made it") from None
    if not isinstance(meta, dict) or "format" not in meta:
        raise RunError(f"{meta_path} is not an lbfood run description; pass a run folder")
    if meta["format"] != RUN_FORMAT:
        raise RunError(f"{run_dir} was written by lbfood {meta.get('lbfood', '?')} (run format "
                       f"{meta['format']}); this lbfood {__version__} reads format {RUN_FORMAT}: "
                       "re-run it with this version or use the version that wrote it")
    return run_dir, meta


def resolve(path: str | os.PathLike) -> Path:
    """A run folder; `runs/latest` (or any symlink) resolved. Missing folders raise RunError."""
    p = Path(path)
    if not p.exists():
        hint = " (no run yet: run `lbfood pretrain` first)" if p.name == "latest" else ""
        raise RunError(f"run {p} not found{hint}")
    if not p.is_dir():
        raise RunError(f"{p} is not a run folder")
    return p.resolve()


def build_from_meta(meta: dict[str, Any]) -> models.FeatureModel:
    try:
        return models.build(meta["arch"], num_classes=len(meta["classes"]), width=float(meta["width"]))
    except KeyError as e:
        raise RunError(f"run.json lacks {e}; the run is incomplete or from another tool") from None


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[models.FeatureModel, dict]:
    """(model in eval mode, run.json). Never unpickles: weights come from safetensors."""
    run_dir, meta = read_meta(path)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{run_dir} has no model.safetensors (status: {meta.get('status', '?')}); "
                       "finish or --resume that run first")
    model = build_from_meta(meta)
    try:
        state = load_tensors(weights)
    except Exception:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise RunError(f"{weights} is corrupt; re-run the training that made it") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{weights} does not match {meta['arch']} width {meta['width']} "
                       f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    meta["run_dir"] = str(run_dir)
    return model.to(device).eval(), meta


def save_train_state(run_dir: Path, optimizer: torch.optim.Optimizer, epoch: int,
                     scaler: torch.amp.GradScaler | None = None) -> None:
    """Optimizer buffers, the next epoch to run, RNG state: enough to resume bit-for-bit on one device."""
    tensors: dict[str, torch.Tensor] = {"epoch": torch.tensor(epoch), "rng_cpu": torch.get_rng_state()}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            st = optimizer.state.get(p, {})
            if "momentum_buffer" in st and st["momentum_buffer"] is not None:
                tensors[f"opt.{i}.{j}.momentum_buffer"] = st["momentum_buffer"]
    if scaler is not None and scaler.is_enabled():
        tensors["scaler_scale"] = scaler.get_scale() * torch.ones(())
    save_tensors(run_dir / "train_state.safetensors", tensors)


def load_train_state(run_dir: Path, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler | None = None) -> int:
    """Restore what save_train_state wrote; returns the next epoch."""
    path = run_dir / "train_state.safetensors"
    if not path.is_file():
        raise RunError(f"{run_dir} has no train_state.safetensors: it finished no epoch; start it afresh")
    t = load_tensors(path)
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            key = f"opt.{i}.{j}.momentum_buffer"
            if key in t:
                optimizer.state[p]["momentum_buffer"] = t[key].to(p.device)
    torch.set_rng_state(t["rng_cpu"])
    if scaler is not None and "scaler_scale" in t:
        scaler.update(float(t["scaler_scale"]))
    return int(t["epoch"])


def point_latest(run_dir: Path, runs: Path | None = None) -> None:
    """Make runs/latest a (relative) symlink to `run_dir`, replaced atomically: later commands default to it."""
    runs = runs or RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    latest = runs / "latest"
    tmp = runs / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(Path(run_dir).resolve(), runs.resolve()))
    os.replace(tmp, latest)
