"""Background locations of the last feature map (paper §IV-A, Eqs. 4–5), shared by the L_LFF loss
(training) and the Fig. 7 pictures (evaluation).

Every location z_j gets class probabilities p_j = softmax(f(z_j)) from the classifier head f applied at
that location (a 1×1 convolution with the head's weight and bias), Eq. 4; background locations are
those with p_j(y) < δ, Eq. 5 (the mask carries no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def location_logits(fmap: torch.Tensor, head: nn.Linear) -> torch.Tensor:
    """f(z_j) at every location: (B, K, H, W). Their spatial mean equals head(GAP(z)) (f is affine)."""
    return F.conv2d(fmap, head.weight[:, :, None, None].to(fmap.dtype),
                    None if head.bias is None else head.bias.to(fmap.dtype))


@torch.no_grad()
def background_mask(fmap: torch.Tensor, head: nn.Linear, targets: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 5: BoolTensor (B, H, W), True where the probability of the true class is below δ."""
    logp = location_logits(fmap.detach(), head).float().log_softmax(dim=1)
    p_true = logp.gather(1, targets.view(-1, 1, 1, 1).expand(-1, 1, *logp.shape[2:])).squeeze(1).exp()
    return p_true < delta
