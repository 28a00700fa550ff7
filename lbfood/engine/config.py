"""One frozen config per stage. Engine functions take these, never the CLI's arguments.

Fine-tuning fields that the dataset preset or the parent run fill are `None` until
`FinetuneConfig.resolve` fills them; the resolved config is what run.json records. `check()` is the
one place where every number is checked for finiteness and range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lbfood.engine.errors import ConfigError


class _Config:
    """to_dict / from_dict shared by the configs (tuples are stored as JSON lists)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("milestones") is not None:
            kw["milestones"] = tuple(kw["milestones"])
        return cls(**kw)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Pretraining with cross-entropy (paper §III-A, Eq. 2)."""

    data: str = "backdrops"
    data_root: str | None = None  # None: $LBFOOD_DATA or ./data
    arch: str = "resnet18"
    width: float = 1.0  # channel multiplier
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    wd_on_bn: bool = False  # weight decay on BN weights and biases too (pretraining: no, the CIFAR recipe)
    schedule: str = "cosine"  # cosine | multistep
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int | None = None  # None: `resolve` picks (5 for 224-px architectures, else 0)
    label_smoothing: float = 0.0
    jitter: float = 0.4  # colour jitter strength (brightness, contrast, saturation); 0 = off
    val_split: float = 0.0
    # Share of the training split held out as ID validation (stratified, split seed HOLDOUT_SEED = 0 in
    # train.py): the run trains on the rest and reads the held-out images instead of its test split.
    holdout: float = 0.0
    classes_file: str | None = None
    init: str | None = None  # resnet50_imagenet: a torchvision state dict to start from
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    out: str | None = None
    workers: int = 4
    compile: bool = False
    download: bool = False
    sync_bn: bool = False
    log_every: int = 20  # steps between progress reads (each read is one host-device sync)
    limit: int | None = None  # use only the first N training and test images (smoke tests)
    stop_at_chance: bool = True  # stop (else warn) when test accuracy is at chance after a few epochs

    def resolve(self, input_size: int) -> TrainConfig:
        """Fill `warmup_epochs`: ImageNet-size inputs (224 px) warm up for 5 epochs (fewer if the run is
        shorter), small images not at all; an explicit value is kept."""
        if self.warmup_epochs is not None:
            return self
        warmup = min(IMAGENET_WARMUP, max(self.epochs - 1, 0)) if input_size >= 224 else 0
        return dataclasses.replace(self, warmup_epochs=warmup)

    def check(self) -> None:
        """Raise ConfigError for any value out of range (every number finite)."""
        _check_recipe(self)


IMAGENET_WARMUP = 5  # epochs of linear warm-up for 224-px architectures trained from scratch


@dataclass(frozen=True)
class FinetuneConfig(_Config):
    """Fine-tuning with L = CE + λ·L_LFF (paper §IV-B, Eq. 7).

    `None` recipe fields take the dataset preset; `None` data fields take the parent run's; `resolve`
    fills both. Architecture and width always come from the parent.
    """

    parent: str = "runs/latest"
    delta: float | None = None  # δ, Eq. 5: background if p_j(y) < δ
    mu: float | str | None = None  # μ, Eq. 6: norm margin; "auto" measures it from the parent model
    lam: float | None = None  # λ, Eq. 7: weight of L_LFF (0 = CE-only control)
    mask_from: str = "current"  # current | pretrained: which model's head picks background locations
    mu_quantile: float = 0.5  # --mu auto: this quantile of the parent's background norms
    probe_batches: int = 4  # ID training batches measured before the first step
    # the recipe (None: the dataset's preset)
    epochs: int | None = None
    lr: float | None = None
    milestones: tuple[int, ...] | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    wd_on_bn: bool | None = None  # the paper: weight decay 1e-4 on every parameter (preset: True)
    jitter: float | None = None
    schedule: str | None = None
    gamma: float | None = None
    warmup_epochs: int | None = None
    nesterov: bool = False
    label_smoothing: float = 0.0
    batch_size: int = 128
    # the data (None: the parent run's)
    data: str | None = None
    data_root: str | None = None
    val_split: float | None = None
    holdout: float = 0.0  # as TrainConfig.holdout
    classes_file: str | None = None
    # filled from the parent by `resolve`
    arch: str | None = None
    width: float | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    out: str | None = None
    workers: int = 4
    compile: bool = False
    download: bool = False
    sync_bn: bool = False
    log_every: int = 20
    limit: int | None = None

    init = None  # fine-tuning always starts from the parent's weights

    def resolve(self, parent: Mapping[str, Any], preset: Mapping[str, Any]) -> FinetuneConfig:
        """Fill every `None` field: data fields and architecture from `parent` (the parent run's config,
        arch and width), recipe fields from `preset`. Explicit values are kept."""
        fill: dict[str, Any] = {}
        for f in fields(self):
            if getattr(self, f.name) is not None:
                continue
            if f.name in ("data", "data_root", "val_split", "classes_file", "arch", "width") and f.name in parent:
                fill[f.name] = parent[f.name]
            elif f.name in preset:
                fill[f.name] = preset[f.name]
        if fill.get("milestones") is not None:
            fill["milestones"] = tuple(fill["milestones"])
        if fill.get("val_split") is None and self.val_split is None:
            fill["val_split"] = 0.0
        return dataclasses.replace(self, **fill)

    def check(self) -> None:
        """Raise ConfigError for any value out of range; call on a resolved config."""
        unresolved = [f.name for f in fields(self) if f.name in _RESOLVED and getattr(self, f.name) is None]
        if unresolved:
            raise ConfigError(f"fine-tuning config not resolved: {', '.join(unresolved)} unset")
        _check_recipe(self)
        if not (_finite(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}")
        if isinstance(self.mu, str):
            if self.mu != "auto":
                raise ConfigError(f"--mu takes a number >= 0 or 'auto', got {self.mu!r}")
        elif not (_finite(self.mu) and self.mu >= 0):
            raise ConfigError(f"--mu must be a finite number >= 0 (or 'auto'), got {self.mu}")
        if not (_finite(self.lam) and self.lam >= 0):
            raise ConfigError(f"--lambda must be a finite number >= 0, got {self.lam}")
        if self.mask_from not in ("current", "pretrained"):
            raise ConfigError(f"--mask-from must be current or pretrained, got {self.mask_from!r}")
        if not (_finite(self.mu_quantile) and 0 < self.mu_quantile < 1):
            raise ConfigError(f"--mu-quantile must be in (0, 1), got {self.mu_quantile}")
        if self.probe_batches < 1:
            raise ConfigError(f"--probe-batches must be >= 1, got {self.probe_batches}")


_RESOLVED = ("delta", "mu", "lam", "epochs", "lr", "milestones", "momentum", "weight_decay", "wd_on_bn", "jitter",
             "schedule", "gamma", "warmup_epochs", "data", "val_split", "arch", "width")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_val_split(val_split: float) -> None:
    """A share of a flat imagefolder held out for testing: in (0, 1), or 0 for no split (NaN refused)."""
    if val_split != 0.0 and not 0.0 < val_split < 1.0:
        raise ConfigError(f"--val-split must be a share between 0 and 1 (e.g. 0.2), or 0 for no split; "
                          f"got {val_split}")


def _check_recipe(cfg: TrainConfig | FinetuneConfig) -> None:
    """The checks pretraining and fine-tuning share."""
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not (_finite(cfg.lr) and cfg.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {cfg.lr}")
    if not (_finite(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise ConfigError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if not (_finite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}")
    if not (_finite(cfg.jitter) and cfg.jitter >= 0):
        raise ConfigError(f"--jitter must be a finite number >= 0, got {cfg.jitter}")
    if not (_finite(cfg.gamma) and 0 < cfg.gamma <= 1):
        raise ConfigError(f"--gamma must be in (0, 1], got {cfg.gamma}")
    if cfg.schedule not in ("cosine", "multistep"):
        raise ConfigError(f"--schedule must be cosine or multistep, got {cfg.schedule!r}")
    if any(m < 1 for m in cfg.milestones):
        raise ConfigError(f"--milestones must be epochs >= 1, got {list(cfg.milestones)}")
    if not (_finite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1):
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.warmup_epochs is not None and not 0 <= cfg.warmup_epochs < cfg.epochs:  # None: resolved later
        raise ConfigError(f"--warmup-epochs must be in [0, epochs), got {cfg.warmup_epochs}")
    if not (_finite(cfg.width) and cfg.width > 0):
        raise ConfigError(f"--width must be a finite number > 0, got {cfg.width}")
    check_val_split(cfg.val_split)
    if not (_finite(cfg.holdout) and 0 <= cfg.holdout < 1):
        raise ConfigError(f"--holdout must be a share in [0, 1), got {cfg.holdout}")
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"--seed must be in [0, 2^63), got {cfg.seed}")


@dataclass(frozen=True)
class ReportConfig(_Config):
    """`lbfood report`: ID accuracy and OOD metrics of a run (and `compare` runs side by side, Table IV)."""

    model: str = "runs/latest"
    id_data: str | None = None  # None: the benchmark's ID set, else the run's dataset
    ood: tuple[str, ...] = ()  # empty: the benchmark's, else the built-in benchmark of the ID set
    methods: tuple[str, ...] = ("react",)  # the paper scores with ReAct + energy (Sec. IV-C)
    compare: tuple[str, ...] = ()
    benchmark: str | None = None  # built-in name or a TOML path: fills id/ood, carries the paper's numbers
    data_root: str | None = None  # None: the run's data root, else $LBFOOD_DATA or ./data
    fpr_convention: str = "paper"  # paper (ID positive) | openood (OOD positive)
    batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    params: dict = field(default_factory=dict)  # scorer parameters, e.g. {"react": {"percentile": 90}}
    workers: int = 4  # DataLoader workers for large-image sets
    gates: tuple[str, ...] = ()  # CI gates, e.g. "react.auroc>=90" (evaluation/gates.py), checked on the `model` run
    limit: int | None = None  # use only the first N images of every split (smoke tests, `demo --quick`)
    download: bool = False  # fetch missing torchvision datasets (ID and OOD) into data_root


@dataclass(frozen=True)
class ScoreConfig(_Config):
    """`lbfood score`: a verdict (ID/OOD at the threshold γ, paper Eq. 3) for each of the user's images."""

    paths: tuple[str, ...] = ()  # files, folders (searched recursively) and globs
    model: str = "runs/latest"
    method: str = "react"
    threshold: float | None = None  # γ, Eq. 3; None: the run's calibrated threshold for `method`
    params: dict = field(default_factory=dict)  # the method's parameters, e.g. {"percentile": 95}
    batch_size: int = 64
    data_root: str | None = None  # where the ID data is, if the scorer must be fitted or calibrated
    device: str = "auto"
    precision: str = "auto"
    far_gate: bool = True  # ID also needs the far-OOD gate to pass (scorers/fargate.py); False: the paper's verdict
