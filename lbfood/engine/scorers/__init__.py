"""Scorer registry: name -> Scorer class. Scores are higher = more in-distribution (paper Eq. 3)."""

from __future__ import annotations

import importlib
from typing import Any

from lbfood.engine.errors import ConfigError
from lbfood.engine.scorers.base import Scorer

__all__ = ["Scorer", "get", "names", "register", "scorer_class"]

_REGISTRY: dict[str, type[Scorer]] = {}
# One module per detector; imported on first use so `import lbfood.engine.scorers` stays cheap.
_MODULES = ("msp", "maxlogit", "energy", "odin", "react", "mahalanobis", "knn", "vim", "dice", "ash",
            "featurenorm")
_loaded = False


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator adding a scorer under `cls.name`; a duplicate name is a bug and raises."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"scorer {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _MODULES:
            importlib.import_module(f"lbfood.engine.scorers.{mod}")


def names() -> list[str]:
    """Registered scorer names, sorted."""
    _load_modules()
    return sorted(_REGISTRY)


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as `name` (its `defaults`, `needs_fit`, docstring), without building one."""
    _load_modules()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown scorer {name!r}; valid: {', '.join(names())}")
    return _REGISTRY[name]


def get(name: str, **params: Any) -> Scorer:
    """A new scorer `name` with hyper-parameters `params` (the rest from its `defaults`)."""
    return scorer_class(name)(**params)
