"""ReAct: rectified activations (Sun, Guo & Li, NeurIPS 2021), applied at inference in the paper (Sec. IV-C)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer, energy, head_state, linear, percentile


def react_threshold(train: Features, p: float) -> float:
    """c = the p-th percentile of every ID training activation of the pooled features (flattened).

    p = 100 means "no rectification" (c = +inf), so ReAct(100) is exactly the energy score.
    """
    return math.inf if p >= 100 else percentile(train.features, p)


class ReAct(Scorer):
    """S(x) = energy(W·min(h(x), c) + b) (Sun et al., NeurIPS 2021, Eq. 1–2), c from ID training data.

    Defaults follow the reference (`np.percentile(activation_log.flatten(), 90)`, energy with T = 1).
    """

    name = "react"
    needs_fit = True
    defaults = {"percentile": 90.0}  # p: c is the p-th percentile of ID activations
    state_keys = ("threshold", "weight", "bias")

    def check_params(self) -> None:
        _check_percentile(self.name, "percentile", self.params["percentile"])

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        c = react_threshold(train, self.params["percentile"])
        return {"threshold": torch.tensor([c], dtype=torch.float32), **head_state(head)}

    def _score(self, feats: Features) -> torch.Tensor:
        f = feats.features
        clipped = f.clamp(max=self.state["threshold"].item())
        return energy(linear(clipped, self._get("weight", f), self._get("bias", f)))


def _check_percentile(scorer: str, key: str, p: float) -> None:
    if not 0 < p <= 100:
        raise ConfigError(f"{scorer}: {key} must be in (0, 100], got {p}")
