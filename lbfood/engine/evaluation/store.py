"""One run under evaluation (`RunEval`): its model, its per-run feature cache and its fitted-scorer store.

Extract once, score many: one forward pass per (run, dataset, split, input size, normalisation) gives
the logits, pooled features and block norms every post-hoc scorer reads; they are cached as
safetensors in `<run>/cache/`, so a second report with other methods runs no forward pass. Only ODIN
(it perturbs the input) runs its own pass. Scorers that need ID training statistics are fitted once
and stored in `<run>/scorers/<name>[-<params hash>].safetensors`, then reloaded without refitting.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lbfood import __version__
from lbfood.engine import distributed, runs
from lbfood.engine.data import DatasetSpec, ImageSet, LoadOptions, default_root
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.holdout import split_holdout
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.distributed import DistInfo, main_first
from lbfood.engine.errors import ConfigError, DataError, LbfoodError, RunError, StorageError
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation import scorers
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers import Scorer
from lbfood.engine.evaluation.scorers.base import head_of
from lbfood.engine.events import Step
from lbfood.engine.io import load_tensors, read_metadata, save_tensors
from lbfood.engine.runs import RunMeta
from lbfood.engine.runtime import Runtime

_SCORER_FORMAT = "lbfood-scorer-1"

_FP_MEMO: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(run_dir: str | os.PathLike) -> str:
    """Content hash (SHA-256, 16 hex digits) of `<run>/model.safetensors`; memoised by size and mtime."""
    path = Path(run_dir) / runs.MODEL_FILE
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


def jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, sort_keys=True, default=list))


def scorer_key(s: Scorer) -> str:
    """`name`, or `name-<hash>` when any hyper-parameter differs from the scorer's defaults."""
    changed = {k: v for k, v in s.params.items() if v != s.defaults.get(k)}
    if not changed:
        return s.name
    digest = hashlib.sha1(json.dumps(jsonable(changed), sort_keys=True).encode()).hexdigest()[:8]
    return f"{s.name}-{digest}"


class _Miss(Exception):
    """Raised by a loader factory to ask the feature cache whether it has an entry, without computing."""


def _fail_on_miss():
    raise _Miss


def data_root(meta: RunMeta, explicit: str | os.PathLike | None) -> Path:
    """Where the run's datasets are: `explicit`, else the run's own data root, else the default."""
    if explicit:
        return Path(explicit)
    cfg_root = meta.config.get("data_root")
    return Path(cfg_root) if cfg_root else default_root()


class RunEval:
    """One run under evaluation: its model, its feature cache and fitted scorers, and counters."""

    def __init__(self, run_dir: Path, model: torch.nn.Module, meta: RunMeta, rt: Runtime, *,
                 id_data: str, data_root: Path, batch_size: int = 256, workers: int = 4,
                 data: dict | None = None, on_event: Callable[[Step], None] | None = None,
                 limit: int | None = None, dist: DistInfo | None = None, download: bool = False,
                 allow_skips: bool = False) -> None:
        self.run_dir, self.model, self.meta, self.rt = Path(run_dir), model, meta, rt
        self.id_data, self.data_root = id_data, Path(data_root)
        self.batch_size, self.workers = batch_size, max(0, min(workers, os.cpu_count() or 1))
        self.size = int(meta.input_size)
        self.mean, self.std = tuple(float(v) for v in meta.mean), tuple(float(v) for v in meta.std)
        self.fp = weights_fingerprint(self.run_dir)
        self.data = data if data is not None else {}  # (name, split, size, root) -> ImageSet, shared
        self.on_event = on_event
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        self.limit = limit  # only the first `limit` images of each split (smoke tests)
        # Under data parallelism each rank extracts its shard of every split and the rows are gathered;
        # every rank then computes the same numbers, and only rank 0 writes files.
        self.dist = dist or DistInfo()
        self.notes: list[str] = []
        self.allow_skips = allow_skips  # report an OOD set of which fewer than half the files could be read
        self.memo: dict[str, Features] = {}
        self.extractions = self.odin_passes = self.fits = 0
        cfg = meta.config
        self.opts = LoadOptions(root=self.data_root, image_size=self.size, download=download,
                                val_split=float(cfg.get("val_split") or 0.0),
                                classes_file=Path(cfg["classes_file"]) if cfg.get("classes_file") else None,
                                seed=int(cfg.get("seed") or 0))

    def unsaved(self, err: StorageError) -> None:
        """A cache or fitted-scorer file could not be written (a read-only run, a full disk): it only
        saves time later, so the evaluation goes on, with a note."""
        note = (f"could not save to {Path(err.path).parent} ({err.reason}): the results are complete, "
                "but the next run recomputes what was not saved")
        if note not in self.notes:
            self.notes.append(note)

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
            with main_first(self.dist, when=self.opts.download):  # one download, not one per rank
                images = spec.load(self.opts, split)
            self._skipped(spec, images.skipped, images.skipped + len(images))  # before --limit narrows it
            if self.limit is not None:
                images = images.subset(torch.arange(min(self.limit, len(images))))
            holdout = float(self.meta.config.get("holdout") or 0.0)
            if holdout and split == "train" and name == self.meta.data:
                images = split_holdout(images, holdout)[0]  # fit on the images the run trained on
            if len(images) == 0:
                raise DataError(f"{name} {split}: no images to evaluate")
            if name == self.id_data and images.classes and list(images.classes) != list(self.meta.classes):
                raise ConfigError(f"{name} has classes {_short(images.classes)} but run {self.run_dir.name} "
                                  f"was trained on {_short(self.meta.classes)}; pass the run's --id dataset")
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
            feats = fx.cached_extract(self.run_dir / runs.CACHE_DIR, key, self.model, make, fingerprint=fingerprint,
                                      device=self.rt.device, precision=self.rt.precision, blocks=True,
                                      jigsaw=jigsaw, dist=self.dist, on_write_error=self.unsaved)
        except _Miss:
            return None
        if spec.role == "ood" and self.limit is None and not spec.generated and (count := spec.count(self.opts)):
            self._skipped(spec, count - len(feats), count)  # also on a cache hit, and for file lists
        self.memo[key] = feats
        return feats

    def _skipped(self, spec: DatasetSpec, skipped: int, total: int) -> None:
        """Note image files of a set that could not be decoded (once); refuse an OOD set of which fewer than
        half could be read, unless `allow_skips`: its metrics would describe another set."""
        if skipped <= 0:
            return
        read = f"{total - skipped} of {total}"
        if spec.role == "ood" and 2 * (total - skipped) < total and not self.allow_skips:
            raise DataError(f"{spec.name}: only {total - skipped} of {total} image files could be decoded (fewer "
                            "than half), so its metrics would describe another set; fix or remove the unreadable "
                            f"files, or pass --allow-skips to report on the {total - skipped}")
        note = f"{spec.name}: skipped {skipped} image file(s) that could not be decoded; its numbers are over {read}"
        if not any(n.startswith(f"{spec.name}: skipped ") for n in self.notes):
            self.notes.append(note)

    def _shard(self, images: ImageSet) -> ImageSet:
        """This rank's contiguous share of a split (all of it for one process)."""
        if not self.dist.enabled:
            return images
        if len(images) < self.dist.world:
            raise DataError(f"{images.name}: {len(images)} image(s) cannot be shared by {self.dist.world} "
                            "processes; evaluate it with fewer")
        start, stop = distributed.shard(len(images), self.dist)
        return images.subset(torch.arange(start, stop))

    def train_features(self, jigsaw: bool = False) -> Features:
        """ID training features for fitting (`jigsaw`: with FeatureNorm's jigsaw norms). One process always
        extracts the training split with the jigsaw norms too (they hold the plain features as well): one
        pass serves every scorer, and the extraction that ends training (calibration) serves every later
        report from the cache. Under data parallelism the jigsaw puzzles depend on how the split is sharded,
        so only FeatureNorm asks for them there. A cached jigsaw extraction serves plain requests."""
        if not jigsaw:
            hit = self.features(self.id_data, "train", jigsaw=True, peek=True)
            if hit is not None:
                return hit
        return self.features(self.id_data, "train", jigsaw=jigsaw or not self.dist.enabled)

    # -- scorers

    def scorer(self, name: str, params: dict[str, Any] | None = None,
               vet: Callable[[Scorer], None] | None = None) -> Scorer:
        """Scorer `name`, with its statistics loaded from `<run>/scorers/` or fitted now and stored. `vet`
        sees a new fit before it is stored and may refuse it (export's bank limit): nothing is written."""
        s = scorers.get(name, **(params or {}))
        if not s.needs_fit or s.fitted:
            return s
        head = head_of(s, self.model)  # before anything is extracted: a run without the head is refused
        stem = scorer_key(s) + (f".first{self.limit}" if self.limit is not None else "")
        path = self.run_dir / runs.SCORERS_DIR / f"{stem}.safetensors"
        want = {"format": _SCORER_FORMAT, "scorer": s.name, "params": json.dumps(jsonable(s.params)),
                "weights": self.fp, "id_data": self.id_data, "limit": str(self.limit)}
        loaded = None
        if path.is_file():
            meta = read_metadata(path)
            if meta is not None and all(meta.get(k) == v for k, v in want.items()):
                try:
                    loaded = s.load_state_dict(load_tensors(path))
                    loaded.check_state(head_of(s, self.model))
                except (LbfoodError, OSError, ValueError):
                    loaded = None  # damaged or another model's: refit below and overwrite
        # All ranks load or all fit: fitting may extract, and extraction is a collective.
        if distributed.agree(loaded is not None, self.dist, self.rt.device):
            return loaded
        train = self.train_features(jigsaw=s.name == "featurenorm")  # NormRatio compares with jigsaw puzzles
        self._event(f"fitting {s.name} on {len(train)} {self.id_data} training images")
        s.fit(train, head)
        if vet is not None:
            vet(s)
        self.fits += 1
        if self.dist.is_main:
            try:
                save_tensors(path, s.state_dict(), metadata=want)
            except StorageError as e:
                self.unsaved(e)
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

