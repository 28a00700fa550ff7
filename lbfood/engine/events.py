"""The progress events the engine yields (training) or passes to a callback (evaluation).

The engine never prints: the CLI's renderer (`lbfood/output/render.py`) turns these into progress bars and
lines, one way for every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Started:
    """A training run begins (or resumes at `start_epoch`)."""

    run_dir: Path
    kind: str
    epochs: int
    start_epoch: int
    steps_per_epoch: int
    num_train: int
    num_test: int
    device: str
    precision: str
    arch: str
    width: float
    data: str
    eval_split: str = "test"  # the images evaluated after each epoch: test, or validation (--holdout)


@dataclass(frozen=True)
class Progress:
    epoch: int  # 0-based
    step: int  # steps done in this epoch
    steps: int
    metrics: dict[str, float]
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Note:
    """Something the user should know (a warning, a measurement)."""

    message: str
    level: str = "info"  # info | warning
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """What a long computation is doing now (loading, extracting, fitting): a status line."""

    message: str


@dataclass(frozen=True)
class Finished:
    run_dir: Path
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class Interrupted:
    run_dir: Path | None
    epochs_done: int


Event = Started | Progress | EpochEnd | Note | Step | Finished | Interrupted
