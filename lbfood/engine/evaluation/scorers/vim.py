"""ViM: virtual-logit matching (Wang, Li, Feng & Zhang, CVPR 2022)."""

from __future__ import annotations

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer, energy, head_state


def principal_dim(d: int) -> int:
    """The reference's choice of the principal-space dimension for D-dim features:
    1000 if D ≥ 2048, 512 if D ≥ 768, else D // 2 (e.g. 256 for ResNet-18's 512 features)."""
    return 1000 if d >= 2048 else 512 if d >= 768 else d // 2


class ViM(Scorer):
    """S(x) = energy(x) − α·‖x^{P⊥}‖ (Wang et al., CVPR 2022, Eq. 9–11, in the reference's sign: the
    virtual logit α‖x^{P⊥}‖ is subtracted from logsumexp of the logits).

    Origin u = −W⁺b; P = the top-`dim` eigenvectors of the covariance of (x − u) on ID training
    features, x^{P⊥} the residual of x − u outside P; α = mean max-logit / mean residual norm on the
    training set. `dim` = None uses the reference's rule (`principal_dim`); it must be < D.
    """

    name = "vim"
    needs_fit = True
    defaults = {"dim": None}  # D_P, principal-space dimension; None = reference rule
    state_keys = ("origin", "residual_basis", "alpha")

    def check_params(self) -> None:
        d = self.params["dim"]
        if d is None:
            return
        try:
            ok = float(d) == int(float(d)) and int(float(d)) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"vim: dim must be a positive integer (or omitted), got {d!r}")
        self.params["dim"] = int(float(d))

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        hs = head_state(head)
        w, b = hs["weight"].double(), hs["bias"].double()
        x = train.features.double()
        d = x.shape[1]
        dim = self.params["dim"] if self.params["dim"] is not None else principal_dim(d)
        if not 1 <= dim < d:
            raise ConfigError(f"vim: dim must be in [1, {d - 1}] for {d}-dim features, got {dim}")
        u = -torch.linalg.pinv(w) @ b
        xc = x - u
        cov = xc.T @ xc / len(xc)  # EmpiricalCovariance(assume_centered=True)
        _, vecs = torch.linalg.eigh(cov)  # eigenvalues ascending
        residual = vecs[:, : d - dim]  # all but the top-`dim` eigenvectors
        vlogit = torch.linalg.vector_norm(xc @ residual, dim=1)
        alpha = train.logits.double().amax(dim=1).mean() / vlogit.mean()
        return {"origin": u.float(), "residual_basis": residual.float(), "alpha": alpha.float().reshape(1)}

    def _score(self, feats: Features) -> torch.Tensor:
        f = feats.features.float()
        r = torch.linalg.vector_norm((f - self._get("origin", f)) @ self._get("residual_basis", f), dim=1)
        return energy(feats.logits) - self._get("alpha", f) * r
