"""One frozen config per stage. Engine functions take these, never the CLI's arguments.

Fine-tuning fields that the dataset preset or the parent run fill are `None` until
`FinetuneConfig.resolve` fills them; the resolved config is what run.json records. `check()` is the
one place where every number is checked for finiteness and range.

Over 400 lines: every config lives here, each with its one `check()` (STYLE 16: one home per concept; a
newcomer finds any stage's settings in one guess), and they share two bases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lbfood.engine.errors import ConfigError

# A pretraining is judged at chance only after this many optimizer steps as well as max(3, 20 % of its epochs)
# epochs (training/guards.py): a small-data run with 8 steps an epoch has taken 24 steps after 3 epochs,
# too few to call it not learning.
CHANCE_MIN_STEPS = 200

# What `--resume` may change in a run's recorded settings; every other setting is the one run.json records.
RESUME_CHANGES = ("epochs", "device", "precision", "workers")


class _Config:
    """to_dict / from_dict shared by the configs (tuples are stored as JSON lists)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("milestones", "mean", "std"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _TrainingConfig(_Config):
    """What pretraining and fine-tuning share: the optimiser's fixed settings, the data's options, how the
    run runs and where it writes. Each stage adds its recipe (with its own defaults) below."""

    nesterov: bool = False
    label_smoothing: float = 0.0
    batch_size: int = 128  # global, over all processes
    data_root: str | None = None  # None: $LBFOOD_DATA or ./data (fine-tuning: the parent run's)
    # Share of the training split held out as ID validation (stratified, split seed HOLDOUT_SEED = 0 in
    # data/holdout.py): the run trains on the rest and reads the held-out images instead of its test split.
    holdout: float = 0.0
    classes_file: str | None = None
    init: str | None = None  # start from: FILE (a state dict), torchvision:NAME[:WEIGHTS] or timm:NAME
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


@dataclass(frozen=True)
class TrainConfig(_TrainingConfig):
    """Pretraining with cross-entropy (paper §III-A, Eq. 2)."""

    data: str = "backdrops"
    arch: str = "resnet18"
    width: float = 1.0  # channel multiplier
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    wd_on_bn: bool = False  # weight decay on BN weights and biases too (pretraining: no, the CIFAR recipe)
    schedule: str = "cosine"  # cosine | multistep
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int | None = None  # None: `resolve` picks (5 for 224-px architectures, else 0)
    jitter: float = 0.4  # colour jitter strength (brightness, contrast, saturation); 0 = off
    val_split: float = 0.0
    stop_at_chance: bool = True  # stop (else warn) when held-out accuracy is at chance (training/guards.py)

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
class FinetuneConfig(_TrainingConfig):
    """Fine-tuning with L = CE + λ·L_LFF (paper §IV-B, Eq. 7).

    `None` recipe fields take the dataset preset; `None` data fields take the parent run's; `resolve`
    fills both. Architecture and width always come from the parent.
    """

    parent: str = "runs/latest"
    objective: str = "lff"  # the term added to CE (catalog.OBJECTIVES): lff | lff-rel | bg-energy | bg-head
    delta: float | None = None  # δ, Eq. 5: background if p_j(y) < δ
    # μ, Eq. 6: norm margin; "auto" measures it from the parent model; "relX" (lff-rel): X times the image's
    # mean foreground norm
    mu: float | str | None = None
    m_in: float | str = "auto"  # bg-energy: ID free-energy margin (Liu et al. 2020); auto: from the parent
    m_out: float | str = "auto"  # bg-energy: background free-energy margin; auto: from the parent
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
    # the data (None: the parent run's)
    data: str | None = None
    val_split: float | None = None
    # filled from the parent by `resolve`
    arch: str | None = None
    width: float | None = None

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
        from lbfood.engine.catalog import OBJECTIVES

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES.names())}, got {self.objective!r}")
        rel = relative_mu(self.mu)
        if isinstance(self.mu, str):
            if self.mu != "auto" and rel is None:
                raise ConfigError(f"--mu takes a number >= 0, 'auto' or relX (X > 0), got {self.mu!r}")
        elif not (_finite(self.mu) and self.mu >= 0):
            raise ConfigError(f"--mu must be a finite number >= 0 (or 'auto'), got {self.mu}")
        if self.objective == "lff-rel" and rel is None:
            raise ConfigError(f"--objective lff-rel takes a relative margin --mu relX (e.g. rel0.5), got {self.mu!r}")
        if self.objective != "lff-rel" and rel is not None:
            raise ConfigError(f"--mu {self.mu} is a relative margin: use it with --objective lff-rel")
        for name in ("m_in", "m_out"):
            v = getattr(self, name)
            if not (v == "auto" or _finite(v)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number or 'auto', got {v!r}")
        if not (_finite(self.lam) and self.lam >= 0):
            raise ConfigError(f"--lambda must be a finite number >= 0, got {self.lam}")
        if self.mask_from not in ("current", "pretrained"):
            raise ConfigError(f"--mask-from must be current or pretrained, got {self.mask_from!r}")
        if not (_finite(self.mu_quantile) and 0 < self.mu_quantile < 1):
            raise ConfigError(f"--mu-quantile must be in (0, 1), got {self.mu_quantile}")
        _at_least_one("--probe-batches", self.probe_batches)


_RESOLVED = ("delta", "mu", "lam", "epochs", "lr", "milestones", "momentum", "weight_decay", "wd_on_bn", "jitter",
             "schedule", "gamma", "warmup_epochs", "data", "val_split", "arch", "width")


def has_bg_head(config: Mapping[str, Any]) -> bool:
    """Does a run with this (resolved) config carry a background head (`--objective bg-head`, λ > 0)?"""
    return config.get("objective") == "bg-head" and (config.get("lam") or 0) > 0


def relative_mu(mu: Any) -> float | None:
    """X of a relative margin "relX" (X finite and > 0), else None."""
    if not (isinstance(mu, str) and mu.startswith("rel")):
        return None
    try:
        x = float(mu[3:])
    except ValueError:
        return None
    return x if math.isfinite(x) and x > 0 else None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _at_least_one(flag: str, value: int | None) -> None:
    """A count option (None = not set) must be at least 1."""
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")


def check_val_split(val_split: float) -> None:
    """A share of a flat imagefolder held out for testing: in (0, 1), or 0 for no split (NaN refused)."""
    if val_split != 0.0 and not 0.0 < val_split < 1.0:
        raise ConfigError(f"--val-split must be a share between 0 and 1 (e.g. 0.2), or 0 for no split; "
                          f"got {val_split}")


def _check_recipe(cfg: TrainConfig | FinetuneConfig) -> None:
    """The checks pretraining and fine-tuning share."""
    _at_least_one("--epochs", cfg.epochs)
    _at_least_one("--batch-size", cfg.batch_size)
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
class ImportConfig(_Config):
    """`lbfood import`: an existing classifier (torchvision or timm, with its weights) as a parent run."""

    source: str = ""  # torchvision:NAME[:WEIGHTS] | timm:NAME[.TAG]
    weights: str | None = None  # a local state dict (safetensors, or a torch.save file read with weights_only)
    data: str = ""  # the ID dataset whose classes (in order) the head predicts
    data_root: str | None = None
    val_split: float = 0.0
    classes_file: str | None = None
    new_head: bool = False  # replace the classifier by a fresh linear head for the data's classes
    input_size: int | None = None  # None: the weights' own (timm's pretrained_cfg, torchvision's transforms)
    mean: tuple[float, ...] | None = None  # None: the weights' own normalisation
    std: tuple[float, ...] | None = None
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0  # the fresh head's initialisation (--new-head)
    out: str | None = None
    workers: int = 4
    limit: int | None = None  # only the first N test images for the accuracy check (smoke tests)
    download: bool = False

    def check(self) -> None:
        """Raise ConfigError for a value out of range."""
        if ":" not in self.source or self.source.split(":")[0] not in ("torchvision", "timm"):
            raise ConfigError(f"import: the model is torchvision:NAME[:WEIGHTS] or timm:NAME, got {self.source!r}")
        if self.input_size is not None and not 8 <= self.input_size <= 4096:
            raise ConfigError(f"--input-size must be a side in pixels (8..4096), got {self.input_size}")
        for flag, v in (("--mean", self.mean), ("--std", self.std)):
            if v is not None and not (len(v) == 3 and all(_finite(x) for x in v)):
                raise ConfigError(f"{flag} takes three numbers (R,G,B), e.g. 0.485,0.456,0.406; got {v}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"--std must be > 0, got {list(self.std)}")
        _at_least_one("--batch-size", self.batch_size)
        _at_least_one("--limit", self.limit)
        check_val_split(self.val_split)


@dataclass(frozen=True)
class _EvalConfig(_Config):
    """What the evaluation commands share: the run, the scorers' parameters, where data is, how to compute."""

    model: str = "runs/latest"
    params: dict = field(default_factory=dict)  # scorer parameters (report: per method; others: the method's)
    batch_size: int = 64  # images per forward pass
    data_root: str | None = None  # where the ID data is, if a scorer must be fitted or calibrated
    device: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        """Raise ConfigError for any value out of range (names are checked by the catalogue)."""
        _at_least_one("--batch-size", self.batch_size)


@dataclass(frozen=True)
class ReportConfig(_EvalConfig):
    """`lbfood report`: ID accuracy and OOD metrics of a run (and `compare` runs side by side, Table IV)."""

    id_data: str | None = None  # None: the benchmark's ID set, else the run's dataset
    ood: tuple[str, ...] = ()  # empty: the benchmark's, else the built-in benchmark of the ID set
    methods: tuple[str, ...] = ("react",)  # the paper scores with ReAct + energy (Sec. IV-C)
    compare: tuple[str, ...] = ()
    benchmark: str | None = None  # built-in name or a TOML path: fills id/ood, carries the paper's numbers
    fpr_convention: str = "paper"  # paper (ID positive) | openood (OOD positive)
    batch_size: int = 256
    workers: int = 4  # DataLoader workers for large-image sets
    gates: tuple[str, ...] = ()  # CI gates, e.g. "react.auroc>=90" (evaluation/gates.py), checked on the `model` run
    limit: int | None = None  # use only the first N images of every split (smoke tests, `demo --quick`)
    download: bool = False  # fetch missing torchvision datasets (ID and OOD) into data_root
    allow_skips: bool = False  # report an OOD set of which fewer than half the image files could be decoded


@dataclass(frozen=True)
class _ImagesConfig(_EvalConfig):
    """A verdict (ID/OOD at the threshold γ, paper Eq. 3) for the user's own image files."""

    paths: tuple[str, ...] = ()  # files, folders (searched recursively) and globs
    method: str = "react"
    threshold: float | None = None  # γ, Eq. 3; None: the run's calibrated threshold for `method`
    far_gate: bool = True  # ID also needs the far-OOD gate to pass (scorers/fargate.py); False: the paper's verdict

    def check(self, example: str = "lbfood score photos/") -> None:
        """No images, a batch < 1 or a non-finite γ: refused before any work (`example` shows the command)."""
        if not self.paths:
            raise ConfigError(f"no images given; pass files, folders or globs, e.g. `{example}`")
        super().check()
        if self.threshold is not None and not _finite(self.threshold):
            raise ConfigError(f"--threshold must be a finite number, got {self.threshold}")


@dataclass(frozen=True)
class ScoreConfig(_ImagesConfig):
    """`lbfood score`: a verdict (ID/OOD at the threshold γ, paper Eq. 3) for each of the user's images."""


@dataclass(frozen=True)
class ExplainConfig(_ImagesConfig):
    """`lbfood explain`: Fig. 7 heat maps of the user's images under one run and the `compare` runs."""

    compare: tuple[str, ...] = ()
    label: str | None = None  # a class name: also outline the background for this class (Eq. 5)


@dataclass(frozen=True)
class ExportConfig(_EvalConfig):
    """`lbfood export`: which run, scorer, threshold and file format (the graph is CPU fp32; `device` and
    `precision` are for fitting and calibration)."""

    method: str = "react"
    format: str = "onnx"  # onnx | torchscript
    out: str | None = None  # None: <run name>-<method>.onnx (or .pt) in the current folder
    layout: str = "NCHW"  # NCHW | NHWC, of the uint8 input images
    threshold: float | None = None  # γ, Eq. 3; None: the run's calibrated threshold for `method`
    max_bank_mb: float = 256.0  # knn: refuse a feature bank larger than this (MiB of float32)
    far_gate: bool = True  # include `lbfood score`'s far-OOD gate (output far_score; is_id needs both)

    def check(self) -> None:
        super().check()
        if self.threshold is not None and not _finite(self.threshold):
            raise ConfigError(f"--threshold must be a finite number, got {self.threshold}")
        if not (_finite(self.max_bank_mb) and self.max_bank_mb > 0):
            raise ConfigError(f"--max-bank-mb must be > 0, got {self.max_bank_mb}")


SWEEP_MODES = ("paper", "grid", "search")


@dataclass(frozen=True)
class SweepConfig(_Config):
    """`lbfood sweep`: fine-tune trials over a space of (δ, μ, λ, mask source) plus the CE-only control,
    choose one on held-out validation data, then evaluate every trial on the test OOD sets."""

    recipe: FinetuneConfig  # parent, epochs, lr, batch size, seed, …: shared by every trial; None = preset
    out: str = "sweeps/sweep"
    mode: str = "grid"  # paper | grid | search
    objectives: tuple[str, ...] = ("lff",)  # the `--objective` factor (`objective` is the validation metric)
    delta: tuple[str, ...] = ("preset",)
    mu: tuple[str, ...] = ("auto",)
    lam: tuple[str, ...] = ("1",)
    mask_from: tuple[str, ...] = ("current",)
    trials: int = 8  # search: trials besides the control
    methods: tuple[str, ...] = ("react",)  # scorers validated per trial; the best counts (part of the search)
    objective: str = "auroc"  # the validation metric (`--select-by`): auroc (higher is better) | fpr95 (lower)
    max_acc_drop: float = 1.0  # points of ID validation accuracy a trial may lose against the control
    min_gain: float = 0.0  # objective points a trial's paired-bootstrap lower bound must beat the control by
    holdout: float = 0.1  # share of the training split held out (stratified, split seed 0)
    val_ood: str | None = None  # a real validation OOD set; None: pseudo-OOD from the held-out images
    pseudo: tuple[str, ...] = ("jigsaw", "uniform", "gaussian", "blur")
    storage: str | None = None  # an Optuna storage URL; None: sqlite:///<out>/study.db
    prune: bool = False  # stop a trial whose epoch validation accuracy falls below the control's by more
    ood: tuple[str, ...] = ()  # test OOD sets, evaluated after the selection (default: the benchmark's)
    benchmark: str | None = None
    heartbeat_s: int = 30  # Optuna heartbeat: a trial silent for 4 beats is failed and re-queued

    def check(self) -> None:
        """Raise ConfigError for a value out of range or an unknown scorer, before any trial trains."""
        if self.mode not in SWEEP_MODES:
            raise ConfigError(f"--mode must be one of {', '.join(SWEEP_MODES)}, got {self.mode!r}")
        if self.heartbeat_s < 1:
            raise ConfigError(f"--heartbeat must be >= 1 second, got {self.heartbeat_s}")
        if self.mode == "search":
            _at_least_one("--trials", self.trials)
        if self.objective not in ("auroc", "fpr95"):
            raise ConfigError(f"--select-by must be auroc or fpr95, got {self.objective!r}")
        if not (math.isfinite(self.max_acc_drop) and self.max_acc_drop >= 0):
            raise ConfigError(f"--max-acc-drop must be a number of points >= 0, got {self.max_acc_drop}")
        if not (math.isfinite(self.min_gain) and 0 <= self.min_gain < 100):
            raise ConfigError(f"--min-gain must be a number of points in [0, 100), got {self.min_gain}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"--holdout must be in (0, 1), got {self.holdout}")
        if not self.methods:
            raise ConfigError("--method needs at least one scorer")
        from lbfood.engine.catalog import SCORERS

        for m in self.methods:
            SCORERS.entry(m)  # an unknown name raises here, before any trial trains
        if self.val_ood is None and not self.pseudo:
            raise ConfigError("no validation OOD: pass --val-ood DATASET or keep a --pseudo generator")
        if self.val_ood is not None and self.val_ood in self.ood:
            raise ConfigError(f"--val-ood {self.val_ood} is also a test set (--ood); validate on another set")
