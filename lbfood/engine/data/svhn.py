"""SVHN test set (Netzer et al., 2011) as an OOD set for the CIFAR benchmarks: the `test_32x32.mat` file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lbfood.engine.data import register
from lbfood.engine.data.base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DatasetSpec,
    ImageSet,
    LoadOptions,
    check_root,
    tidy_failed_download,
)
from lbfood.engine.data.folders import check_split, not_found
from lbfood.engine.data.images import resize_in_memory
from lbfood.engine.errors import DataError

NAME = "svhn"
FILE = "test_32x32.mat"
URL = "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"
LAYOUT = f"svhn/{FILE} (or {FILE} directly in the data root)"
OBTAIN = f"pass --download to fetch it through torchvision, or download {URL} into <root>/svhn/"


def _path(opts: LoadOptions) -> Path:
    for p in (opts.root / "svhn" / FILE, opts.root / FILE):
        if p.is_file():
            return p
    return opts.root / "svhn" / FILE


def read_mat(path: Path) -> np.ndarray:
    """The images of an SVHN .mat file as uint8 (N, 32, 32, 3)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a non-MATLAB file
        raise DataError(f"{NAME}: {path} is not a readable MATLAB file ({type(e).__name__}: {e}); "
                        f"expected SVHN's {FILE} from {URL}") from None
    x = mat.get("X")
    if x is None or "y" not in mat:
        raise DataError(f"{NAME}: {path} is not SVHN's {FILE} (it has no 'X' and 'y' variables); "
                        f"download it from {URL}")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{NAME}: {path} is not SVHN's {FILE}: 'X' is {x.dtype} {x.shape}, "
                        "expected uint8 (32, 32, 3, N)")
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2))


def _load(opts: LoadOptions, split: str = "test") -> ImageSet:
    check_split(NAME, split, ("test",))
    path = _path(opts)
    if not path.is_file() and opts.download:
        _download(opts.root)
        path = _path(opts)
    if not path.is_file():
        raise not_found(NAME, path, LAYOUT, OBTAIN, opts.root)
    return ImageSet(NAME, images=resize_in_memory(read_mat(path), opts.image_size, NAME))


def _download(root: Path) -> None:
    import torchvision.datasets as tvd

    check_root(NAME, root)
    try:
        with tidy_failed_download(root / "svhn"):
            tvd.SVHN(str(root / "svhn"), split="test", download=True)
    except Exception as e:  # noqa: BLE001 - network/disk errors become one clear message
        raise DataError(f"{NAME}: download to {root / 'svhn'} failed ({type(e).__name__}: {e}); "
                        f"download {URL} by hand into {root / 'svhn'}") from None


def _count(opts: LoadOptions) -> int | None:
    path = _path(opts)
    if not path.is_file():
        return None
    try:
        import scipy.io

        for var, shape, _ in scipy.io.whosmat(str(path)):
            if var == "X" and len(shape) == 4:
                return int(shape[3])
    except Exception:  # noqa: BLE001 - count is best-effort; load reports the real error
        return None
    return None


register(DatasetSpec(name=NAME, role="ood", image_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, layout=LAYOUT,
                     obtain=OBTAIN, load=_load, count=_count, path=_path, preset="custom"))
