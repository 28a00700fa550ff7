"""The training loop: one loop for pretraining (CE, Eq. 2) and fine-tuning (CE + λ·L_LFF, Eq. 7).

The engine yields small event objects (Started, Progress, EpochEnd, Note, Finished, Interrupted)
and never prints; the CLI renders them. Fine-tuning plugs its extra loss in through a `LossHook`.
Metrics are accumulated on the device and read once per `log_every` steps (one host-device sync).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from lbfood.engine import checkpoint, models
from lbfood.engine.config import TrainConfig
from lbfood.engine.data import ImageSet, LoadOptions, default_root
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.base import DatasetSpec
from lbfood.engine.data.holdout import split_holdout
from lbfood.engine.data.loaders import Augment, make_loader
from lbfood.engine.distributed import DistInfo, all_reduce_sum, kill_point_for_tests, rank_device
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.io import append_jsonl
from lbfood.engine.runtime import Runtime, make_runtime, seed_everything

# ---- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    run_dir: Path
    kind: str
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    num_train: int
    num_test: int
    device: str
    precision: str
    arch: str
    width: float
    data: str


@dataclass(frozen=True)
class Progress:
    epoch: int  # 0-based
    step: int  # steps done in this epoch
    steps: int
    metrics: dict[str, float]
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Note:
    """Something the user should know (a warning, a measurement)."""

    message: str
    level: str = "info"  # info | warning
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    run_dir: Path
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class Interrupted:
    run_dir: Path | None
    epochs_done: int


Event = Started | Progress | EpochEnd | Note | Finished | Interrupted


class LossHook(Protocol):
    """An extra loss term added to CE, computed from the same forward pass.

    `__call__` returns (loss term, dict of scalar tensors to be summed over steps); `summarize` turns
    those sums (and the number of steps) into the metrics shown and logged.
    """

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 fmap: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def summarize(self, sums: dict[str, float], steps: int) -> dict[str, float]: ...


# ---- set-up ---------------------------------------------------------------------------------------


@dataclass
class Session:
    """Everything a training run needs, resolved and validated before anything is written."""

    cfg: TrainConfig
    kind: str  # pretrain | finetune
    rt: Runtime
    spec: DatasetSpec
    train_set: ImageSet
    test_set: ImageSet
    model: models.FeatureModel
    run_dir: Path
    meta: dict[str, Any]
    resume: bool = False
    hook: LossHook | None = None
    aug: Augment = field(default_factory=Augment)
    dist: DistInfo = field(default_factory=DistInfo)
    notes: list[Note] = field(default_factory=list)
    # Called (rank 0) with the trained model after the last epoch; returns extra run.json entries.
    on_finish: Callable[[Session, torch.nn.Module], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.on_finish is None:
            self.on_finish = calibrate_threshold


def calibrate_threshold(s: Session, model: torch.nn.Module) -> dict[str, Any]:
    """The default scorer's threshold keeping 95 % of held-out ID images, stored in run.json for `score`."""
    from lbfood.engine.evaluate import calibrate

    model.eval()
    entry = calibrate(s.run_dir, model, s.meta, s.rt, method="react", batch_size=max(s.cfg.batch_size, 256),
                      workers=s.cfg.workers)
    if not s.cfg.holdout:
        return {"threshold": entry}
    from lbfood.engine.sweep.auto import calibrate_auto

    return {"threshold": entry, **calibrate_auto(s, model)}  # --method auto, chosen on held-out images


def load_options(cfg: TrainConfig, image_size: int) -> LoadOptions:
    return LoadOptions(root=Path(cfg.data_root) if cfg.data_root else default_root(), download=cfg.download,
                       val_split=cfg.val_split, classes_file=Path(cfg.classes_file) if cfg.classes_file else None,
                       image_size=image_size, seed=cfg.seed)


def load_id_data(cfg: TrainConfig, image_size: int) -> tuple[DatasetSpec, ImageSet, ImageSet, list[Note]]:
    """(spec, train, test, notes); with `cfg.holdout` the third set is the held-out part of the training
    split (the test split is then never read)."""
    spec = get_dataset(cfg.data)
    if spec.role != "id":
        raise ConfigError(f"{cfg.data} is an OOD set (no class labels); train on an ID dataset such as "
                          "backdrops, cifar10, cifar100, imagenet100 or imagefolder:PATH")
    opts = load_options(cfg, image_size)
    train = spec.load(opts, "train")
    test = None if cfg.holdout else spec.load(opts, "test")
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {cfg.limit}")
        train, test = (s.subset(torch.arange(min(cfg.limit, len(s)))) if s is not None else s for s in (train, test))
    if cfg.holdout:
        train, test = split_holdout(train, cfg.holdout)
    notes = [Note(f"{s.name} {split}: skipped {s.skipped} image(s) that could not be decoded", "warning")
             for s, split in ((train, "train"), (test, "test")) if s.skipped]
    if len(train) == 0:
        raise ConfigError(f"{cfg.data}: the training split is empty")
    return spec, train, test, notes


def validate(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {cfg.lr}")
    if cfg.schedule not in ("cosine", "multistep"):
        raise ConfigError(f"--schedule must be cosine or multistep, got {cfg.schedule!r}")
    if any(m < 1 for m in cfg.milestones):
        raise ConfigError(f"--milestones must be epochs >= 1, got {list(cfg.milestones)}")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"--warmup-epochs must be in [0, epochs), got {cfg.warmup_epochs}")


def check_parallel(cfg: TrainConfig, rt: Runtime, dist: DistInfo) -> None:
    """What data parallelism needs: a global batch that splits evenly, and SyncBN only on GPUs."""
    if not dist.enabled:
        return
    if cfg.batch_size % dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                          f"{dist.world} processes")
    if cfg.sync_bn and rt.device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on the CPU); drop it "
                          "and each process normalises its own slice of the batch")


def prepare_pretrain(cfg: TrainConfig, *, resume: bool = False, dist: DistInfo | None = None) -> Session:
    """Resolve data, model and run folder for `lbfood pretrain`; raises LbfoodError on bad input."""
    dist = dist or DistInfo()
    validate(cfg)
    if resume:
        run_dir = resume_target(cfg.out)
        _, old = checkpoint.read_meta(run_dir)
        if old.get("kind") != "pretrain":
            raise RunError(f"{run_dir} is a {old.get('kind')} run; resume it with `lbfood {old.get('kind')} --resume`")
        if old["arch"] != cfg.arch or float(old["width"]) != cfg.width:
            raise RunError(f"--resume: {run_dir} is {old['arch']} width {old['width']}, not {cfg.arch} width "
                           f"{cfg.width}; pass the same --arch/--width or start a new run")
        cfg = TrainConfig.from_dict({**old["config"], "epochs": cfg.epochs, "device": cfg.device,
                                     "precision": cfg.precision, "workers": cfg.workers, "out": str(run_dir)})
    rt = make_runtime(rank_device(cfg.device, dist), cfg.precision)
    check_parallel(cfg, rt, dist)
    seed_everything(cfg.seed)
    models.check(cfg.arch, cfg.width)  # before any data is loaded
    size = models.input_size(cfg.arch)
    spec, train, test, notes = load_id_data(cfg, size)
    model = models.build(cfg.arch, num_classes=len(train.classes), width=cfg.width)
    if cfg.init:
        if not isinstance(model, models.ImageNetResNet50):
            raise ConfigError("--init loads torchvision ResNet-50 weights; use it with --arch resnet50_imagenet")
        model.load_torchvision(Path(cfg.init))
    run_dir = Path(cfg.out) if (cfg.out and not resume) else (
        resume_target(cfg.out) if resume else checkpoint.new_run_dir(cfg.data, cfg.arch))
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"--out {run_dir} already exists and is not empty; pick a new folder or add --resume")
    meta = run_meta("pretrain", cfg, spec, train.classes, size)
    return Session(cfg, "pretrain", rt, spec, train, test, model, run_dir, meta, resume=resume,
                   aug=Augment(crop_pad=4, flip=True, jitter=cfg.jitter), dist=dist, notes=notes)


def resume_target(out: str | None) -> Path:
    """The run to resume: --out, else the newest run folder under runs/."""
    if out:
        p = Path(out)
        if not (p / "run.json").is_file():
            raise RunError(f"--resume: {p} is not a run folder (no run.json); pass the run to resume with --out")
        return p
    runs = sorted(p for p in checkpoint.RUNS_DIR.glob("*") if (p / "run.json").is_file() and not p.is_symlink())
    if not runs:
        raise RunError("--resume: no run under runs/ to resume; pass --out RUN")
    return runs[-1]


def run_meta(kind: str, cfg: TrainConfig, spec: DatasetSpec, classes, size: int) -> dict[str, Any]:
    return {"kind": kind, "status": "running", "arch": cfg.arch, "width": cfg.width,
            "classes": list(classes), "input_size": size, "mean": list(spec.mean), "std": list(spec.std),
            "data": cfg.data, "preset": spec.preset, "config": cfg.to_dict(), "created": time.time(),
            "epochs_done": 0, "metrics": {}}


# ---- the loop -------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """Learning rate at (epoch, step): linear warm-up, then cosine per step or multistep per epoch."""
    t = epoch + step / max(steps, 1)
    if t < cfg.warmup_epochs:
        return cfg.lr * (t + 1 / max(steps, 1)) / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    span = cfg.epochs - cfg.warmup_epochs
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (t - cfg.warmup_epochs) / span))


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.SGD:
    # No weight decay on BN parameters and biases: the common CIFAR recipe.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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
    if s.resume:
        state = checkpoint.load_tensors(s.run_dir / "model.safetensors", rt.device) \
            if (s.run_dir / "model.safetensors").is_file() else None
        if state is None:
            raise RunError(f"{s.run_dir} has no saved epoch to resume; start it afresh")
        checkpoint.unwrap(model).load_state_dict(state)
        start_epoch = checkpoint.load_train_state(s.run_dir, optimizer, scaler)
        s.meta = {**checkpoint.read_meta(s.run_dir)[1], "status": "running", "config": cfg.to_dict()}
        if start_epoch >= cfg.epochs:
            raise RunError(f"{s.run_dir} already finished {start_epoch} epoch(s); pass a larger --epochs to extend it")
    step_fn = torch.compile(model) if cfg.compile else model
    common = dict(batch_size=cfg.batch_size, mean=s.spec.mean, std=s.spec.std, image_size=s.meta["input_size"],
                  device=rt.device, seed=cfg.seed, rank=dist.rank, world=dist.world,
                  channels_last=rt.channels_last, workers=cfg.workers)
    train_loader = make_loader(s.train_set, train=True, aug=s.aug, **common)
    eval_batch = -(-max(cfg.batch_size, 256) // dist.world) * dist.world  # a multiple of the processes
    test_loader = make_loader(s.test_set, train=False, **{**common, "batch_size": eval_batch})
    steps = len(train_loader)
    if steps == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {len(s.train_set)} training images")

    created = not s.resume and not s.run_dir.exists()
    if dist.is_main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_meta(s.run_dir, s.meta)
    yield Started(s.run_dir, s.kind, cfg.epochs, start_epoch, steps, len(s.train_set), len(s.test_set),
                  str(rt.device), rt.precision, cfg.arch, cfg.width, cfg.data)
    yield from s.notes
    t_start, epoch, metrics = time.time(), start_epoch, {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            metrics = yield from _one_epoch(s, model, step_fn, optimizer, scaler, train_loader, epoch, steps)
            metrics["val_acc" if cfg.holdout else "test_acc"] = evaluate(model, test_loader, rt, dist)
            metrics["lr"] = lr_at(cfg, epoch, steps - 1, steps)
            if dist.is_main:
                checkpoint.save_model(s.run_dir, model)
                checkpoint.save_train_state(s.run_dir, optimizer, epoch + 1, scaler)
                append_jsonl(s.run_dir / "metrics.jsonl", {"epoch": epoch + 1, **metrics})
                s.meta.update(epochs_done=epoch + 1, metrics=metrics)
                checkpoint.write_meta(s.run_dir, s.meta)
            yield EpochEnd(epoch, metrics)
    except KeyboardInterrupt:
        if dist.is_main:
            if created and not (s.run_dir / "model.safetensors").exists():
                _remove_run(s.run_dir)
                yield Interrupted(None, 0)
                return
            s.meta["status"] = "interrupted"
            checkpoint.write_meta(s.run_dir, s.meta)
        yield Interrupted(s.run_dir, s.meta.get("epochs_done", 0))
        return
    except BaseException:
        if dist.is_main and created and not (s.run_dir / "model.safetensors").exists():
            _remove_run(s.run_dir)
        raise
    extra = s.on_finish(s, checkpoint.unwrap(model)) if (s.on_finish and dist.is_main) else {}
    if extra.get("threshold"):
        t = extra["threshold"]
        yield Note(f"calibrated threshold: {t['method']} score {t['value']:.4g} keeps {t['tpr']:.0%} of "
                   f"{t['data']} test images (ID/OOD verdicts of `lbfood score`)")
    if dist.is_main:
        s.meta.update(status="done", metrics=metrics, seconds=round(time.time() - t_start, 2), **extra)
        checkpoint.write_meta(s.run_dir, s.meta)
        checkpoint.point_latest(s.run_dir)
    yield Finished(s.run_dir, metrics, time.time() - t_start)


def _remove_run(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        p.unlink()
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
        ce, logits, parts = train_step(step_fn, x, y, optimizer, scaler, rt, hook, cfg.label_smoothing)
        for k, v in parts.items():
            hook_sums[k] = hook_sums.get(k, 0) + v
        n = len(y)
        base += torch.stack([ce * n, (logits.argmax(1) == y).sum().float(),
                             torch.tensor(float(n), device=rt.device)])
        seen += n
        if i == 0:
            kill_point_for_tests(s.dist)
        if (i + 1) % cfg.log_every == 0 or i + 1 == steps:
            m = _read_metrics(base, hook_sums, hook, i + 1, s.dist)
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
