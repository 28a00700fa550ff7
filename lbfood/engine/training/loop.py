"""The training loop: one loop for pretraining (CE, Eq. 2) and fine-tuning (CE + λ·L_LFF, Eq. 7).

`fit` yields events (lbfood.engine.events) and never prints; the CLI renders them. Fine-tuning plugs
its extra loss in through a `LossHook` (setup.py). Metrics are accumulated on the device and read once
per `log_every` steps (one host-device sync). Calibration is not the loop's business: the command
composes training and evaluation (lbfood.engine.pipeline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from lbfood.engine import checkpoint, runs
from lbfood.engine.config import FinetuneConfig, TrainConfig
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.distributed import DistInfo, all_reduce_sum
from lbfood.engine.errors import ConfigError, LbfoodError, RunError
from lbfood.engine.events import EpochEnd, Event, Finished, Interrupted, Note, Progress, Started
from lbfood.engine.io import append_jsonl
from lbfood.engine.killpoints import kill_point
from lbfood.engine.runtime import Runtime
from lbfood.engine.training import guards
from lbfood.engine.training.fast_step import CompiledStep, compiled_step
from lbfood.engine.training.setup import LossHook, Session

# ---- the loop -------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig | FinetuneConfig, epoch: int, step: int, steps: int) -> float:
    """Learning rate at (epoch, step): linear warm-up, then cosine per step or multistep per epoch."""
    t, warmup = epoch + step / max(steps, 1), cfg.warmup_epochs or 0  # None: not resolved (no warm-up)
    if t < warmup:
        return cfg.lr * (t + 1 / max(steps, 1)) / warmup
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    span = cfg.epochs - warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / span))


def make_optimizer(cfg: TrainConfig | FinetuneConfig, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD over two groups, weights (≥ 2-D) and BN weights + biases (1-D); the second group gets weight decay
    only with `cfg.wd_on_bn` (fine-tuning, as the paper states it; pretraining skips it, the common CIFAR
    recipe). The two groups exist either way, so the saved optimizer state has one layout."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": cfg.weight_decay if cfg.wd_on_bn else 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, rt: Runtime, dist: DistInfo = DistInfo()) -> float:
    """Top-1 accuracy over the loader (global across ranks)."""
    model.eval()
    counts = torch.zeros(2, device=rt.device)
    for x, y in loader:
        with rt.autocast():
            logits = model(x)
        counts[0] += (logits.argmax(1) == y).sum()
        counts[1] += len(y)
    all_reduce_sum(counts, dist)
    correct, total = counts.tolist()
    return correct / max(total, 1)


def fit(s: Session) -> Iterator[Event]:
    """Train; yields events. Ctrl-C (KeyboardInterrupt) keeps the last finished epoch resumable."""
    cfg, rt, dist = s.cfg, s.rt, s.dist
    model = rt.prepare(s.model)
    if dist.enabled:
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    start_epoch = 0
    if s.resume:  # weights and optimizer state from one file: the last committed epoch
        start_epoch = checkpoint.load(s.run_dir, model, optimizer, scaler)
        s.meta = runs.read(s.run_dir).replace(status="running", config=cfg.to_dict(), threshold=None,
                                              thresholds={})  # thresholds of the old weights
        if start_epoch >= cfg.epochs:
            raise RunError(f"{s.run_dir} already finished {start_epoch} epoch(s); pass a larger --epochs to extend it")
    step_fn = torch.compile(model) if cfg.compile else model
    common = dict(batch_size=cfg.batch_size, mean=s.spec.mean, std=s.spec.std, image_size=s.meta.input_size,
                  device=rt.device, seed=cfg.seed, rank=dist.rank, world=dist.world,
                  channels_last=rt.channels_last, workers=cfg.workers)
    train_loader = make_loader(s.train_set, train=True, aug=s.aug, **common)
    eval_batch = -(-max(cfg.batch_size, 256) // dist.world) * dist.world  # a multiple of the processes
    test_loader = make_loader(s.test_set, train=False, **{**common, "batch_size": eval_batch})
    steps = len(train_loader)
    if steps == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {len(s.train_set)} training images")
    # --compile on fixed-shape device-resident batches: the whole step compiled (CUDA graphs on CUDA).
    step_fn = compiled_step(cfg.compile, train_loader, model, optimizer, rt, s.hook, cfg.label_smoothing,
                            dist.enabled) or step_fn

    fresh = not s.resume
    if dist.is_main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        runs.write(s.run_dir, s.meta)
    yield Started(s.run_dir, s.kind, cfg.epochs, start_epoch, steps, len(s.train_set), len(s.test_set),
                  str(rt.device), rt.precision, cfg.arch, cfg.width, cfg.data)
    yield from s.notes
    t_start, epoch, metrics = time.time(), start_epoch, {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            metrics = yield from _one_epoch(s, model, step_fn, optimizer, scaler, train_loader, epoch, steps)
            metrics["val_acc" if cfg.holdout else "test_acc"] = evaluate(model, test_loader, rt, dist)
            metrics["lr"] = lr_at(cfg, epoch, steps - 1, steps)
            if dist.is_main:  # the commit, then what follows from it (checkpoint.recover redoes those)
                checkpoint.save(s.run_dir, model, optimizer, epoch + 1, metrics, scaler)
                append_jsonl(s.run_dir / "metrics.jsonl", {"epoch": epoch + 1, **metrics})
                kill_point("metrics")
                s.meta = s.meta.replace(epochs_done=epoch + 1, metrics=metrics)
                runs.write(s.run_dir, s.meta)
                kill_point("meta")
            yield EpochEnd(epoch, metrics)
            acc = metrics["val_acc" if cfg.holdout else "test_acc"]  # --holdout: the held-out images, not the test split
            if s.kind == "pretrain" and (msg := guards.at_chance(acc, len(s.meta.classes), cfg,
                                                                 epoch + 1, s.meta.input_size)):
                if getattr(cfg, "stop_at_chance", True):
                    raise RunError(f"{msg} (--no-stop-at-chance trains on)")
                yield Note(msg, "warning")
    except KeyboardInterrupt:
        if dist.is_main:
            if fresh and checkpoint.committed(s.run_dir) is None:
                _remove_run(s.run_dir)
                yield Interrupted(None, 0)
                return
            s.meta = s.meta.replace(status="interrupted")
            runs.write(s.run_dir, s.meta)
        yield Interrupted(s.run_dir, s.meta.epochs_done)
        return
    except BaseException as e:
        if dist.is_main and fresh and checkpoint.committed(s.run_dir) is None:
            _remove_run(s.run_dir)
        elif dist.is_main and isinstance(e, LbfoodError):  # e.g. diverged: keep the epochs, say it stopped
            s.meta = s.meta.replace(status="stopped")
            runs.write(s.run_dir, s.meta)
        raise
    if dist.is_main:  # trained; the command calibrates next and then marks the run done (pipeline.py)
        s.meta = s.meta.replace(status="trained", metrics=metrics, seconds=round(time.time() - t_start, 2))
        runs.write(s.run_dir, s.meta)
        kill_point("trained")
    yield Finished(s.run_dir, metrics, time.time() - t_start)


def _remove_run(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch wrote (and the folder, once empty)."""
    if runs.startable(run_dir):
        runs.start_over(run_dir)
        (run_dir / checkpoint.LOCK).unlink(missing_ok=True)
        if not any(run_dir.iterdir()):
            run_dir.rmdir()


def _one_epoch(s: Session, model, step_fn, optimizer, scaler, loader, epoch: int, steps: int):
    """One pass over the training data; yields Progress every `log_every` steps, returns epoch metrics."""
    cfg, rt, hook = s.cfg, s.rt, s.hook
    model.train()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    base = torch.zeros(3, device=rt.device)  # CE·n, correct, n
    hook_sums: dict[str, torch.Tensor] = {}
    t0, seen, last_read = time.time(), 0, 0
    for i, (x, y) in enumerate(loader):
        lr = lr_at(cfg, epoch, i, steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        if isinstance(step_fn, CompiledStep):
            ce, logits, parts = step_fn(x, y)
        else:
            ce, logits, parts = train_step(step_fn, x, y, optimizer, scaler, rt, hook, cfg.label_smoothing)
        for k, v in parts.items():
            hook_sums[k] = hook_sums.get(k, 0) + v
        n = len(y)
        base += torch.stack([ce * n, (logits.argmax(1) == y).sum().float(),
                             torch.tensor(float(n), device=rt.device)])
        seen += n
        if i == 0:
            kill_point("step", f"rank{s.dist.rank}" if s.dist.enabled else None)
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
            m = _read_metrics(base, hook_sums, hook, i + 1, s.dist)
            guards.check_finite(m, cfg, epoch, i + 1, s.meta.input_size)  # before any epoch is saved
            last_read = i + 1
            yield Progress(epoch, i + 1, steps, m, seen * s.dist.world / max(time.time() - t0, 1e-9))
    m = _read_metrics(base, hook_sums, hook, max(last_read, 1), s.dist)
    m["images_per_s"] = seen * s.dist.world / max(time.time() - t0, 1e-9)
    m["epoch_seconds"] = time.time() - t0
    return m


def train_step(model, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, rt: Runtime, hook: LossHook | None = None,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step from a single backbone forward: CE (+ the hook's term, e.g. λ·L_LFF).

    Returns detached (CE, logits, hook statistics) as device tensors: nothing here waits for the device.
    """
    parts: dict[str, torch.Tensor] = {}
    with rt.autocast():
        logits, fmap = model(x, with_features=True)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        loss = ce
        if hook is not None:
            extra, parts = hook(x, y, logits, fmap)
            loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return ce.detach().float(), logits.detach(), {k: v.detach().float() for k, v in parts.items()}


def _read_metrics(base: torch.Tensor, hook_sums, hook, steps: int, dist: DistInfo) -> dict[str, float]:
    """One host-device sync: averages over the samples (and ranks) seen so far this epoch."""
    flat = torch.cat([base] + [v.reshape(1) for v in hook_sums.values()])
    if dist.enabled:
        flat = all_reduce_sum(flat.clone(), dist)
    vals = flat.tolist()
    ce_sum, correct, n = vals[:3]
    out = {"ce": ce_sum / max(n, 1), "train_acc": correct / max(n, 1)}
    if hook is not None:
        sums = dict(zip(hook_sums.keys(), vals[3:], strict=True))
        if dist.enabled:  # per-step means were summed over ranks too
            sums = {k: v / dist.world if k.startswith("mean_") else v for k, v in sums.items()}
        out.update(hook.summarize(sums, steps))
    return out
