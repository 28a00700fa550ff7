"""Extract once, score many: one forward pass per dataset gives every post-hoc scorer its inputs.

`extract` runs a model over a loader and returns `Features`: logits, the pooled penultimate features
(GAP of the last feature map z, paper Eq. 1), labels, and FeatureNorm's norm of every residual block.
`cached_extract` stores them as safetensors so a report re-scores without re-running the model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lbfood.engine import distributed, io
from lbfood.engine.distributed import DistInfo
from lbfood.engine.errors import ConfigError, StorageError
from lbfood.engine.runtime import autocast, resolve_precision

# 2: block norms are per residual block (1 had one per stage); a file of another format is a cache miss.
FORMAT = "lbfood-features-2"
_OPTIONAL = ("block_norms", "jigsaw_block_norms", "block_means")
GROUPS = 32  # block_means: at most this many channel groups per residual block


@dataclass
class Features:
    """What one forward pass over a dataset yields (CPU float32 tensors; labels int64, -1 = unlabelled).

    `block_norms[:, b]` is FeatureNorm (Yu et al., CVPR 2023) of residual block b of `forward_blocks`;
    `jigsaw_block_norms` is the same on a 3×3 jigsaw shuffle of each image (its pseudo-OOD);
    `block_means` the spatial mean of every residual block's output, channels averaged in groups
    (`block_means_of`), concatenated over the blocks: the per-layer features of Lee et al. (NeurIPS 2018)
    that the far-OOD gate reads.
    """

    logits: torch.Tensor  # (N, K)
    features: torch.Tensor  # (N, D), GAP of the last feature map (the penultimate layer)
    labels: torch.Tensor | None = None  # (N,)
    block_norms: torch.Tensor | None = None  # (N, B)
    jigsaw_block_norms: torch.Tensor | None = None  # (N, B)
    block_means: torch.Tensor | None = None  # (N, M), M = Σ over blocks of min(channels, GROUPS)

    def __post_init__(self) -> None:
        self.logits = torch.as_tensor(self.logits, dtype=torch.float32)
        self.features = torch.as_tensor(self.features, dtype=torch.float32)
        n = self.logits.shape[0] if self.logits.ndim == 2 else -1
        if self.logits.ndim != 2 or self.features.ndim != 2 or self.features.shape[0] != n:
            raise ConfigError(f"Features: logits must be (N, K) and features (N, D), got "
                              f"{tuple(self.logits.shape)} and {tuple(self.features.shape)}")
        if self.labels is None:
            self.labels = torch.full((n,), -1, dtype=torch.int64)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        if self.labels.shape[0] != n:
            raise ConfigError(f"Features: {n} rows but {self.labels.shape[0]} labels")
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is None:
                continue
            v = torch.as_tensor(v, dtype=torch.float32)
            if v.ndim != 2 or v.shape[0] != n:
                raise ConfigError(f"Features: {name} must be (N, B) with N = {n}, got {tuple(v.shape)}")
            setattr(self, name, v)

    def __len__(self) -> int:
        return self.logits.shape[0]

    @property
    def preds(self) -> torch.Tensor:
        """Predicted class per image (argmax of the logits)."""
        return self.logits.argmax(dim=1)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """A flat dict for safetensors (absent optional fields are left out)."""
        out = {"logits": self.logits, "features": self.features, "labels": self.labels}
        out.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        return out

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> Features:
        missing = [k for k in ("logits", "features", "labels") if k not in d]
        if missing:
            raise ConfigError(f"not a Features file: missing {', '.join(missing)}; delete it to re-extract")
        return cls(**{k: d[k] for k in ("logits", "features", "labels", *_OPTIONAL) if k in d})


def wide(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 at least: half precision is widened, float64 (an exact-arithmetic check) kept."""
    return x if x.dtype == torch.float64 else x.float()


def feature_norm(block: torch.Tensor) -> torch.Tensor:
    """FeatureNorm of a block output (B, C, H, W) -> (B,): L2 norm over H×W of ReLU(block), channel mean.

    Yu et al., CVPR 2023, Sec. 3 (their `normratio.py`: `torch.norm(F.relu(x), dim=[2, 3]).mean(1)`).
    """
    return torch.linalg.vector_norm(torch.relu(wide(block)), dim=(2, 3)).mean(dim=1)


def block_means_of(outs: list[torch.Tensor]) -> torch.Tensor:
    """(B, M): each block output's spatial mean per channel, its C channels averaged in g consecutive
    groups (g = the largest divisor of C that is ≤ GROUPS: all C channels when C ≤ GROUPS), concatenated
    over the blocks. Static shapes: traceable for ONNX/TorchScript."""
    parts = []
    for o in outs:
        c = o.shape[1]
        g = max(d for d in range(1, min(c, GROUPS) + 1) if c % d == 0)
        m = wide(o).mean(dim=(2, 3))
        parts.append(m if g == c else m.reshape(m.shape[0], g, c // g).mean(dim=2))
    return torch.cat(parts, dim=1)


def jigsaw_puzzle(x: torch.Tensor, grid: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image cut into grid×grid tiles of ⌊H/grid⌋ px and the tiles shuffled (its own permutation).

    FeatureNorm's pseudo-OOD (Yu et al., CVPR 2023; their `jigsaw_dataset`): pixels beyond grid·tile
    (the last H mod grid rows/columns) are zero, which in normalised input is the dataset mean colour.
    """
    b, c, h, w = x.shape
    sh, sw = h // grid, w // grid
    if sh == 0 or sw == 0:
        raise ConfigError(f"jigsaw: images of {h}×{w} px are too small for a {grid}×{grid} grid")
    tiles = (x[:, :, : grid * sh, : grid * sw]
             .reshape(b, c, grid, sh, grid, sw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, sh, sw))
    perm = torch.argsort(torch.rand(b, grid * grid, generator=generator), dim=1).to(x.device)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], perm]  # out tile o = in tile perm[o]
    out = torch.zeros_like(x)
    out[:, :, : grid * sh, : grid * sw] = (tiles.reshape(b, grid, grid, c, sh, sw)
                                           .permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * sh, grid * sw))
    return out


def extract(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
            precision: str = "fp32", blocks: bool = True, jigsaw: bool = False,
            jigsaw_seed: int = 0) -> Features:
    """Run `model` over `loader` (batches of normalised (B, 3, H, W) float images and int64
    labels, or None for unlabelled data).

    One forward pass per batch, in eval mode and `inference_mode`; with `jigsaw=True` the batch and
    its jigsaw shuffle go through together (2B images, as the FeatureNorm reference does). Results
    stay on the device until the end, so the loop never waits for the GPU.
    """
    if jigsaw and not blocks:
        raise ConfigError("extract: jigsaw=True needs blocks=True (it stores per-block norms)")
    dev = torch.device(device)
    precision = resolve_precision(precision, dev, training=False)  # "auto" extracts in fp32
    autocast(dev, precision)  # validate the name before any work
    gen = torch.Generator().manual_seed(jigsaw_seed)
    was_training = model.training
    model.eval()
    model.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    logits, feats, labels, norms, jig_norms, means = [], [], [], [], [], []
    try:
        with torch.inference_mode():
            for x, y in loader:
                if not torch.is_floating_point(x) or x.ndim != 4:
                    raise ConfigError(f"extract: expected normalised float images (B, 3, H, W), got "
                                      f"{tuple(x.shape)} {x.dtype}; normalise batches before extraction")
                x = x.to(dev, non_blocking=True)
                b = x.shape[0]
                if jigsaw:
                    x = torch.cat([x, jigsaw_puzzle(x, generator=gen)])
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, precision):
                    if blocks:
                        outs = model.forward_blocks(x)
                        z = model.features_from_last_block(outs[-1])
                    else:
                        z = model.forward_features(x)
                f = z[:b].float().mean(dim=(2, 3))
                feats.append(f)
                logits.append(model.head(f))  # fp32 head on fp32 features, outside autocast
                y = torch.full((b,), -1) if y is None else torch.as_tensor(y)
                labels.append(y.to(dev, non_blocking=True).long())
                if blocks:
                    bn = torch.stack([feature_norm(o) for o in outs], dim=1)
                    norms.append(bn[:b])
                    means.append(block_means_of([o[:b] for o in outs]))
                    if jigsaw:
                        jig_norms.append(bn[b:])
    finally:
        model.train(was_training)
    if not logits:
        raise ConfigError("extract: the loader yielded no batches; is the dataset empty?")

    def host(xs: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.cat(xs).to("cpu", torch.float32) if xs else None

    return Features(logits=host(logits), features=host(feats), labels=torch.cat(labels).cpu(),
                    block_norms=host(norms), jigsaw_block_norms=host(jig_norms), block_means=host(means))



def cache_path(cache_dir: str | Path, key: str) -> Path:
    """`cache_dir/features-<key made file-safe>-<hash>.safetensors` (the hash keeps distinct keys apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "x"
    if len(safe) > 80:  # a long folder path: keep its start (the kind) and its end (folder name and split)
        safe = f"{safe[:30]}~{safe[-49:]}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return Path(cache_dir) / f"features-{safe}-{digest}.safetensors"


def gather_features(feats: Features, dist: DistInfo, device: str | torch.device = "cpu") -> Features:
    """Each rank's `distributed.shard` of the rows, concatenated in rank order (the original order), on
    every rank. `device` is where the collective runs (the GPU under NCCL)."""
    if not dist.enabled:
        return feats
    n = distributed.all_reduce_sum(torch.tensor([len(feats)], device=device), dist)
    return Features.from_tensors({k: distributed.gather_rows(v, int(n.item()), dist, device)
                                  for k, v in feats.to_tensors().items()})


def cached_extract(cache_dir: str | Path, key: str, model: nn.Module, make_loader: Callable[[], Iterable],
                   *, fingerprint: str, dist: DistInfo | None = None,
                   on_write_error: Callable[[StorageError], None] | None = None, **kw) -> Features:
    """`extract`, reusing `cache_dir/features-<key>.safetensors` when key, fingerprint and options match.

    `fingerprint` identifies the weights (e.g. the hash of model.safetensors); `make_loader` is only
    called on a miss. Any mismatch or unreadable file recomputes and overwrites (atomically).
    Under data parallelism (`dist`), `make_loader` loads this rank's `distributed.shard` of the images:
    the ranks agree on hit or miss (all extract or none), gather their rows in order, and rank 0 writes.
    A cache file that cannot be written (a read-only run, a full disk) goes to `on_write_error` and the
    features are returned all the same; without it, the StorageError is raised.
    """
    dist = dist or DistInfo()
    path = cache_path(cache_dir, key)
    want = {"format": FORMAT, "key": key, "fingerprint": fingerprint,
            "blocks": str(bool(kw.get("blocks", True))), "jigsaw": str(bool(kw.get("jigsaw", False))),
            "precision": str(kw.get("precision", "fp32"))}
    hit = None
    if path.is_file():
        meta = io.read_metadata(path)
        if meta is not None and all(meta.get(k) == v for k, v in want.items()):
            try:
                hit = Features.from_tensors(io.load_tensors(path))
                head = getattr(model, "head", None)
                if isinstance(head, nn.Linear) and (hit.features.shape[1], hit.logits.shape[1]) != (
                        head.in_features, head.out_features):
                    hit = None  # written for another model (a well-formed file of the wrong shape)
                elif not (torch.isfinite(hit.features).all() and torch.isfinite(hit.logits).all()):
                    hit = None  # fp32 extraction of finite weights is finite: the file is damaged
                elif want["blocks"] == "True" and hit.block_means is None:
                    hit = None  # cached before the far-OOD gate read block means: extract them
            except Exception:  # noqa: BLE001 - corrupt cache: fall through and re-extract
                hit = None
    device = kw.get("device", "cpu")
    if distributed.agree(hit is not None, dist, device):
        return hit
    feats = gather_features(extract(model, make_loader(), **kw), dist, device)
    if dist.is_main:
        try:
            io.save_tensors(path, feats.to_tensors(), metadata=want)
        except StorageError as e:
            if on_write_error is None:
                raise
            on_write_error(e)
    return feats
