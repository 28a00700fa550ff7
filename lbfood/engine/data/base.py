"""What a dataset is to lbfood: an `ImageSet` (one split) produced by a registered `DatasetSpec`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lbfood.engine.config import check_val_split
from lbfood.engine.errors import DataError

# Normalisation constants (per channel, on [0, 1] pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """One split of a dataset.

    Small images (≤ 64 px) live in memory as `images`: uint8 (N, H, W, 3), so the training loop can
    keep them on the accelerator and augment per batch. Large images are a list of `files`, decoded
    by a DataLoader. `labels` is int64 (N,), -1 for unlabelled (OOD) sets. `skipped` counts files that
    could not be decoded and were left out (reported as a warning, never a crash mid-epoch).
    """

    name: str
    classes: tuple[str, ...] = ()
    images: torch.Tensor | None = None
    files: tuple[str, ...] | None = None
    labels: torch.Tensor | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError("an ImageSet holds either in-memory images or a file list")
        n = len(self)
        if self.labels is None:
            self.labels = torch.full((n,), -1, dtype=torch.long)
        if self.images is not None and (self.images.dtype != torch.uint8 or self.images.ndim != 4
                                        or self.images.shape[-1] != 3):
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {tuple(self.images.shape)} {self.images.dtype}")
        if len(self.labels) != n:
            raise ValueError("labels and images differ in length")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files or ())

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, index: torch.Tensor, name: str | None = None) -> ImageSet:
        """The images at `index` (a LongTensor), as a new ImageSet."""
        if self.images is not None:
            return ImageSet(name or self.name, self.classes, images=self.images[index], labels=self.labels[index])
        files = tuple(self.files[i] for i in index.tolist())
        return ImageSet(name or self.name, self.classes, files=files, labels=self.labels[index])


@dataclass(frozen=True)
class LoadOptions:
    """Options a dataset may use when loading: where data lives and how the user narrowed it."""

    root: Path
    download: bool = False
    val_split: float = 0.0  # imagefolder without train/test folders: share held out as test
    classes_file: Path | None = None  # imagenet100: a class list (one wnid per line)
    image_size: int = 32  # the model's input size; small OOD sets are resized (then centre-cropped) to it
    seed: int = 0

    def __post_init__(self) -> None:
        check_val_split(self.val_split)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: where it lives, what it looks like, and how to load a split of it.

    `load(opts, split)` returns an ImageSet (split is "train" or "test"; OOD sets only have "test").
    `count(opts)` returns how many images are on disk, or None when the data is missing.
    """

    name: str
    role: str  # "id" or "ood"
    image_size: int  # native training/evaluation size: 32 (CIFAR-like) or 224 (ImageNet-like)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str  # the expected on-disk layout, relative to the data root (shown in errors and `datasets`)
    obtain: str  # how to get the data
    load: Callable[[LoadOptions, str], ImageSet] = field(repr=False)
    count: Callable[[LoadOptions], int | None] = field(repr=False)
    path: Callable[[LoadOptions], Path] = field(repr=False)
    generated: bool = False  # built in memory (no files needed)
    # Paper fine-tuning preset family: "cifar10", "cifar100", "imagenet100", "backdrops" or "custom".
    preset: str = "custom"


def default_root() -> Path:
    """`$LBFOOD_DATA`, else `./data`."""
    return Path(os.environ.get("LBFOOD_DATA", "data"))


def root_problem(root: Path) -> str | None:
    """Why `root` cannot be a data root (a file stands at it or above it), else None."""
    root = Path(root)
    blocker = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocker is None or blocker.is_dir():
        return None
    source = " ($LBFOOD_DATA)" if os.environ.get("LBFOOD_DATA") == str(root) else ""
    where = "a file" if blocker == root else f"under the file {blocker}"
    return (f"the data root {root}{source} is {where}, not a folder: point $LBFOOD_DATA or --data-root at the "
            "folder that holds your datasets (e.g. --data-root ./data)")


def check_root(name: str, root: Path) -> None:
    """Before a download into `root`: a file there is the cause to name (torchvision says FileExistsError)."""
    if problem := root_problem(root):
        raise DataError(f"{name}: {problem}")


def missing(spec_name: str, expected: Path, layout: str, obtain: str) -> DataError:
    return DataError(f"{spec_name}: data not found at {expected} (expected {layout}); {obtain}")


@contextlib.contextmanager
def tidy_failed_download(folder: Path) -> Iterator[None]:
    """Around a torchvision download into `folder`: if it fails, remove the folders it created that are
    still empty (a download refused offline would otherwise leave an empty data root behind)."""
    existed = next((p for p in (folder, *folder.parents) if p.exists()), None)
    try:
        yield
    except BaseException:
        p = folder
        while p != existed and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
            p = p.parent
        raise
