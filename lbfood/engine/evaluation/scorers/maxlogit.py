"""Maximum logit (Hendrycks et al., ICML 2022, "Scaling out-of-distribution detection for real-world settings")."""

from __future__ import annotations

import torch

from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer


class MaxLogit(Scorer):
    """S(x) = max_k f_k(x) (Hendrycks et al., ICML 2022, Sec. 3, "MaxLogit")."""

    name = "maxlogit"

    def _score(self, feats: Features) -> torch.Tensor:
        return feats.logits.float().amax(dim=1)
