"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

import torch

from lbfood.engine.features import Features
from lbfood.engine.scorers import register
from lbfood.engine.scorers.base import Scorer


@register
class MSP(Scorer):
    """S(x) = max_k softmax(f(x))_k (Hendrycks & Gimpel, ICLR 2017, Sec. 2)."""

    name = "msp"

    def _score(self, feats: Features) -> torch.Tensor:
        return torch.softmax(feats.logits.float(), dim=1).amax(dim=1)
