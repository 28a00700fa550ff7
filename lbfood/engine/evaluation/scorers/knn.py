"""Deep nearest neighbours (Sun, Ming, Zhu & Li, ICML 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer


def kth_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Euclidean distance from each (unit-norm) query to its k-th nearest (unit-norm) bank row.

    Exact search by matrix products on the queries' device, `chunk` queries × `chunk` bank rows at a
    time, keeping a running top-k of similarities: memory is O(chunk·(chunk + k)) whatever the sizes.
    For unit vectors ‖q − b‖² = 2 − 2·q·b, so the nearest rows are the most similar ones.
    """
    bank = bank.to(queries.device)
    out = []
    for q in queries.split(chunk):
        best = torch.empty(q.shape[0], 0, device=q.device, dtype=q.dtype)
        for b in bank.split(chunk):
            sims = torch.cat([best, q @ b.T], dim=1)
            best = sims.topk(min(k, sims.shape[1]), dim=1).values
        out.append((2.0 - 2.0 * best[:, k - 1]).clamp(min=0).sqrt())
    return torch.cat(out)


class KNN(Scorer):
    """S(x) = −‖z* − z_(k)‖ with z = h(x)/‖h(x)‖ and z_(k) its k-th nearest normalised training feature
    (Sun et al., ICML 2022, Eq. 2 and Alg. 1; k = 50 as for CIFAR). The reference (faiss IndexFlatL2)
    negates the *squared* distance; the ranking, hence every metric, is the same. `fraction` < 1 keeps
    a random share α of the training set (their Table 4, used for ImageNet).
    """

    name = "knn"
    needs_fit = True
    defaults = {"k": 50, "chunk": 4096, "fraction": 1.0, "seed": 0}
    state_keys = ("bank",)

    def check_params(self) -> None:
        p = self.params
        if p["k"] < 1:
            raise ConfigError(f"knn: k must be >= 1, got {p['k']}")
        if p["chunk"] < 1:
            raise ConfigError(f"knn: chunk must be >= 1, got {p['chunk']}")
        if not 0 < p["fraction"] <= 1:
            raise ConfigError(f"knn: fraction must be in (0, 1], got {p['fraction']}")

    def can_fit(self, n_train: int) -> bool:
        return self._bank_size(n_train) >= self.params["k"]

    def _bank_size(self, n_train: int) -> int:
        return n_train if self.params["fraction"] >= 1 else max(1, int(round(n_train * self.params["fraction"])))

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        bank = train.features.float()
        if self.params["fraction"] < 1:
            g = torch.Generator().manual_seed(self.params["seed"])
            bank = bank[torch.randperm(len(bank), generator=g)[:self._bank_size(len(bank))]]
        if len(bank) < self.params["k"]:
            raise ConfigError(f"knn: k={self.params['k']} but only {len(bank)} training features; "
                              "lower k or use more training images")
        return {"bank": _normalise(bank)}

    def _score(self, feats: Features) -> torch.Tensor:
        q = _normalise(feats.features.float())
        return -kth_neighbour_distance(q, self.state["bank"], self.params["k"], self.params["chunk"])


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=1, eps=1e-10)
