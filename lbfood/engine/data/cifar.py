"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from torchvision's on-disk format (the official python pickles)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from lbfood.engine.data import register
from lbfood.engine.data.base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetSpec,
    ImageSet,
    LoadOptions,
    check_root,
    tidy_failed_download,
)
from lbfood.engine.data.folders import check_split, not_found
from lbfood.engine.data.images import resize_in_memory
from lbfood.engine.errors import DataError


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches hold (dicts, lists, strings and numpy arrays).

    The official files are pickles; this refuses any other global, so a tampered file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        return super().find_class(module, name)


def _unpickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{name}: {path} is not a CIFAR python batch ({e}); delete it and re-download "
                        "with --download") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: {path} is not a CIFAR python batch (holds a {type(obj).__name__})")
    return obj


def _cifar_spec(name: str, folder: str, train_files: tuple[str, ...], test_file: str, meta_file: str,
                label_key: str, names_key: str, mean, std, preset: str) -> DatasetSpec:
    files = (*train_files, test_file, meta_file)
    layout = f"{folder}/{{{','.join(files)}}}"
    url = f"https://www.cs.toronto.edu/~kriz/{folder.replace('-batches-py', '').replace('-python', '')}-python.tar.gz"
    obtain = f"pass --download to fetch it through torchvision, or unpack {url} in the data root"

    def path(opts: LoadOptions) -> Path:
        return opts.root / folder

    def count(opts: LoadOptions) -> int | None:
        return 60000 if all((path(opts) / f).is_file() for f in files) else None

    def _ensure(opts: LoadOptions) -> None:
        absent = [f for f in files if not (path(opts) / f).is_file()]
        if not absent:
            return
        if opts.download:
            _download(name, opts.root)
            absent = [f for f in files if not (path(opts) / f).is_file()]
            if not absent:
                return
        raise not_found(name, path(opts), f"{layout}; missing {', '.join(absent)}", obtain, opts.root)

    def load(opts: LoadOptions, split: str) -> ImageSet:
        check_split(name, split)
        _ensure(opts)
        meta = _unpickle(path(opts) / meta_file, name)
        if names_key not in meta:
            raise DataError(f"{name}: {path(opts) / meta_file} has no {names_key!r}: not {name}'s meta file")
        classes = tuple(str(c) for c in meta[names_key])
        images, labels = [], []
        for f in (train_files if split == "train" else (test_file,)):
            batch = _unpickle(path(opts) / f, name)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{name}: {path(opts) / f} lacks 'data' or {label_key!r}: not a {name} batch")
            data = np.asarray(batch["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise DataError(f"{name}: {path(opts) / f} holds {data.dtype} {data.shape}, expected uint8 (N, 3072)")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        x = np.concatenate(images)
        y = np.concatenate(labels)
        if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() >= len(classes))):
            raise DataError(f"{name}: labels in {path(opts)} do not match its {len(classes)} classes")
        return ImageSet(name, classes, images=resize_in_memory(x, opts.image_size, name), labels=torch.from_numpy(y))

    def _download(name_: str, root: Path) -> None:
        import torchvision.datasets as tvd

        cls = tvd.CIFAR10 if name_ == "cifar10" else tvd.CIFAR100
        check_root(name_, root)
        try:
            with tidy_failed_download(root):
                cls(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - network/disk errors become one clear message
            raise DataError(f"{name_}: download to {root} failed ({type(e).__name__}: {e}); "
                            f"download {url} by hand and unpack it in {root}") from None

    return DatasetSpec(name=name, role="id", image_size=32, mean=mean, std=std, layout=layout, obtain=obtain,
                       load=load, count=count, path=path, preset=preset)


register(_cifar_spec("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                     "batches.meta", "labels", "label_names", CIFAR10_MEAN, CIFAR10_STD, "cifar10"))
register(_cifar_spec("cifar100", "cifar-100-python", ("train",), "test", "meta",
                     "fine_labels", "fine_label_names", CIFAR100_MEAN, CIFAR100_STD, "cifar100"))
