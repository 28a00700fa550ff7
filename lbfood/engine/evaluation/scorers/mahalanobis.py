"""Mahalanobis distance to class-conditional Gaussians (Lee, Lee, Lee & Shin, NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the covariance Σ (D, D) they share (maximum likelihood), in float64, from
    labelled features (rows labelled -1 are left out; none labelled raises ConfigError naming `who`)."""
    x, y = features.double(), labels
    keep = y >= 0
    if not keep.any():
        raise ConfigError(f"{who} needs labelled training features (every label is -1)")
    x, y = x[keep], y[keep]
    classes = torch.unique(y)
    means = torch.stack([x[y == c].mean(dim=0) for c in classes])
    centred = x - means[torch.searchsorted(classes, y)]
    return means, centred.T @ centred / len(x)


class Mahalanobis(Scorer):
    """S(x) = max_c −(h(x) − μ_c)ᵀ Σ⁻¹ (h(x) − μ_c) (Lee et al., NeurIPS 2018, Eq. 2) on the pooled
    penultimate features: class means μ_c, one covariance Σ shared by all classes (maximum likelihood,
    pseudo-inverted), i.e. minus the smallest squared Mahalanobis distance (ranking as −min distance).

    As in OpenOOD's `mds` and the paper's baseline table, this is the plain score: no input
    preprocessing (their ε-perturbation) and no multi-layer ensemble.
    """

    name = "mahalanobis"
    needs_fit = True
    defaults = {"chunk": 4096}  # rows scored at a time
    state_keys = ("means", "precision")

    def check_params(self) -> None:
        if self.params["chunk"] < 1:
            raise ConfigError(f"mahalanobis: chunk must be >= 1, got {self.params['chunk']}")

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        means, cov = class_gaussians(train.features, train.labels, self.name)
        return {"means": means, "precision": torch.linalg.pinv(cov, hermitian=True)}

    def _score(self, feats: Features) -> torch.Tensor:
        f = feats.features
        dt = _dtype(f.device)
        mu, prec = self._get("means", f).to(dt), self._get("precision", f).to(dt)
        mu_p = mu @ prec  # (C, D)
        mu_term = (mu_p * mu).sum(dim=1)  # μ_cᵀ P μ_c
        out = []
        for x in f.to(dt).split(self.params["chunk"]):
            xp = x @ prec
            d2 = (xp * x).sum(dim=1, keepdim=True) - 2.0 * x @ mu_p.T + mu_term[None, :]
            out.append(-d2.min(dim=1).values)
        return torch.cat(out).float()
