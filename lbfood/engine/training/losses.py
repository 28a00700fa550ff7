"""The background objectives added to CE when fine-tuning (L = CE + λ·term, paper Eq. 7).

All read the last feature map z (B, C, H, W), the labels y and the background mask of Eq. 5 (locations
with p_j(y) < δ, p_j = softmax(W z_j + b) from the classifier head applied at each location, Eq. 4; the
mask carries no gradient). Each takes an optional `count` that replaces the number of elements its mean
divides by: data parallelism passes the global count over the number of processes (possibly
fractional), so that DDP's averaged gradient is that of the global-batch mean. No formulation has a
data-dependent branch, so each compiles without graph breaks.

- `lff_from_mask`: L_LFF, the paper's Eq. 6.
- `rel_lff_from_mask`: Eq. 6 with an image-relative margin μ_i = r · mean foreground norm of image i.
- `energy_bounded`: Liu et al.'s energy-bounded outlier-exposure loss with background locations as outliers.
- `bg_head_bce`: BCE of a binary background-vs-ID head (after Pei et al., ICLR 2024, the paper's ref. [15]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.background import background_mask, location_logits

__all__ = ["background_mask", "bg_head_bce", "energy_bounded", "lff_from_mask", "lff_loss", "location_logits",
           "rel_lff_from_mask"]


def lff_from_mask(fmap: torch.Tensor, mask: torch.Tensor, mu: float,
                  count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 given a mask: (loss, per-location norms ‖z_j‖ (B, H, W), detached).

    L_LFF = (1/|S|) Σ_{j∈S} max(‖z_j‖₂ − μ, 0); exactly 0 when S is empty. `count` (> 0) replaces the
    denominator |S| (clamped to ≥ 1).
    """
    norms = fmap.float().norm(dim=1)
    m = mask.to(norms.dtype)
    denom = m.sum().clamp_min(1) if count is None else count
    loss = ((norms - mu).clamp_min(0) * m).sum() / denom
    return loss, norms.detach()


def lff_loss(fmap: torch.Tensor, head: nn.Linear, targets: torch.Tensor, delta: float, mu: float) -> torch.Tensor:
    """L_LFF (Eq. 6) of a batch, with the background mask from `head` (Eq. 5)."""
    return lff_from_mask(fmap, background_mask(fmap, head, targets, delta), mu)[0]


def rel_mask(mask: torch.Tensor) -> torch.Tensor:
    """The locations the relative margin applies to: background (Eq. 5) of images that have at least one
    foreground location (an image that is all background has no object to be relative to)."""
    has_fg = (~mask).flatten(1).any(dim=1)
    return mask & has_fg[:, None, None]


def rel_lff_from_mask(fmap: torch.Tensor, mask: torch.Tensor, ratio: float,
                      count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_LFF with a relative margin (issue 23; Eq. 6 with μ made image-relative): (loss, norms detached).

        μ_i = r · sg( mean_{j∉S_i} ‖z_ij‖₂ ),   L = (1/|S'|) Σ_i Σ_{j∈S'_i} max(‖z_ij‖₂ − μ_i, 0)

    Foreground F_i is the complement of Eq. 5's mask (p_j(y) ≥ δ): one threshold splits every location
    into "pushed down" and "reference", and F_i is rarely empty. (The stricter p_j(y) ≥ 1 − δ would leave
    a band of locations in neither set and, at δ = 1/K on a small map, no foreground at all in many
    images.) sg is stop-gradient: the loss lowers background norms relative to the object and never
    pulls the object's norms down. S'_i = S_i for images with a foreground location, else ∅ (`rel_mask`).
    `count` replaces |S'| as in `lff_from_mask`.
    """
    norms = fmap.float().norm(dim=1)
    fg = (~mask).to(norms.dtype)
    ref = (norms.detach() * fg).sum(dim=(1, 2)) / fg.sum(dim=(1, 2)).clamp_min(1)
    return lff_from_mask(fmap, rel_mask(mask), ratio * ref[:, None, None], count)


def energy_bounded(logits: torch.Tensor, loc_logits: torch.Tensor, mask: torch.Tensor, m_in: float, m_out: float,
                   count_in: torch.Tensor | None = None, count_out: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The energy-bounded loss of Liu et al., "Energy-based Out-of-distribution Detection" (NeurIPS 2020,
    Eq. 9; their code: CIFAR/train.py), with the background locations of Eq. 5 as the outliers:

        E(v) = −logsumexp_k v_k   (free energy, T = 1)
        L = mean_i max(0, E(f(z̄_i)) − m_in)² + mean_{j∈S} max(0, m_out − E(W z_j + b))²

    ID images (their pooled logits f(z̄), Eq. 1) are pushed below m_in, background locations (Eq. 4's
    per-location logits) above m_out. The second mean is 0 when S is empty. Returns (loss, ID energies
    (B,), location energies (B, H, W)), the energies detached. `count_in`/`count_out` replace B and |S|.
    """
    e_in = -torch.logsumexp(logits.float(), dim=1)
    e_loc = -torch.logsumexp(loc_logits.float(), dim=1)
    m = mask.to(e_loc.dtype)
    n_in = torch.tensor(float(len(e_in)), device=e_in.device) if count_in is None else count_in
    n_out = m.sum().clamp_min(1) if count_out is None else count_out
    loss = (e_in - m_in).clamp_min(0).pow(2).sum() / n_in + ((m_out - e_loc).clamp_min(0).pow(2) * m).sum() / n_out
    return loss, e_in.detach(), e_loc.detach()


def bg_head_bce(fmap: torch.Tensor, bg_head: nn.Linear, mask: torch.Tensor, count_in: torch.Tensor | None = None,
                count_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BCE of a binary head g(v) = w·v + b on the feature space (issue 23, after Pei et al., ICLR 2024):

        L = mean_i BCE(g(z̄_i), 1) + mean_{j∈S} BCE(g(z_j), 0) = mean_i softplus(−g(z̄_i)) + mean_{j∈S} softplus(g(z_j))

    z̄_i is image i's pooled feature (GAP, Eq. 1: the ID sample), z_j a background location of Eq. 5 (the
    OOD sample); each set is averaged on its own, so the two classes weigh the same however few
    background locations there are. Returns (loss, ID logits (B,), location logits (B, H, W)), detached.
    """
    z = fmap.float()
    w, b = bg_head.weight.float(), bg_head.bias.float()
    g_in = F.linear(z.mean(dim=(2, 3)), w, b).squeeze(1)
    g_loc = torch.einsum("bchw,c->bhw", z, w[0]) + b[0]
    m = mask.to(g_loc.dtype)
    n_in = torch.tensor(float(len(g_in)), device=g_in.device) if count_in is None else count_in
    n_out = m.sum().clamp_min(1) if count_out is None else count_out
    loss = F.softplus(-g_in).sum() / n_in + (F.softplus(g_loc) * m).sum() / n_out
    return loss, g_in.detach(), g_loc.detach()
