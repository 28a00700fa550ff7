"""What a training run needs before its first step: data, model, runtime and run folder, resolved and
validated before anything is written (`Session`). `prepare_pretrain` builds one for `lbfood pretrain`;
fine-tuning's `prepare_finetune` (finetune.py) builds one from a parent run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lbfood.engine import models, runs, weights
from lbfood.engine.config import RESUME_CHANGES, FinetuneConfig, TrainConfig
from lbfood.engine.data import ImageSet, LoadOptions, default_root
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.base import DatasetSpec
from lbfood.engine.data.holdout import split_holdout
from lbfood.engine.data.loaders import Augment
from lbfood.engine.distributed import DistInfo, main_first, rank_device
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.events import Note
from lbfood.engine.runs import RunMeta
from lbfood.engine.runtime import Runtime, make_runtime, seed_everything


class LossHook(Protocol):
    """An extra loss term added to CE, computed from the same forward pass.

    `__call__` returns (loss term, dict of scalar tensors to be summed over steps); `summarize` turns
    those sums (and the number of steps) into the metrics shown and logged.
    """

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 fmap: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def summarize(self, sums: dict[str, float], steps: int) -> dict[str, float]: ...


@dataclass
class Session:
    """Everything a training run needs, resolved and validated before anything is written."""

    cfg: TrainConfig | FinetuneConfig
    kind: str  # pretrain | finetune
    rt: Runtime
    spec: DatasetSpec
    train_set: ImageSet
    test_set: ImageSet
    model: models.FeatureModel
    run_dir: Path
    meta: RunMeta
    resume: bool = False
    hook: LossHook | None = None
    aug: Augment = field(default_factory=Augment)
    dist: DistInfo = field(default_factory=DistInfo)
    notes: list[Note] = field(default_factory=list)


def load_options(cfg: TrainConfig | FinetuneConfig, image_size: int) -> LoadOptions:
    return LoadOptions(root=Path(cfg.data_root) if cfg.data_root else default_root(), download=cfg.download,
                       val_split=cfg.val_split, classes_file=Path(cfg.classes_file) if cfg.classes_file else None,
                       image_size=image_size, seed=cfg.seed)


def load_id_data(cfg: TrainConfig | FinetuneConfig, image_size: int,
                 dist: DistInfo | None = None) -> tuple[DatasetSpec, ImageSet, ImageSet, list[Note]]:
    """(spec, train, test, notes); with `cfg.holdout` the third set is the held-out part of the training
    split (the test split is then never read). With --download, rank 0 loads (and downloads) first."""
    spec = get_dataset(cfg.data)
    if spec.role != "id":
        raise ConfigError(f"{cfg.data} is an OOD set (no class labels); train on an ID dataset such as "
                          "backdrops, cifar10, cifar100, imagenet100 or imagefolder:PATH")
    opts = load_options(cfg, image_size)
    with main_first(dist or DistInfo(), when=cfg.download):
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
    if len(train) < cfg.batch_size:
        left = " (after --limit/--holdout)" if cfg.limit is not None or cfg.holdout else ""
        raise ConfigError(f"--batch-size {cfg.batch_size} exceeds the {len(train)} training images{left}; "
                          "pass a smaller --batch-size")
    if len(train.classes) < 2:
        raise ConfigError(f"{cfg.data} has {len(train.classes)} class ({', '.join(map(str, train.classes))}); "
                          "a classifier needs at least 2 classes: add a folder per class")
    return spec, train, test, notes


def check_parallel(cfg: TrainConfig | FinetuneConfig, rt: Runtime, dist: DistInfo) -> None:
    """What data parallelism needs: a global batch that splits evenly, and SyncBN only on GPUs."""
    if not dist.enabled:
        return
    if cfg.batch_size % dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                          f"{dist.world} processes")
    if cfg.sync_bn and rt.device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on the CPU); drop it "
                          "and each process normalises its own slice of the batch")


def new_meta(kind: str, cfg: TrainConfig | FinetuneConfig, spec: DatasetSpec, classes, size: int) -> RunMeta:
    """The run.json of a run about to start: the resolved config and what evaluation needs to rebuild it."""
    return RunMeta(kind=kind, arch=cfg.arch, width=float(cfg.width), classes=list(classes), input_size=size,
                   mean=list(spec.mean), std=list(spec.std), data=cfg.data, preset=spec.preset,
                   config=cfg.to_dict())


def resume_changes(cfg: TrainConfig | FinetuneConfig, recorded: dict) -> dict:
    """The settings a resumed run takes from `cfg` (`RESUME_CHANGES`; None keeps the recorded value)."""
    return {k: recorded.get(k) if getattr(cfg, k) is None else getattr(cfg, k) for k in RESUME_CHANGES}


def prepare_pretrain(cfg: TrainConfig, *, resume: bool = False, dist: DistInfo | None = None) -> Session:
    """Resolve data, model and run folder for `lbfood pretrain`; raises LbfoodError on bad input."""
    dist = dist or DistInfo()
    if resume:
        old = runs.read(runs.resume_target(cfg.out))
        if old.kind != "pretrain":
            raise RunError(f"{old.run_dir} is a {old.kind} run; resume it with `lbfood {old.kind} --resume`")
        if old.arch != cfg.arch or float(old.width) != cfg.width:
            raise RunError(f"--resume: {old.run_dir} is {old.arch} width {old.width}, not {cfg.arch} width "
                           f"{cfg.width}; pass the same --arch/--width or start a new run")
        cfg = TrainConfig.from_dict({**old.config, **resume_changes(cfg, old.config), "out": str(old.run_dir)})
    cfg = cfg.resolve(models.input_size(cfg.arch))  # the default warm-up, recorded in run.json
    cfg.check()
    rt = make_runtime(rank_device(cfg.device, dist), cfg.precision)
    check_parallel(cfg, rt, dist)
    seed_everything(cfg.seed)
    models.check(cfg.arch, cfg.width)  # before any data is loaded
    size = models.input_size(cfg.arch)
    spec, train, test, notes = load_id_data(cfg, size, dist)
    model = models.build(cfg.arch, num_classes=len(train.classes), width=cfg.width)
    if cfg.init:
        weights.init_model(model, weights.for_init(cfg.init), f"--init {cfg.init}")
    run_dir = runs.output_dir(cfg.out, resume=resume, data=cfg.data, arch=cfg.arch)
    meta = new_meta("pretrain", cfg, spec, train.classes, size)
    return Session(cfg, "pretrain", rt, spec, train, test, model, run_dir, meta, resume=resume,
                   aug=Augment(crop_pad=4, flip=True, jitter=cfg.jitter), dist=dist, notes=notes)
