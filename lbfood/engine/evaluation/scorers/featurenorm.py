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

    The block (an index into the model's residual blocks, `forward_blocks`, in order: 0..7 for
    ResNet-18, 0..15 for ResNet-34/50, 0..11 for WRN-28-10; -1 = last) is `block` if given, else the
    argmax of NormRatio over every residual block on the training set, which must be extracted with
    `jigsaw=True`, as the reference (`normratio.py`) selects it.
    """

    name = "featurenorm"
    needs_fit = True
    needs_blocks = True
    defaults = {"block": None}  # None = select by NormRatio at fit time
    # num_blocks: how many blocks the training features had; statistics fitted on another layout
    # (earlier lbfood stored one norm per stage) lack it, so they are refitted, not misread.
    state_keys = ("block", "norm_ratio", "num_blocks")

    def check_params(self) -> None:
        b = self.params["block"]
        if b is None:
            return
        try:
            ok = float(b) == int(float(b))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"featurenorm: block must be an integer residual-block index, got {b!r}")
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
                n = 0 if train.block_norms is None else train.block_norms.shape[1]
                return {"block": torch.tensor([self.params["block"]]), "norm_ratio": torch.zeros(0),
                        "num_blocks": torch.tensor([n])}
            raise ConfigError("featurenorm: selecting the block needs the training features extracted "
                              "with jigsaw=True (block norms of jigsaw puzzles); or pass block=N")
        ratio = norm_ratio(train.block_norms, train.jigsaw_block_norms)
        chosen = self.params["block"] if self.params["block"] is not None else int(ratio.argmax())
        return {"block": torch.tensor([chosen]), "norm_ratio": ratio.float(),
                "num_blocks": torch.tensor([ratio.numel()])}

    def _score(self, feats: Features) -> torch.Tensor:
        if feats.block_norms is None:
            raise ConfigError("featurenorm needs block norms: extract features with blocks=True")
        b, n = self.block, feats.block_norms.shape[1]
        fitted_on = int(self.state["num_blocks"].item()) if "num_blocks" in self.state else 0
        if self.params["block"] is None and fitted_on and fitted_on != n:
            raise ConfigError(f"featurenorm: fitted on features with {fitted_on} blocks, scoring features with "
                              f"{n}; delete the run's scorers/featurenorm*.safetensors to refit")
        if not -n <= b < n:
            raise ConfigError(f"featurenorm: block {b} does not exist; the model has {n} blocks (0..{n - 1})")
        return feats.block_norms[:, b]
