"""Post-hoc OOD scorers, one module per detector, looked up by name in the scorer registry
(lbfood/engine/catalog.py). Scores are higher = more in-distribution (paper Eq. 3)."""

from __future__ import annotations

from typing import Any

from lbfood.engine.catalog import SCORERS
from lbfood.engine.evaluation.scorers.base import Scorer

__all__ = ["Scorer", "get", "names", "scorer_class"]


def names() -> list[str]:
    """Registered scorer names, sorted."""
    return SCORERS.names()


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as `name` (its `defaults`, `needs_fit`, docstring), without building one."""
    return SCORERS.load(name)


def get(name: str, **params: Any) -> Scorer:
    """A new scorer `name` with hyper-parameters `params` (the rest from its `defaults`)."""
    return scorer_class(name)(**params)
