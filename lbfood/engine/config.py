"""One frozen config per stage. Engine functions take these, never the CLI's arguments."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining with cross-entropy (paper §III-A, Eq. 2); also the base of fine-tuning."""

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
    schedule: str = "cosine"  # cosine | multistep
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "milestones" in kw:
            kw["milestones"] = tuple(kw["milestones"])
        return cls(**kw)


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning with L = CE + λ·L_LFF (paper §IV-B, Eq. 7). `None` fields take the dataset preset."""

    parent: str = "runs/latest"
    delta: float | None = None  # δ, Eq. 5: background if p_j(y) < δ
    mu: float | str | None = None  # μ, Eq. 6: norm margin; "auto" measures it from the parent model
    lam: float | None = None  # λ, Eq. 7: weight of L_LFF (0 = CE-only control)
    mask_from: str = "current"  # current | pretrained: which model's head picks background locations
    mu_quantile: float = 0.5  # --mu auto: this quantile of the parent's background norms
    probe_batches: int = 4  # ID training batches measured before the first step


@dataclass(frozen=True)
class ReportConfig:
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
    output: str | None = None  # write the result as .json, .csv or .md
    workers: int = 4  # DataLoader workers for large-image sets


@dataclass(frozen=True)
class ScoreConfig:
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
