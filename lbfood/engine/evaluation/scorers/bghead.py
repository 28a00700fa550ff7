"""The background-vs-ID head's score: the scorer of runs fine-tuned with `--objective bg-head`.

After Pei et al., "Image Background Serves as Good Proxy for Out-of-distribution Data" (ICLR 2024, the
paper's ref. [15]; their method SSOD). What is taken from it: a binary OOD branch beside the classifier,
trained jointly and end to end with classification, whose OOD (negative) samples are locations of ID
images' feature maps that the classifier itself marks as background (the local property of
convolution), and whose sigmoid output is the "OOD factor" P(x ∈ S_ID | x) of their decomposition
P(w_i | x) = P(w_i | x ∈ S_ID, x) · P(x ∈ S_ID | x).

What lbfood decided where the sources read for this left it open (the decisions are ours, not SSOD's):
- The head is linear on the feature space, g(v) = w·v + b (models.add_bg_head), zero-initialised.
- ID samples are images' pooled features z̄ (what the head reads at test time), OOD samples the
  background locations of the paper's Eq. 5 at its δ; each set is averaged on its own (training/losses.bg_head_bce).
- The score is the head's log-odds g(z̄) = log σ(g) − log(1 − σ(g)): the same ranking as the probability
  σ(g), without the ties float32 gives it once σ rounds to 1. `combine="msp"` scores the log of the
  decomposition's product instead, log max_k softmax_k + log σ(g(z̄)).
Higher = more in-distribution (paper Eq. 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features, wide
from lbfood.engine.evaluation.scorers.base import Scorer, head_state

COMBINE = ("none", "msp")


def bghead_score(logits: torch.Tensor, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 combine: str) -> torch.Tensor:
    """g(z̄) (combine "none"), or log MSP + log σ(g(z̄)) (combine "msp"); the export computes the same."""
    g = F.linear(wide(features), weight.to(wide(features).dtype), bias.to(wide(features).dtype)).squeeze(1)
    if combine == "msp":
        return torch.log_softmax(wide(logits), dim=1).amax(dim=1) + F.logsigmoid(g)
    return g


class BgHead(Scorer):
    """S(x) = g(z̄), the log-odds of the run's background-vs-ID head (`--objective bg-head`)."""

    name = "bghead"
    needs_fit = True  # only to keep the head's weight (1, D) and bias (1,)
    reads = "bg_head"
    defaults = {"combine": "none"}  # none | msp (× the max softmax probability, Pei et al.'s product)
    state_keys = ("weight", "bias")

    def check_params(self) -> None:
        if self.params["combine"] not in COMBINE:
            raise ConfigError(f"bghead: combine must be one of {', '.join(COMBINE)}, got {self.params['combine']!r}")

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        return head_state(head)

    def _score(self, feats: Features) -> torch.Tensor:
        return bghead_score(feats.logits, feats.features, self.state["weight"], self.state["bias"],
                            self.params["combine"])
