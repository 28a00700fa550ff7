"""MNIST (LeCun et al., 1998) and Fashion-MNIST (Xiao et al., 2017) from torchvision's raw idx files.

28×28 grayscale, replicated to RGB and resized to the model's input size (32 by default).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from lbfood.engine.data import register
from lbfood.engine.data.base import DatasetSpec, ImageSet, LoadOptions, check_root, tidy_failed_download
from lbfood.engine.data.folders import check_split, not_found
from lbfood.engine.data.images import resize_in_memory
from lbfood.engine.errors import DataError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, name: str) -> np.ndarray:
    """Parse an idx file (raw or .gz): uint8 (N, rows, cols) images or (N,) labels."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{name}: cannot read {path} ({e}); delete it and re-download") from None
    if len(data) < 8:
        raise DataError(f"{name}: {path} is too short to be an idx file")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise DataError(f"{name}: {path} is not an idx file (magic number {magic:#010x}, expected "
                        f"{IDX_IMAGES_MAGIC:#010x} for images or {IDX_LABELS_MAGIC:#010x} for labels)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: {path} has a truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{name}: {path} holds {len(data) - header} bytes of data, its header promises "
                        f"{expected} {shape}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _digits_spec(name: str, folder: str, classes: tuple[str, ...], mean: float, std: float,
                 tv_class: str) -> DatasetSpec:
    all_files = [f for pair in FILES.values() for f in pair]
    layout = f"{folder}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    obtain = "pass --download to fetch it through torchvision"

    def path(opts: LoadOptions) -> Path:
        return opts.root / folder / "raw"

    def _find(opts: LoadOptions, base: str) -> Path | None:
        for p in (path(opts) / base, path(opts) / f"{base}.gz"):
            if p.is_file():
                return p
        return None

    def count(opts: LoadOptions) -> int | None:
        return 70000 if all(_find(opts, f) for f in all_files) else None

    def load(opts: LoadOptions, split: str) -> ImageSet:
        check_split(name, split)
        img_base, lbl_base = FILES[split]
        if (_find(opts, img_base) is None or _find(opts, lbl_base) is None) and opts.download:
            _download(opts.root)
        img_path, lbl_path = _find(opts, img_base), _find(opts, lbl_base)
        if img_path is None or lbl_path is None:
            absent = [b for b, p in ((img_base, img_path), (lbl_base, lbl_path)) if p is None]
            raise not_found(name, path(opts), f"{layout}; missing {', '.join(absent)}[.gz]", obtain, opts.root)
        x, y = read_idx(img_path, name), read_idx(lbl_path, name)
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(f"{name}: {img_path} must hold images (idx3) and {lbl_path} labels (idx1)")
        if len(x) != len(y):
            raise DataError(f"{name}: {img_path} has {len(x)} images but {lbl_path} has {len(y)} labels")
        if len(y) and y.max() >= len(classes):
            raise DataError(f"{name}: {lbl_path} has label {int(y.max())}, expected 0..{len(classes) - 1}")
        rgb = np.repeat(x[..., None], 3, axis=3)
        return ImageSet(name, classes, images=resize_in_memory(rgb, opts.image_size, name),
                        labels=torch.from_numpy(y.astype(np.int64)))

    def _download(root: Path) -> None:
        import torchvision.datasets as tvd

        check_root(name, root)
        try:
            with tidy_failed_download(root):
                for train in (True, False):
                    getattr(tvd, tv_class)(str(root), train=train, download=True)
        except Exception as e:  # noqa: BLE001 - network/disk errors become one clear message
            raise DataError(f"{name}: download to {root} failed ({type(e).__name__}: {e})") from None

    return DatasetSpec(name=name, role="id", image_size=32, mean=(mean,) * 3, std=(std,) * 3, layout=layout,
                       obtain=obtain, load=load, count=count, path=path, preset="custom")


# Normalisation: the usual single-channel constants, replicated over the three RGB channels.
register(_digits_spec("mnist", "MNIST", tuple(str(d) for d in range(10)), 0.1307, 0.3081, "MNIST"))
register(_digits_spec("fashion-mnist", "FashionMNIST",
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot"), 0.2860, 0.3530, "FashionMNIST"))
