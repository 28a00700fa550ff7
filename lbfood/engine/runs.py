"""Run folders: the one module that creates, resumes, finds, loads and writes them.

    model.safetensors        the weights (unwrapped: no `module.` / `_orig_mod.` prefixes)
    run.json                 `RunMeta`: architecture, width, classes, input size, normalisation, dataset,
                             the resolved config, versions, status, final metrics, calibrated thresholds
    train_state.safetensors  an epoch's commit: weights, optimizer buffers, RNG state, epoch (checkpoint.py)
    metrics.jsonl            one JSON line per epoch
    cache/, scorers/         evaluation's extracted features and fitted scorer statistics
    .lock                    held (flock) by the command that writes the run (checkpoint.lock)

`write` (and `update`, built on it) is the only writer of run.json; every write is atomic.
Loading never unpickles, and a run.json is validated (keys and types) before anything uses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lbfood import RUN_FORMAT, __version__
from lbfood.engine import io, models
from lbfood.engine import run_schema as schema
from lbfood.engine.config import has_bg_head
from lbfood.engine.errors import RunError
from lbfood.engine.io import atomic_write_json, load_tensors, save_tensors

RUNS_DIR = Path("runs")
# What a run folder holds (see the module docstring); every other module names these through here.
RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = io.LOCK_FILE  # held by the command that writes the run (checkpoint.lock)
CACHE_DIR = "cache"  # evaluation's extracted features
SCORERS_DIR = "scorers"  # fitted scorer statistics
SCHEMA = RUN_FORMAT  # the schema version of run.json ("format"); another version is refused on load


@dataclass
class RunMeta:
    """What run.json records. `run_dir` is where it was read from (not stored)."""

    kind: schema.Kind  # pretrain | finetune | imported
    arch: str
    width: float  # channel multiplier
    classes: list[str]
    input_size: int  # pixels
    mean: list[float]  # normalisation, per RGB channel
    std: list[float]
    data: str
    config: dict[str, Any]  # the resolved TrainConfig / FinetuneConfig
    preset: str | None = None
    status: schema.Status = "running"  # running | interrupted | stopped | trained (not calibrated) | done
    created: float = field(default_factory=time.time)
    epochs_done: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    threshold: schema.Threshold | None = None  # the default scorer's calibrated γ (paper Eq. 3)
    thresholds: dict[str, schema.Threshold] = field(default_factory=dict)  # scorer key -> calibrated γ
    far_gate: schema.FarGate | None = None  # `score`'s far-OOD gate: its threshold γ_far (scorers/fargate.py)
    parent: str | None = None  # finetune: the run it started from
    probe: schema.Probe | None = None  # finetune: the parent's background share and norm quantiles
    mu_auto: bool | None = None  # finetune: μ was measured (`--mu auto`)
    auto: schema.Auto | None = None  # --holdout runs: the scorer `--method auto` uses, and its γ
    validation: schema.Validation | None = None  # --holdout runs: every candidate's held-out validation
    validation_seconds: float | None = None
    source: dict[str, Any] | None = None  # imported: the library model, its weights file and sha256, --new-head
    run_dir: Path | None = field(default=None, compare=False)

    _OPTIONAL = ("seconds", "threshold", "far_gate", "parent", "probe", "mu_auto", "auto", "validation",
                 "validation_seconds", "source")

    def to_dict(self) -> dict[str, Any]:
        d = {"format": SCHEMA, "lbfood": __version__, "torch": torch.__version__}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "run_dir" or (f.name in self._OPTIONAL and v is None) or (f.name == "thresholds" and not v):
                continue
            d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike = "run.json") -> RunMeta:
        """Validate keys and types; any problem raises RunError naming the file."""
        if not isinstance(d, dict) or "format" not in d:
            raise RunError(f"{where} is not an lbfood run description; pass a run folder")
        if d["format"] != SCHEMA:
            raise RunError(f"{where} was written by lbfood {d.get('lbfood', '?')} (run format {d['format']}); "
                           f"this lbfood {__version__} reads format {SCHEMA}: re-run it with this version or "
                           "use the version that wrote it")
        fields = schema.fields_of(cls, d, where)
        gate = fields.get("far_gate")
        if gate is not None and not 0 < gate["keep"] <= 1:
            raise RunError(f"{where}: far_gate.keep must be in (0, 1], got {gate['keep']!r}; the file was edited or "
                           "damaged: re-run the training that made it")
        return cls(**fields)

    def replace(self, **changes: Any) -> RunMeta:
        return dataclasses.replace(self, **changes)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---- finding and creating folders -----------------------------------------------------------------


def is_run(path: str | os.PathLike, *, described: bool = False) -> bool:
    """Is `path` a run folder (it holds run.json)? With `described`, the run.json must also parse as an
    lbfood run description (a JSON object with its "format" and "lbfood" keys) — before anything is
    removed on that basis; it is not validated further (use `read`)."""
    f = Path(path) / RUN_FILE
    if not f.is_file():
        return False
    if not described:
        return True
    try:
        raw = json.loads(f.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(raw, dict) and "format" in raw and "lbfood" in raw


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The run folder that `path` lies in (itself excluded), or None: lbfood owns a run folder's files."""
    return next((f for f in Path(path).expanduser().absolute().parents if is_run(f)), None)


def new_run_dir(data: str, arch: str, root: Path = RUNS_DIR, kind: str = "") -> Path:
    """runs/<time>-<data>-<arch>[-kind], made unique with a suffix if needed (not created here)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

    base = root / f"{stamp}-{safe(data.split('/')[-1] or data)}-{safe(arch)}{'-' + kind if kind else ''}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def resume_target(out: str | os.PathLike | None) -> Path:
    """The run to resume: `out`, else the newest run folder under runs/. It must hold a finished epoch."""
    if out:
        p = Path(out)
        if not is_run(p):
            raise RunError(not_resumable_message(p))
    else:
        found = sorted(p for p in RUNS_DIR.glob("*") if is_run(p) and not p.is_symlink())
        if not found:
            raise RunError("--resume: no run under runs/ to resume; pass --out RUN")
        p = found[-1]
    if not (p / STATE_FILE).is_file():
        raise RunError(no_epoch_message(p))
    return p


def not_resumable_message(p: Path) -> str:
    """Why `--resume --out p` finds no run.json, and what works instead."""
    if under_a_file(p) or (p.exists() and not p.is_dir()):
        return f"--resume: {p} is not a folder; pass the run folder to resume with --out"
    if startable(p):  # missing, empty, or only a lock: killed before its first write
        return (f"--resume: {p} holds no run (it was stopped before writing anything), so there is nothing to "
                f"resume: run the same command without --resume, with --out {p}")
    return f"--resume: {p} is not a run folder (no run.json); pass the run to resume with --out"


def under_a_file(p: Path) -> bool:
    """A file stands where one of `p`'s folders should be (`--out notes.txt/run`): nothing can be made there."""
    return any(q.exists() and not q.is_dir() for q in p.parents)


def no_epoch_message(run_dir: Path) -> str:
    return (f"{run_dir} holds no finished epoch (it stopped during its first), so there is nothing to resume: "
            f"run the same command without --resume, with --out {run_dir} (its files are replaced)")


_START_FILES = (RUN_FILE, METRICS_FILE, LOCK_FILE)  # all a run killed in its first epoch can hold
_TEMP_OF = (RUN_FILE, METRICS_FILE, STATE_FILE, MODEL_FILE)  # ... and its writes' temp files


def startable(p: Path) -> bool:
    """`p` is missing, empty, or holds only an lbfood run that never finished an epoch (safe to start over
    in): nothing else is ever removed."""
    if not p.exists():
        return True
    if not p.is_dir() or p.is_symlink():
        return False
    for e in p.iterdir():
        temp = e.name.endswith(".tmp") and any(e.name.startswith(f".{n}.") for n in _TEMP_OF)
        if not (e.is_file() and not e.is_symlink() and (e.name in _START_FILES or temp)):
            return False
    if (p / RUN_FILE).exists():
        try:
            meta = read(p)
        except RunError:
            return False  # not lbfood's (or damaged): leave it to the user
        return meta.epochs_done == 0 and meta.status != "done"
    return not (p / METRICS_FILE).exists()


def start_over(p: Path) -> None:
    """Remove what a run killed in its first epoch left (see `startable`), keeping the lock file."""
    for e in p.iterdir():
        if e.name != LOCK_FILE:
            e.unlink()


def output_dir(out: str | os.PathLike | None, *, resume: bool, data: str, arch: str, suffix: str = "") -> Path:
    """Where a training run writes: the run to resume, `out` (new, empty, or a run that never finished an
    epoch), or a new runs/ folder."""
    if resume:
        return resume_target(out)
    if out:
        p = Path(out)
        if under_a_file(p):
            raise RunError(f"--out {p}: {next(q for q in p.parents if q.exists())} is a file, not a folder; "
                           "pick a folder path")
        if not startable(p):
            raise RunError(not_startable_message(p))
        return p
    return new_run_dir(data, arch, kind=suffix)


def not_startable_message(p: Path) -> str:
    if (p / STATE_FILE).is_file() and is_run(p):
        return f"--out {p} holds a run with finished epochs; continue it with --resume, or pick a new folder"
    return f"--out {p} already exists and is not empty; pick a new folder"


def being_written(run_dir: Path) -> bool:
    """Does a command hold the run's lock now (training it)? Tested with a shared lock, released at once;
    nothing is created."""
    return io.is_locked(Path(run_dir) / LOCK_FILE)


def unfinished(meta: RunMeta, uses: str = "these numbers are") -> str | None:
    """A note for using a run that is not done (killed, stopped or still training), else None. `uses`
    says what comes from its last saved epoch ("fine-tuning starts from")."""
    if meta.status == "done":
        return None
    if meta.kind == "imported":
        return (f"run {meta.run_dir} is an import that was not calibrated (status {meta.status}); run the same "
                "`lbfood import` again with a new --out")
    total = meta.config.get("epochs", "?")
    if meta.status == "running" and being_written(meta.run_dir):  # --resume would be refused by the lock
        return (f"run {meta.run_dir} is still being trained by another lbfood command ({meta.epochs_done} of "
                f"{total} epochs so far): {uses} its epoch-{meta.epochs_done} weights; run this again once "
                "it is done for the final ones")
    return (f"run {meta.run_dir} is unfinished (status {meta.status}, {meta.epochs_done} of {total} epochs): "
            f"{uses} its epoch-{meta.epochs_done} weights; finish it with `lbfood {meta.kind} --resume "
            f"--out {meta.run_dir}`")


def resolve(path: str | os.PathLike) -> Path:
    """A run folder; `runs/latest` (or any symlink) resolved. Missing folders raise RunError."""
    p = Path(path)
    if not p.exists():
        hint = (" (no run yet: run `lbfood pretrain` first)" if p.name == "latest" else
                "; pass a run folder written by `lbfood pretrain` or `lbfood finetune` (or runs/latest)")
        raise RunError(f"run {p} not found{hint}")
    if not p.is_dir():
        raise RunError(f"{p} is not a run folder (it is a file); pass the folder that holds run.json")
    return p.resolve()


def point_latest(run_dir: Path, runs: Path | None = None) -> None:
    """Make runs/latest a (relative) symlink to `run_dir`, replaced atomically: later commands default to it."""
    runs = runs or RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    latest = runs / "latest"
    tmp = runs / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(Path(run_dir).resolve(), runs.resolve()))
    os.replace(tmp, latest)


# ---- run.json: the one reader and the one writer --------------------------------------------------


def read(path: str | os.PathLike) -> RunMeta:
    """The run's validated run.json, with `run_dir` set to the resolved folder."""
    run_dir = resolve(path)
    meta_path = run_dir / RUN_FILE
    if not meta_path.is_file():
        raise RunError(f"{run_dir} is not an lbfood run (no run.json); pass a folder written by "
                       "`lbfood pretrain` or `lbfood finetune`")
    try:
        raw = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{meta_path} is corrupt (not JSON); re-run the training that made it") from None
    except RecursionError:  # `[[[[…` thousands deep: valid JSON perhaps, but no run description
        raise RunError(f"{meta_path} is corrupt (nested too deep to be a run description); re-run the training "
                       "that made it") from None
    except OSError as e:
        raise RunError(f"{meta_path} cannot be read ({e.strerror}); check its permissions") from None
    meta = RunMeta.from_dict(raw, meta_path)
    meta.run_dir = run_dir
    return meta


def write(run_dir: str | os.PathLike, meta: RunMeta) -> None:
    """Write run.json atomically: the only place that does."""
    atomic_write_json(Path(run_dir) / RUN_FILE, meta.to_dict())


# A run's status: running → (interrupted | stopped, then running again on --resume) → trained (every epoch
# saved, not calibrated) → done (calibrated, runs/latest points at it).
STATUSES = ("running", "interrupted", "stopped", "trained", "done")


def mark(run_dir: str | os.PathLike, meta: RunMeta, status: str | None = None, **changes: Any) -> RunMeta:
    """Record a training run's progress in run.json: its new `status` (one of STATUSES) and/or `changes`
    (epochs done, metrics, seconds); returns the new metadata. The loop says what happened, this writes it."""
    if status is not None:
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        changes["status"] = status
    meta = meta.replace(**changes)
    write(run_dir, meta)
    return meta


def update(run_dir: str | os.PathLike, **changes: Any) -> RunMeta:
    """Read run.json, replace `changes`, write it back; returns the new metadata."""
    meta = read(run_dir).replace(**changes)
    write(meta.run_dir, meta)
    return meta


# ---- weights and training state -------------------------------------------------------------------


def save_model(run_dir: Path, model: torch.nn.Module) -> None:
    """Weights alone (a training run commits them with its train state: checkpoint.save)."""
    save_tensors(run_dir / MODEL_FILE, unwrap(model).state_dict())


def build_from_meta(meta: RunMeta) -> models.FeatureModel:
    """The run's architecture, with the background head of a `--objective bg-head` run."""
    return models.build(meta.arch, num_classes=len(meta.classes), width=float(meta.width),
                        bg_head=has_bg_head(meta.config))


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[models.FeatureModel, RunMeta]:
    """(model in eval mode, run.json). Never unpickles: weights come from safetensors."""
    meta = read(path)
    weights = meta.run_dir / MODEL_FILE
    if not weights.is_file():
        todo = ("its weights were removed: put model.safetensors back, or re-run the training that made it"
                if meta.status in ("done", "trained") else
                f"finish it with `lbfood {meta.kind} --resume --out {meta.run_dir}`")
        raise RunError(f"{meta.run_dir} has no model.safetensors (status: {meta.status}); {todo}")
    model = build_from_meta(meta)
    try:
        state = load_tensors(weights)
    except Exception:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise RunError(f"{weights} is corrupt; re-run the training that made it") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shapes differ: run.json (classes, width) does not describe these weights
        missing, unexpected = ["(shape mismatch)"], []
    if missing or unexpected:
        raise RunError(f"{weights} does not match run.json ({meta.arch} width {meta.width:g}, "
                       f"{len(meta.classes)} classes); the folder mixes two runs: re-run the training that made it")
    bad = sum(int((~torch.isfinite(t)).sum()) for t in state.values() if t.is_floating_point())
    if bad:  # every score would be NaN, every verdict OOD, and a fine-tuning would start from NaN
        raise RunError(f"{weights} holds {bad} non-finite weight(s) (NaN or inf): the training that made it "
                       f"diverged; train it again into a new folder with a smaller learning rate, e.g. "
                       f"`lbfood {meta.kind} --lr {float(meta.config.get('lr') or 0.1) / 10:g} --out NEW` "
                       "with the options it was trained with")
    return model.to(device).eval(), meta
