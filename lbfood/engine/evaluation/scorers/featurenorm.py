"""FeatureNorm with NormRatio block selection (Yu, Shin, Lee, Jun & Lee, CVPR 2023)."""

from __future__ import annotations

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer


def norm_ratio(id_norms: torch.Tensor, jigsaw_norms: torch.Tensor) -> torch.Tensor:
    """NormRatio per block (B,): mean over training images of FeatureNorm(x) / FeatureNorm(jigsaw(x))
    (Yu et al., CVPR 2023, Eq. 4; the reference averages the per-image ratios)."""
    return (id_norms.double() / jigsaw_norms.double().clamp_min(1e-12)).mean(dim=0)


class FeatureNorm(Scorer):
    """S(x) = FeatureNorm of the selected block: ‖ReLU(a_c)‖₂ over H×W, averaged over channels c
    (Yu et al., CVPR 2023, Eq. 2–3), read from `Features.block_norms`.

    The block (an index into the model's `forward_blocks` stages; -1 = last) is `block` if given,
    else the argmax of NormRatio on the training set, which must be extracted with `jigsaw=True`.
    The reference selects among residual blocks; lbfood's models expose stage outputs.
    """

    name = "featurenorm"
    needs_fit = True
    needs_blocks = True
    defaults = {"block": None}  # None = select by NormRatio at fit time
    state_keys = ("block", "norm_ratio")

    def check_params(self) -> None:
        b = self.params["block"]
        if b is None:
            return
        try:
            ok = float(b) == int(float(b))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"featurenorm: block must be an integer stage index, got {b!r}")
        self.params["block"] = int(float(b))

    @property
    def fitted(self) -> bool:
        return self.params["block"] is not None or super().fitted

    @property
    def block(self) -> int | None:
        """The block scored: the `block` parameter, else the one NormRatio selected."""
        if self.params["block"] is not None:
            return self.params["block"]
        return int(self.state["block"].item()) if "block" in self.state else None

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        if train.block_norms is None or train.jigsaw_block_norms is None:
            if self.params["block"] is not None:
                return {"block": torch.tensor([self.params["block"]]), "norm_ratio": torch.zeros(0)}
            raise ConfigError("featurenorm: selecting the block needs the training features extracted "
                              "with jigsaw=True (block norms of jigsaw puzzles); or pass block=N")
        ratio = norm_ratio(train.block_norms, train.jigsaw_block_norms)
        chosen = self.params["block"] if self.params["block"] is not None else int(ratio.argmax())
        return {"block": torch.tensor([chosen]), "norm_ratio": ratio.float()}

    def _score(self, feats: Features) -> torch.Tensor:
        if feats.block_norms is None:
            raise ConfigError("featurenorm needs block norms: extract features with blocks=True")
        b, n = self.block, feats.block_norms.shape[1]
        if not -n <= b < n:
            raise ConfigError(f"featurenorm: block {b} does not exist; the model has {n} blocks (0..{n - 1})")
        return feats.block_norms[:, b]
