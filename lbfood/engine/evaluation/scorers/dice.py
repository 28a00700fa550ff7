"""DICE: directed sparsification of the last layer (Sun & Li, ECCV 2022), alone and after ReAct."""

from __future__ import annotations

import math

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer, energy, head_state, linear, percentile
from lbfood.engine.evaluation.scorers.react import _check_percentile, react_threshold


def dice_weight(train: Features, head: nn.Linear, p: float) -> dict[str, torch.Tensor]:
    """Keep the weights whose contribution V = m̄ ⊙ W (m̄: mean ID training feature) exceeds its p-th
    percentile (Sun & Li, ECCV 2022, Eq. 2–3; the reference keeps `contrib > np.percentile(contrib, p)`).
    """
    hs = head_state(head)
    contrib = train.features.float().mean(dim=0)[None, :] * hs["weight"]
    mask = contrib > percentile(contrib, p)
    return {"weight": hs["weight"] * mask, "bias": hs["bias"]}


class DICE(Scorer):
    """S(x) = energy((M ⊙ W)·h(x) + b) with M keeping the top (100 − p) % contributions (p = 90)."""

    name = "dice"
    needs_fit = True
    defaults = {"p": 90.0}  # sparsity p, % of weights dropped
    state_keys = ("weight", "bias")

    def check_params(self) -> None:
        if not 0 <= self.params["p"] < 100:
            raise ConfigError(f"{self.name}: p must be in [0, 100), got {self.params['p']}")

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        return dice_weight(train, head, self.params["p"])

    def _score(self, feats: Features) -> torch.Tensor:
        f = feats.features
        return energy(linear(f, self._get("weight", f), self._get("bias", f)))


class DICEReAct(DICE):
    """DICE on ReAct-clipped features (Sun & Li, ECCV 2022, Sec. 5, "DICE+ReAct").

    The mask uses the mean of the *unclipped* training features, as DICE's precomputed statistics do.
    """

    name = "dice_react"
    defaults = {"p": 90.0, "percentile": 90.0}  # DICE sparsity p; ReAct percentile of c
    state_keys = ("weight", "bias", "threshold")

    def check_params(self) -> None:
        super().check_params()
        _check_percentile(self.name, "percentile", self.params["percentile"])

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        c = react_threshold(train, self.params["percentile"])
        return {**dice_weight(train, head, self.params["p"]), "threshold": torch.tensor([c])}

    def _score(self, feats: Features) -> torch.Tensor:
        c = self.state["threshold"].item()
        f = feats.features if math.isinf(c) else feats.features.clamp(max=c)
        return energy(linear(f, self._get("weight", f), self._get("bias", f)))
