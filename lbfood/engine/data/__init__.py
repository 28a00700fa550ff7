"""Dataset registry: name -> DatasetSpec. `imagefolder:PATH` and `folder:PATH` name user data."""

from __future__ import annotations

import importlib

from lbfood.engine.data.base import DatasetSpec, ImageSet, LoadOptions, default_root
from lbfood.engine.errors import DataError

__all__ = ["DatasetSpec", "ImageSet", "LoadOptions", "default_root", "get", "names", "register", "specs"]

_REGISTRY: dict[str, DatasetSpec] = {}
# Parametrised families: prefix -> factory(path_text) -> DatasetSpec.
_FAMILIES: dict[str, object] = {}
# Modules that register datasets when imported (kept lazy: importing them is not free).
_MODULES = ("backdrops", "cifar", "folders", "digits", "svhn", "imagenet")
_loaded = False


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset; a duplicate name is a bug and raises."""
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def register_family(prefix: str, factory) -> None:
    """Add a `prefix:ARG` family, e.g. `imagefolder:PATH`."""
    if prefix in _FAMILIES:
        raise ValueError(f"dataset family {prefix!r} registered twice")
    _FAMILIES[prefix] = factory


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODULES:
        try:
            importlib.import_module(f"lbfood.engine.data.{mod}")
        except ModuleNotFoundError as e:  # a module not written (yet) must not break the others
            if e.name != f"lbfood.engine.data.{mod}":
                raise


def names() -> list[str]:
    """Registered dataset names, plus the `family:PATH` forms."""
    _load_modules()
    return sorted(_REGISTRY) + [f"{p}:PATH" for p in sorted(_FAMILIES)]


def specs() -> list[DatasetSpec]:
    _load_modules()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get(name: str) -> DatasetSpec:
    """The spec for `name`; unknown names raise DataError listing the valid ones."""
    _load_modules()
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, arg = name.partition(":")
    if sep and prefix in _FAMILIES:
        if not arg:
            raise DataError(f"{prefix}: needs a path, e.g. {prefix}:/data/my_images")
        return _FAMILIES[prefix](arg)
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(names())}")
