"""Energy score (Liu et al., NeurIPS 2020), the paper's default scoring function (Eq. 8)."""

from __future__ import annotations

import torch

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer, energy


class Energy(Scorer):
    """S(x) = T·logsumexp_k(f_k(x)/T), the negative free energy (Liu et al., NeurIPS 2020, Eq. 7)."""

    name = "energy"
    defaults = {"temperature": 1.0}  # T

    def check_params(self) -> None:
        if self.params["temperature"] <= 0:
            raise ConfigError(f"energy: temperature must be > 0, got {self.params['temperature']}")

    def _score(self, feats: Features) -> torch.Tensor:
        return energy(feats.logits, self.params["temperature"])
