"""Evaluation: `report` (ID accuracy and OOD metrics per method and dataset), `score_images` (a verdict
for each of the user's image files) and `calibrate` (the threshold γ of paper Eq. 3, S(x) ≥ γ ⇒ ID).

Extract once, score many: one forward pass per (run, dataset, split, input size, normalisation) gives
the logits, pooled features and block norms every post-hoc scorer reads; they are cached as
safetensors in `<run>/cache/`, so a second report with other methods runs no forward pass. Only ODIN
(it perturbs the input) runs its own pass. Scorers that need ID training statistics are fitted once
and stored in `<run>/scorers/<name>[-<params hash>].safetensors`, then reloaded without refitting.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbfood import __version__
from lbfood.engine import checkpoint, distributed, metrics, scorers
from lbfood.engine import features as fx
from lbfood.engine.benchmarks import BUILTIN, load_benchmark
from lbfood.engine.config import ReportConfig, ScoreConfig
from lbfood.engine.data import DatasetSpec, ImageSet, LoadOptions, default_root
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.holdout import split_holdout
from lbfood.engine.data.images import IN_MEMORY_MAX_SIZE, decode
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.distributed import DistInfo
from lbfood.engine.errors import ConfigError, DataError, LbfoodError, RunError
from lbfood.engine.features import Features
from lbfood.engine.io import atomic_write_bytes, atomic_write_json, load_tensors, save_tensors
from lbfood.engine.runtime import Runtime, make_runtime
from lbfood.engine.scorers import Scorer

OUTPUT_FORMATS = {".json": "json", ".csv": "csv", ".md": "md", ".markdown": "md"}
_SCORER_FORMAT = "lbfood-scorer-1"


@dataclass(frozen=True)
class Step:
    """Progress: what the evaluation is doing now (the CLI shows it; the engine never prints)."""

    message: str


# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One run's numbers. `metrics[method][dataset]` = {fpr95, auroc, aupr_in, aupr_out} as fractions;
    dataset "average" is the mean over the OOD datasets."""

    name: str
    path: str
    kind: str
    arch: str
    width: float
    data: str
    id_accuracy: float
    metrics: dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class ReportResult:
    """What `report` measured, and everything needed to read it later (convention, params, data root)."""

    id_data: str
    ood: tuple[str, ...]
    methods: tuple[str, ...]
    params: dict[str, dict[str, Any]]  # method -> the hyper-parameters it ran with
    convention: str  # FPR95 convention, see metrics.py
    runs: tuple[RunResult, ...]
    data_root: str
    num_images: dict[str, int]  # dataset -> images scored (the ID test split included)
    benchmark: str | None = None
    paper: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # fractions, like `metrics`
    labels: dict[str, str] = field(default_factory=dict)  # method -> name as printed in the paper
    extractions: int = 0  # forward passes over a dataset split (feature-cache misses)
    odin_passes: int = 0  # ODIN's own passes (gradient + perturbed forward) over a split
    fits: int = 0  # scorers fitted now (the others were loaded from <run>/scorers/)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ood"], d["methods"], d["notes"] = list(self.ood), list(self.methods), list(self.notes)
        return d


@dataclass(frozen=True)
class Row:
    """One scored file. `error` is set (and the rest None) when it could not be read or scored."""

    file: str
    predicted: str | None = None  # class name
    confidence: float | None = None  # max softmax probability
    score: float | None = None  # higher = more in-distribution (paper Eq. 3)
    verdict: str | None = None  # "ID" (score ≥ threshold) or "OOD"
    error: str | None = None
    method: str = ""
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- shared machinery -----------------------------------------------------------------------------

_FP_MEMO: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(run_dir: str | os.PathLike) -> str:
    """Content hash (SHA-256, 16 hex digits) of `<run>/model.safetensors`; memoised by size and mtime."""
    path = Path(run_dir) / "model.safetensors"
    try:
        st = path.stat()
    except OSError:
        raise RunError(f"{run_dir} has no model.safetensors; finish or --resume that run first") from None
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FP_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FP_MEMO[memo] = h.hexdigest()[:16]
    return _FP_MEMO[memo]


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, sort_keys=True, default=list))


def scorer_key(s: Scorer) -> str:
    """`name`, or `name-<hash>` when any hyper-parameter differs from the scorer's defaults."""
    changed = {k: v for k, v in s.params.items() if v != s.defaults.get(k)}
    if not changed:
        return s.name
    digest = hashlib.sha1(json.dumps(_jsonable(changed), sort_keys=True).encode()).hexdigest()[:8]
    return f"{s.name}-{digest}"


def _st_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - a damaged or foreign file is a miss, not an error
        return None


class _Miss(Exception):
    """Raised by a loader factory to ask the feature cache whether it has an entry, without computing."""


def _fail_on_miss():
    raise _Miss


def _data_root(meta: dict[str, Any], explicit: str | os.PathLike | None) -> Path:
    if explicit:
        return Path(explicit)
    cfg_root = (meta.get("config") or {}).get("data_root")
    return Path(cfg_root) if cfg_root else default_root()


class _RunEval:
    """One run under evaluation: its model, its feature cache and fitted scorers, and counters."""

    def __init__(self, run_dir: Path, model: torch.nn.Module, meta: dict[str, Any], rt: Runtime, *,
                 id_data: str, data_root: Path, batch_size: int = 256, workers: int = 4,
                 data: dict | None = None, on_event: Callable[[Step], None] | None = None,
                 limit: int | None = None, dist: DistInfo | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.run_dir, self.model, self.meta, self.rt = Path(run_dir), model, meta, rt
        self.id_data, self.data_root = id_data, Path(data_root)
        self.batch_size, self.workers = batch_size, max(0, min(workers, os.cpu_count() or 1))
        self.size = int(meta["input_size"])
        self.mean, self.std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
        self.fp = weights_fingerprint(self.run_dir)
        self.data = data if data is not None else {}  # (name, split, size, root) -> ImageSet, shared
        self.on_event = on_event
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        self.limit = limit  # only the first `limit` images of each split (smoke tests)
        # Under data parallelism each rank extracts its shard of every split and the rows are gathered;
        # every rank then computes the same numbers, and only rank 0 writes files.
        self.dist = dist or DistInfo()
        self.notes: list[str] = []
        self.memo: dict[str, Features] = {}
        self.extractions = self.odin_passes = self.fits = 0
        # Set when FeatureNorm will need the jigsaw extraction of the training split: then every scorer
        # fits from it (it holds the plain features too), and the split is extracted once, not twice.
        self.jigsaw_train = False
        cfg = meta.get("config") or {}
        self.opts = LoadOptions(root=self.data_root, image_size=self.size,
                                val_split=float(cfg.get("val_split") or 0.0),
                                classes_file=Path(cfg["classes_file"]) if cfg.get("classes_file") else None,
                                seed=int(cfg.get("seed") or 0))

    def _event(self, message: str) -> None:
        if self.on_event is not None:
            self.on_event(Step(message))

    # -- data

    def images(self, name: str, split: str) -> ImageSet:
        """A split at the run's input size (shared across runs of one report)."""
        key = (name, split, self.size, str(self.data_root), self.opts.val_split, self.opts.seed, self.limit)
        if key not in self.data:
            spec = get_dataset(name)
            self._event(f"loading {name} ({split})")
            images = spec.load(self.opts, split)
            if self.limit is not None:
                images = images.subset(torch.arange(min(self.limit, len(images))))
            holdout = float((self.meta.get("config") or {}).get("holdout") or 0.0)
            if holdout and split == "train" and name == self.meta["data"]:
                images = split_holdout(images, holdout)[0]  # fit on the images the run trained on
            if len(images) == 0:
                raise DataError(f"{name} {split}: no images to evaluate")
            if images.skipped:
                self.notes.append(f"{name}: skipped {images.skipped} image(s) that could not be decoded")
            if name == self.id_data and images.classes and list(images.classes) != list(self.meta["classes"]):
                raise ConfigError(f"{name} has classes {_short(images.classes)} but run {self.run_dir.name} "
                                  f"was trained on {_short(self.meta['classes'])}; pass the run's --id dataset")
            self.data[key] = images
        return self.data[key]

    def loader(self, images: ImageSet):
        return make_loader(images, batch_size=self.batch_size, mean=self.mean, std=self.std,
                           image_size=self.size, train=False, device=self.rt.device,
                           channels_last=self.rt.channels_last, workers=self.workers)

    def _identity(self, spec: DatasetSpec) -> str:
        """What the cached features were computed from: the data's location, size on disk and date."""
        try:
            if spec.generated:
                return f"generated:{spec.count(self.opts)}"
            where = spec.path(self.opts)
            count = spec.count(self.opts)
            mtime = where.stat().st_mtime_ns if where.exists() else 0
        except (LbfoodError, OSError):
            return "unknown"
        return f"{where.resolve() if where.exists() else where}:{count}:{mtime}"

    def features(self, name: str, split: str, *, jigsaw: bool = False, peek: bool = False) -> Features | None:
        """Cached features of a split (extracted without augmentation); `peek` returns None on a miss."""
        spec = get_dataset(name)
        key = f"{name}.{split}.{self.size}px" + (".jigsaw" if jigsaw else "") + \
            (f".first{self.limit}" if self.limit is not None else "")
        if key in self.memo:
            return self.memo[key]
        fingerprint = (f"{self.fp}|lbfood={__version__}|{self._identity(spec)}|size={self.size}|mean={self.mean}|std={self.std}"
                       f"|val_split={self.opts.val_split}|seed={self.opts.seed}")

        def make() -> Any:
            if peek:
                _fail_on_miss()
            images = self.images(name, split)
            self.extractions += 1
            self._event(f"extracting {name} ({split}, {len(images)} images) with {self.run_dir.name}")
            return self.loader(self._shard(images))

        try:
            feats = fx.cached_extract(self.run_dir / "cache", key, self.model, make, fingerprint=fingerprint,
                                      device=self.rt.device, precision=self.rt.precision, blocks=True,
                                      jigsaw=jigsaw, dist=self.dist)
        except _Miss:
            return None
        self.memo[key] = feats
        return feats

    def _shard(self, images: ImageSet) -> ImageSet:
        """This rank's contiguous share of a split (all of it for one process)."""
        if not self.dist.enabled:
            return images
        if len(images) < self.dist.world:
            raise DataError(f"{images.name}: {len(images)} image(s) cannot be shared by {self.dist.world} "
                            "processes; evaluate it with fewer")
        start, stop = distributed.shard(len(images), self.dist)
        return images.subset(torch.arange(start, stop))

    def train_features(self, jigsaw: bool) -> Features:
        """ID training features for fitting; a cached jigsaw extraction serves plain requests too."""
        jigsaw = jigsaw or self.jigsaw_train
        if not jigsaw:
            hit = self.features(self.id_data, "train", jigsaw=True, peek=True)
            if hit is not None:
                return hit
        return self.features(self.id_data, "train", jigsaw=jigsaw)

    # -- scorers

    def scorer(self, name: str, params: dict[str, Any] | None = None) -> Scorer:
        """Scorer `name`, with its statistics loaded from `<run>/scorers/` or fitted now and stored."""
        s = scorers.get(name, **(params or {}))
        if not s.needs_fit or s.fitted:
            return s
        stem = scorer_key(s) + (f".first{self.limit}" if self.limit is not None else "")
        path = self.run_dir / "scorers" / f"{stem}.safetensors"
        want = {"format": _SCORER_FORMAT, "scorer": s.name, "params": json.dumps(_jsonable(s.params)),
                "weights": self.fp, "id_data": self.id_data, "limit": str(self.limit)}
        loaded = None
        if path.is_file():
            meta = _st_metadata(path)
            if meta is not None and all(meta.get(k) == v for k, v in want.items()):
                try:
                    loaded = s.load_state_dict(load_tensors(path))
                except (LbfoodError, OSError, ValueError):
                    pass  # damaged: refit below and overwrite
        # All ranks load or all fit: fitting may extract, and extraction is a collective.
        if distributed.agree(loaded is not None, self.dist, self.rt.device):
            return loaded
        jigsaw = s.name == "featurenorm"  # NormRatio compares each image with its jigsaw puzzle
        train = self.train_features(jigsaw)
        self._event(f"fitting {s.name} on {len(train)} {self.id_data} training images")
        s.fit(train, self.model.head)
        self.fits += 1
        if self.dist.is_main:
            save_tensors(path, s.state_dict(), metadata=want)
        return s

    def scores(self, s: Scorer, name: str, split: str, *, user_std: bool = False) -> torch.Tensor:
        """Scores (N,) of a split; ODIN runs its own pass, every other scorer reads cached features."""
        if s.needs_images:
            images = self.images(name, split)
            self.odin_passes += 1
            self._event(f"{s.name}: scoring {name} ({split}, {len(images)} images) with {self.run_dir.name}")
            mine = s.score_images(self.model, self.loader(self._shard(images)), device=self.rt.device,
                                  std=None if user_std else self.std)
            return distributed.gather_rows(mine, len(images), self.dist, self.rt.device)
        return s.score(self.features(name, split))


def _short(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f", … ({len(names)} in all)" if len(names) > n else "")


def _keep_threshold(scores: torch.Tensor, tpr: float) -> float:
    """The largest γ with share(scores ≥ γ) ≥ tpr: the k-th largest score, k = ⌈tpr·n⌉."""
    s = np.sort(scores.detach().to("cpu").double().numpy())[::-1]
    k = min(max(math.ceil(tpr * len(s) - 1e-9), 1), len(s))
    return float(s[k - 1])


# ---- calibrate ------------------------------------------------------------------------------------


def calibrate(run_dir: str | os.PathLike, model: torch.nn.Module, meta: dict[str, Any], rt: Runtime,
              method: str = "react", tpr: float = 0.95, *, params: dict[str, Any] | None = None,
              data_root: str | os.PathLike | None = None, batch_size: int = 256, workers: int = 4,
              on_event: Callable[[Step], None] | None = None, limit: int | None = None) -> dict[str, Any]:
    """The threshold γ (paper Eq. 3) that keeps a share `tpr` of the run's held-out ID images (its
    dataset's test split): {"method", "value", "tpr", "split", "data", "params"}, for run.json's
    "threshold". Features and fitted scorers are cached in the run folder, so later reports reuse them.
    `limit` (default: the run's own `--limit`, if it was trained with one) uses only the first images
    of the training and test splits, as the run's smoke-test training did.
    """
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    run_dir = Path(run_dir)
    if limit is None:
        limit = (meta.get("config") or {}).get("limit")
    ev = _RunEval(run_dir, model, meta, rt, id_data=meta["data"], data_root=_data_root(meta, data_root),
                  batch_size=batch_size, workers=workers, on_event=on_event, limit=limit)
    # The training split is extracted once here, with FeatureNorm's jigsaw norms too, so that later
    # reports fit every scorer from the cache without another pass over the training data.
    ev.jigsaw_train = True
    s = ev.scorer(method, params)
    scores = ev.scores(s, meta["data"], "test", user_std=bool(params and "std" in params))
    entry = {"method": method, "value": _keep_threshold(scores, tpr), "tpr": tpr, "split": "test",
             "data": meta["data"], "params": _jsonable(s.params)}
    if limit is not None:
        entry["limit"] = limit
    return entry


def stored_threshold(meta: dict[str, Any], s: Scorer) -> float | None:
    """The run's calibrated threshold for scorer `s` (same method and parameters), if it has one."""
    want = _jsonable(s.params)
    candidates = [(meta.get("thresholds") or {}).get(scorer_key(s)), meta.get("threshold")]
    for entry in candidates:
        if not isinstance(entry, dict) or entry.get("method") != s.name or "value" not in entry:
            continue
        if entry.get("params", want) == want:
            return float(entry["value"])
    return None


def store_threshold(run_dir: str | os.PathLike, key: str, entry: dict[str, Any]) -> None:
    """Add `entry` to run.json's "thresholds" under `key` (and as "threshold" if the run has none)."""
    run_dir, meta = checkpoint.read_meta(run_dir)
    meta.setdefault("thresholds", {})[key] = entry
    if not meta.get("threshold"):
        meta["threshold"] = entry
    atomic_write_json(run_dir / "run.json", meta)


# ---- report ---------------------------------------------------------------------------------------


def output_format(path: str | os.PathLike) -> str:
    """"json", "csv" or "md" from the file's extension; anything else raises ConfigError."""
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise ConfigError(f"--output {path}: unknown extension {ext or '(none)'!r}; use .json, .csv or .md")
    return OUTPUT_FORMATS[ext]


def _default_ood(id_data: str) -> tuple[str, ...]:
    for name in BUILTIN:
        bench = load_benchmark(name)
        if bench.id == id_data:
            return bench.ood
    raise ConfigError(f"no OOD datasets for {id_data}: pass --ood NAME (repeatable; e.g. folder:PATH) or "
                      "--benchmark; `lbfood datasets` lists the datasets")


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def report(cfg: ReportConfig, on_event: Callable[[Step], None] | None = None,
           dist: DistInfo | None = None) -> ReportResult:
    """ID accuracy and, per method and OOD set, FPR95/AUROC/AUPR-In/AUPR-Out (fractions) of a run and
    its `compare` runs; everything is validated before the first forward pass.

    Under torchrun (`dist`), each rank extracts a shard of every split; all ranks get the same result
    and only rank 0 writes (feature cache, fitted scorers, `cfg.output`)."""
    t0 = time.time()
    dist = dist or DistInfo()
    from lbfood.engine.sweep.auto import resolve_report

    cfg = resolve_report(cfg)  # --method auto: the first run's validated scorer
    fmt = output_format(cfg.output) if cfg.output else None
    if cfg.fpr_convention not in metrics.CONVENTIONS:
        raise ConfigError(f"unknown --fpr-convention {cfg.fpr_convention!r}; valid: {', '.join(metrics.CONVENTIONS)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    methods = _dedupe(cfg.methods)
    if not methods:
        raise ConfigError(f"no --method given; valid: {', '.join(scorers.names())}")
    stray = sorted(set(cfg.params) - set(methods))
    if stray:
        raise ConfigError(f"parameters given for {', '.join(stray)}, which is not a requested --method")
    protos = {m: scorers.get(m, **cfg.params.get(m, {})) for m in methods}  # unknown names/params raise
    bench = load_benchmark(cfg.benchmark) if cfg.benchmark else None

    runs = [checkpoint.read_meta(p) for p in (cfg.model, *cfg.compare)]
    seen: set[Path] = set()
    for run_dir, _ in runs:
        if run_dir in seen:
            raise ConfigError(f"run {run_dir} is given twice (--model/--compare)")
        seen.add(run_dir)
    first = runs[0][1]
    id_data = cfg.id_data or (bench.id if bench else first["data"])
    id_spec = get_dataset(id_data)
    if id_spec.role != "id":
        raise ConfigError(f"--id {id_data} is an OOD set (no class labels); pass the ID dataset the run "
                          f"was trained on ({first['data']})")
    ood = _dedupe(cfg.ood) if cfg.ood else (bench.ood if bench else _default_ood(id_data))
    for name in ood:
        spec = get_dataset(name)  # unknown names raise with the valid ones
        if name == id_data:
            raise ConfigError(f"--ood {name} is the ID dataset; pass OOD sets")
        if spec.role == "id":
            raise ConfigError(f"--ood {name} is an ID dataset (it has class labels); OOD sets are "
                              f"{', '.join(s.name for s in _ood_specs())} or folder:PATH")
    notes: list[str] = []
    if bench is not None:
        sizes = {int(m["input_size"]) for _, m in runs}
        if sizes != {bench.image_size}:
            notes.append(f"benchmark {bench.name} is evaluated at {bench.image_size} px; the run takes "
                         f"{', '.join(map(str, sorted(sizes)))} px")
        archs = sorted({m["arch"] for _, m in runs} - {bench.arch})
        if archs and bench.paper:
            notes.append(f"the paper's numbers are for {bench.arch}; this run is {', '.join(archs)}")
    rt = make_runtime(distributed.rank_device(cfg.device, dist), cfg.precision)
    data_root = _data_root(first, cfg.data_root)
    data: dict = {}
    counts = {"extractions": 0, "odin_passes": 0, "fits": 0}
    num_images: dict[str, int] = {}
    results = []
    for run_dir, _ in runs:
        model, meta = checkpoint.load_run(run_dir, rt.device)
        model = rt.prepare(model)
        ev = _RunEval(run_dir, model, meta, rt, id_data=id_data, data_root=data_root, batch_size=cfg.batch_size,
                      workers=cfg.workers, data=data, on_event=on_event, dist=dist)
        ev.jigsaw_train = any(p.name == "featurenorm" and p.needs_fit and not p.fitted for p in protos.values())
        try:
            test = ev.features(id_data, "test")
            num_images[id_data] = len(test)
            accuracy = metrics.accuracy(test.logits, test.labels)
            per_method: dict[str, dict[str, dict[str, float]]] = {}
            for m in methods:
                params = cfg.params.get(m, {})
                s = ev.scorer(m, params)
                user_std = "std" in params
                id_scores = ev.scores(s, id_data, "test", user_std=user_std)
                rows: dict[str, dict[str, float]] = {}
                for name in ood:
                    ood_scores = ev.scores(s, name, "test", user_std=user_std)
                    num_images[name] = len(ood_scores)
                    rows[name] = metrics.summarize(id_scores, ood_scores, cfg.fpr_convention)
                rows["average"] = {k: float(np.mean([rows[n][k] for n in ood])) for k in metrics.SUMMARY_KEYS}
                per_method[m] = rows
        finally:
            for k in counts:
                counts[k] += getattr(ev, k)
            notes.extend(n for n in ev.notes if n not in notes)
        results.append(RunResult(name=run_dir.name, path=str(run_dir), kind=str(meta.get("kind", "")),
                                 arch=str(meta["arch"]), width=float(meta["width"]), data=str(meta["data"]),
                                 id_accuracy=accuracy, metrics=per_method))
        del model, ev

    paper: dict[str, dict[str, dict[str, float]]] = {}
    if bench is not None:
        comparable = set(ood) == set(bench.ood)
        for m in methods:
            rows = bench.paper.get(m, {})
            kept = {ds: {k: v / 100.0 for k, v in cell.items()} for ds, cell in rows.items()
                    if ds in ood or (ds == "average" and comparable)}
            if kept:
                paper[m] = kept
    params = {m: _jsonable(protos[m].params) for m in methods}
    for m in methods:
        if protos[m].needs_images and "std" in params[m] and "std" not in cfg.params.get(m, {}):
            params[m]["std"] = list(first["std"])  # ODIN divides its step by the run's std (see odin.py)
    if bench is not None and bench.paper and id_data != bench.id:
        notes.append(f"the paper's numbers are for ID {bench.id}, not {id_data}")
    result = ReportResult(
        id_data=id_data, ood=tuple(ood), methods=methods, params=params, convention=cfg.fpr_convention,
        runs=tuple(results), data_root=str(data_root), num_images=num_images,
        benchmark=bench.name if bench else None, paper=paper,
        labels={m: bench.labels[m] for m in methods if bench and m in bench.labels},
        notes=tuple(notes), seconds=round(time.time() - t0, 3), output=cfg.output, **counts)
    if cfg.output and dist.is_main:
        write_report(result, cfg.output, fmt)
    return result


def _ood_specs() -> list[DatasetSpec]:
    from lbfood.engine.data import specs

    return [s for s in specs() if s.role == "ood"]


def write_report(result: ReportResult, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write `result` as JSON (everything), CSV (one row per run, method and dataset; fractions) or
    Markdown (percentages with two decimals), chosen by the extension; atomically."""
    fmt = fmt or output_format(path)
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2) + "\n"
    elif fmt == "csv":
        text = _csv(result)
    else:
        text = _markdown(result)
    atomic_write_bytes(path, text.encode("utf-8"))


def _datasets(result: ReportResult) -> list[str]:
    return [*result.ood, "average"]


def _csv(result: ReportResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "kind", "method", "dataset", *metrics.SUMMARY_KEYS, "id_accuracy", "convention",
                "paper_fpr95", "paper_auroc"])
    for run in result.runs:
        for m in result.methods:
            for ds in _datasets(result):
                cell = run.metrics[m][ds]
                paper = result.paper.get(m, {}).get(ds, {})
                w.writerow([run.name, run.kind, m, ds, *(repr(cell[k]) for k in metrics.SUMMARY_KEYS),
                            repr(run.id_accuracy), result.convention,
                            repr(paper["fpr95"]) if paper else "", repr(paper["auroc"]) if paper else ""])
    return buf.getvalue()


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:.2f}"


def _markdown(result: ReportResult) -> str:
    lines = ["# lbfood report", ""]
    conv = "ID positive (paper)" if result.convention == "paper" else "OOD positive (OpenOOD)"
    lines.append(f"ID: {result.id_data} (test split) · FPR95 convention: {conv}"
                 + (f" · benchmark: {result.benchmark}" if result.benchmark else ""))
    lines.append("")
    for run in result.runs:
        lines.append(f"- {run.name} ({run.kind}, {run.arch} ×{run.width:g}): ID accuracy {_pct(run.id_accuracy)} %")
    lines.append("")
    has_paper = bool(result.paper)
    head = ["Run", "Method", "Dataset", "FPR95↓", "AUROC↑", "AUPR-In↑", "AUPR-Out↑"]
    if has_paper:
        head += ["Paper FPR95↓", "Paper AUROC↑"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for run in result.runs:
        for m in result.methods:
            for ds in _datasets(result):
                cell = run.metrics[m][ds]
                row = [run.name, result.labels.get(m, m), "Average" if ds == "average" else ds,
                       *(_pct(cell[k]) for k in metrics.SUMMARY_KEYS)]
                if has_paper:
                    paper = result.paper.get(m, {}).get(ds)
                    row += [_pct(paper["fpr95"]) if paper else "", _pct(paper["auroc"]) if paper else ""]
                lines.append("| " + " | ".join(r.replace("|", "\\|") for r in row) + " |")
    lines.append("")
    lines.append("All values are percentages. " + "; ".join(
        f"{m}: {json.dumps(p, sort_keys=True)}" for m, p in result.params.items()))
    return "\n".join(lines) + "\n"


# ---- score ----------------------------------------------------------------------------------------


def preprocess(arr: np.ndarray, size: int) -> np.ndarray:
    """A decoded uint8 (H, W, 3) image as the run's evaluation transform sees it, (size, size, 3).

    32-px runs: shorter side resized to `size`, then centre crop (as OOD folders are loaded).
    Larger runs: torchvision's `Resize(round(size·256/224))` + `CenterCrop(size)`, as the file loader.
    """
    from PIL import Image

    from lbfood.engine.data.images import resize_center_crop

    if size <= IN_MEMORY_MAX_SIZE:
        return resize_center_crop(arr, size)
    resize = int(round(size * 256 / 224))
    h, w = arr.shape[:2]
    new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    if (new_h, new_w) != (h, w):
        arr = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.BILINEAR))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def _walk(folder: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(found, key=str)


def expand_paths(paths: Sequence[str]) -> list[tuple[str, str | None]]:
    """(file, error) pairs for files, folders (every non-hidden file, recursively) and globs, in order,
    each file once; a path that names nothing becomes an error entry."""
    out: dict[str, str | None] = {}
    for p in paths:
        path = Path(p).expanduser()
        if path.is_file():
            out.setdefault(str(path), None)
        elif path.is_dir():
            files = _walk(path)
            if not files:
                out.setdefault(str(path), "empty folder: no files to score")
            for f in files:
                out.setdefault(str(f), None)
        elif glob.has_magic(p):
            matches = sorted(glob.glob(os.path.expanduser(p), recursive=True))
            if not matches:
                out.setdefault(p, "no file matches this pattern")
            for m in matches:
                mp = Path(m)
                for f in (_walk(mp) if mp.is_dir() else [mp]):
                    out.setdefault(str(f), None)
        else:
            out.setdefault(p, "file not found")
    return list(out.items())


def score_images(cfg: ScoreConfig, on_event: Callable[[Step], None] | None = None) -> list[Row]:
    """Score each image file with `cfg.method`: predicted class, confidence, score and verdict (ID if
    score ≥ γ, paper Eq. 3). γ is `cfg.threshold`, else the run's calibrated one (computed on the ID
    test split and stored in run.json on first use). Unreadable files become error rows."""
    if not cfg.paths:
        raise ConfigError("no images given; pass files, folders or globs, e.g. `lbfood score photos/`")
    from lbfood.engine.sweep.auto import resolve_score

    cfg = resolve_score(cfg)  # --method auto: the run's validated scorer and threshold
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.threshold is not None and not math.isfinite(cfg.threshold):
        raise ConfigError(f"--threshold must be a finite number, got {cfg.threshold}")
    s = scorers.get(cfg.method, **cfg.params)  # unknown names and parameters raise before any work
    rt = make_runtime(cfg.device, cfg.precision)
    model, meta = checkpoint.load_run(cfg.model, rt.device)
    model = rt.prepare(model)
    run_dir = Path(meta["run_dir"])
    ev = _RunEval(run_dir, model, meta, rt, id_data=meta["data"], data_root=_data_root(meta, cfg.data_root),
                  batch_size=cfg.batch_size, workers=0, on_event=on_event,
                  limit=(meta.get("config") or {}).get("limit"))  # fitted as calibrate fits it
    try:
        s = ev.scorer(cfg.method, cfg.params)
    except DataError as e:
        raise DataError(f"{cfg.method} must be fitted on the run's training data first: {e}") from None
    threshold = cfg.threshold if cfg.threshold is not None else stored_threshold(meta, s)
    if threshold is None:
        try:
            entry = calibrate(run_dir, model, meta, rt, cfg.method, params=cfg.params,
                              data_root=_data_root(meta, cfg.data_root), batch_size=cfg.batch_size,
                              workers=0, on_event=on_event)
        except DataError as e:
            raise DataError(f"the run has no {cfg.method} threshold and calibrating one needs its ID test "
                            f"split ({e}); or pass --threshold X") from None
        store_threshold(run_dir, scorer_key(s), entry)
        threshold = entry["value"]

    entries = expand_paths(cfg.paths)
    rows: dict[str, Row] = {}
    good: list[tuple[str, np.ndarray]] = []
    size = int(meta["input_size"])
    mean = torch.tensor(ev.mean).view(1, 3, 1, 1)
    std = torch.tensor(ev.std).view(1, 3, 1, 1)
    classes = list(meta["classes"])

    def flush() -> None:
        if not good:
            return
        x = torch.from_numpy(np.stack([a for _, a in good])).permute(0, 3, 1, 2).float().div_(255)
        x = ((x - mean) / std).to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch = [(x, None)]
        feats = fx.extract(model, batch, device=rt.device, precision=rt.precision, blocks=s.needs_blocks)
        if s.needs_images:
            sc = s.score_images(model, batch, device=rt.device, std=None if "std" in cfg.params else ev.std)
        else:
            sc = s.score(feats)
        probs = torch.softmax(feats.logits, dim=1)
        conf, pred = probs.max(dim=1)
        for (f, _), c, p, v in zip(good, conf.tolist(), pred.tolist(), sc.tolist(), strict=True):
            rows[f] = Row(f, predicted=classes[p] if p < len(classes) else str(p), confidence=c, score=v,
                          verdict="ID" if v >= threshold else "OOD", method=s.name, threshold=threshold)
        good.clear()

    for f, err in entries:
        if err is not None:
            rows[f] = Row(f, error=err, method=s.name, threshold=threshold)
            continue
        try:
            good.append((f, preprocess(decode(f), size)))
        except DataError as e:
            msg = str(e)
            rows[f] = Row(f, error=msg.removeprefix(f"{f}: "), method=s.name, threshold=threshold)
        if len(good) >= cfg.batch_size:
            flush()
    flush()
    return [rows[f] for f, _ in entries]
