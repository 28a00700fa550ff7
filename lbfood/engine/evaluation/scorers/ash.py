"""ASH-S: activation shaping (Djurisic et al., ICLR 2023)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer, energy, head_state, linear


def ash_s(x: torch.Tensor, p: float) -> torch.Tensor:
    """ASH-S on (N, D) activations: zero all but the top (100 − p) % of each row, then scale the kept
    ones by exp(s1 / s2), s1 and s2 the row sums before and after pruning (Djurisic et al., Alg. 1).
    """
    return ash_s_top(x, ash_kept(x.shape[1], p))


def ash_kept(n: int, p: float) -> int:
    """How many of n activations ASH-S keeps at pruning percentile p."""
    return n - int(round(n * p / 100.0))  # the reference: k = n - np.round(n * percentile / 100)


def ash_s_top(x: torch.Tensor, k: int) -> torch.Tensor:
    """ASH-S keeping the top k of each row (k fixed: an exported graph needs it as a constant)."""
    s1 = x.sum(dim=1)
    if k <= 0:
        return torch.zeros_like(x)
    v, i = torch.topk(x, k, dim=1)
    pruned = torch.zeros_like(x).scatter_(1, i, v)
    s2 = pruned.sum(dim=1)
    # An all-zero row stays zero instead of becoming 0/0 = NaN.
    scale = torch.where(s2 != 0, s1 / torch.where(s2 != 0, s2, torch.ones_like(s2)), torch.zeros_like(s2))
    return pruned * torch.exp(scale)[:, None]


class ASH(Scorer):
    """S(x) = energy(W·ASH-S(h(x)) + b), p = 90 (Djurisic et al., ICLR 2023, Sec. 3).

    Applied to the pooled penultimate vector (as OpenOOD does, reshaping it to (D, 1, 1)), not to the
    feature map, because the report extracts each dataset once and keeps only pooled features.
    """

    name = "ash"
    needs_fit = True  # only to keep the head's weight and bias; no statistics of the data
    defaults = {"p": 90.0}  # percentile of activations pruned
    state_keys = ("weight", "bias")

    def check_params(self) -> None:
        if not 0 <= self.params["p"] < 100 or math.isnan(self.params["p"]):
            raise ConfigError(f"{self.name}: p must be in [0, 100), got {self.params['p']}")

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        return head_state(head)

    def _score(self, feats: Features) -> torch.Tensor:
        f = ash_s(feats.features.float(), self.params["p"])
        return energy(linear(f, self._get("weight", f), self._get("bias", f)))
