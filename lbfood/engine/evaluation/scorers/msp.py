"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

import torch

from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer


class MSP(Scorer):
    """S(x) = max_k softmax(f(x))_k (Hendrycks & Gimpel, ICLR 2017, Sec. 2)."""

    name = "msp"

    def _score(self, feats: Features) -> torch.Tensor:
        return torch.softmax(feats.logits.float(), dim=1).amax(dim=1)
