"""Datasets: name -> DatasetSpec, through the dataset registry (lbfood/engine/catalog.py).

Each data module builds its specs when imported and hands them over with `register`;
`imagefolder:PATH` and `folder:PATH` name user data.
"""

from __future__ import annotations

from lbfood.engine.catalog import DATASETS
from lbfood.engine.data.base import DatasetSpec, ImageSet, LoadOptions, default_root
from lbfood.engine.errors import DataError

__all__ = ["DatasetSpec", "ImageSet", "LoadOptions", "default_root", "get", "names", "register", "specs"]


def register(spec: DatasetSpec) -> DatasetSpec:
    """Hand a data module's spec to the registry (its name must be declared there)."""
    DATASETS.provide(spec.name, spec)
    return spec


def names() -> list[str]:
    """Registered dataset names, plus the `family:PATH` forms."""
    return DATASETS.names() + DATASETS.families()


def specs() -> list[DatasetSpec]:
    return [DATASETS.load(n) for n in DATASETS.names()]


def get(name: str) -> DatasetSpec:
    """The spec for `name`; unknown names raise DataError listing the valid ones."""
    prefix, sep, arg = name.partition(":")
    if sep and not arg and f"{prefix}:PATH" in DATASETS.families():
        raise DataError(f"{prefix}: needs a path, e.g. {prefix}:/data/my_images")
    return DATASETS.load(name)
