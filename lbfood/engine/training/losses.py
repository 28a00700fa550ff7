"""The local-background-feature loss L_LFF (paper §IV, Eqs. 4–6).

Given the last feature map z (B, C, H, W) and labels y:
- every location z_j gets class probabilities p_j = softmax(f(z_j)) from the classifier head f applied
  at that location (a 1×1 convolution with the head's weight and bias), Eq. 4;
- background locations are those with p_j(y) < δ, Eq. 5 (the mask carries no gradient);
- L_LFF = mean over background locations of max(‖z_j‖₂ − μ, 0), Eq. 6; exactly 0 when there is none.
The formulation has no data-dependent branches, so it compiles without graph breaks.
"""

from __future__ import annotations

import torch
from torch import nn

from lbfood.engine.background import background_mask, location_logits

__all__ = ["background_mask", "lff_from_mask", "lff_loss", "location_logits"]


def lff_from_mask(fmap: torch.Tensor, mask: torch.Tensor, mu: float,
                  count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 given a mask: (loss, per-location norms ‖z_j‖ (B, H, W), detached).

    `count` (> 0) replaces the denominator, the number of background locations clamped to ≥ 1 (data
    parallelism passes the global count over the number of processes, which may be fractional, so that
    the averaged gradient is that of the global-batch mean).
    """
    norms = fmap.float().norm(dim=1)
    m = mask.to(norms.dtype)
    denom = m.sum().clamp_min(1) if count is None else count
    loss = ((norms - mu).clamp_min(0) * m).sum() / denom
    return loss, norms.detach()


def lff_loss(fmap: torch.Tensor, head: nn.Linear, targets: torch.Tensor, delta: float, mu: float) -> torch.Tensor:
    """L_LFF (Eq. 6) of a batch, with the background mask from `head` (Eq. 5)."""
    return lff_from_mask(fmap, background_mask(fmap, head, targets, delta), mu)[0]
