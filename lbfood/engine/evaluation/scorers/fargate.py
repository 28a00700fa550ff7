"""The far-OOD gate of `lbfood score`: class-conditional Mahalanobis distances (Lee, Lee, Lee & Shin, "A
Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018,
Eq. 2, with their feature ensemble over layers, Sec. 2.2), with a threshold of its own that keeps 99.7 %
of the ID training images.

Energy-type scores (the paper's ReAct among them) rank images that are nothing like the training data
(pixel noise, a blank frame, a screenshot of text, another modality) as *more* in-distribution than ID
images. Distances to the class clusters of the training data do not share that failure. `lbfood score`
calls an image ID only when the paper's score passes its threshold γ **and** this gate passes its own
γ_far (`--no-far-gate`: the paper's verdict alone).

Three views of an image, each with class means and one shared covariance Σ (maximum likelihood, as
Lee et al.'s Eq. 2), shrunk towards a multiple of the identity, Σ' = (1 − s)·Σ + s·(tr Σ / D)·I, and
inverted. `shrinkage` "auto" takes s from Ledoit & Wolf (2004), as sklearn's `ledoit_wolf_shrinkage`
computes it: small with thousands of training images, large with a few hundred, where the plain Σ is
singular and its pseudo-inverse would ignore every direction the training images do not span.
- the pooled penultimate features h(x) (what the paper's scores read);
- the per-layer features of Lee et al.'s ensemble: each residual block's output averaged over space,
  its channels in at most 32 groups (`Features.block_means`);
- log FeatureNorm of every residual block (`Features.block_norms`: how strongly each layer responds).
In the measurements that chose them (README, `score`), the pooled features alone let most blank frames
and digits through; adding the block norms stopped the frames, text and Gaussian noise, and adding the
block means stopped uniform noise.
Each squared distance d²_v is measured in units of its own 99.5 % training quantile q_v, and the score
is S(x) = −max_v d²_v(x) / q_v (higher = more in-distribution, as every scorer). Both the quantiles and
γ_far come from *cross-fitted* training scores: each of FOLDS folds is scored by statistics fitted on the
other folds, so training images are scored as unseen images are (in-sample distances are biased low and
would give too strict a threshold). γ_far is the 0.3 % quantile of the cross-fitted S: 99.7 %, not 99.5 %,
because cross-fitting undoes the gate's own fit but not the network's, which has seen its training
images and maps them a little nearer the class clusters than new ones; at 99.5 % the demo's LFF run lost
0.6 % of its ID test images, at 99.7 % each demo run loses at most 0.4 % (README, `score`).

The maths is here alone: `lbfood score`, `report --method fargate` and `export` (scorer and graph) use it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer
from lbfood.engine.evaluation.scorers.mahalanobis import class_gaussians

NAME = "fargate"
FORMAT = "lbfood-fargate-1"  # what run.json's "far_gate" records: another definition of the gate is refitted
KEEP = 0.997  # the share of ID training images (cross-fitted) the gate keeps
SCALE = 0.995  # each view's distance is measured in units of this quantile of its cross-fitted training ones
FOLDS = 5
SEED = 0  # the folds' random split
VIEWS = ("features", "layers", "norms")
_KEYS = {"features": ("means", "precision"), "layers": ("layer_means", "layer_precision"),
         "norms": ("norm_means", "norm_precision")}
_CHUNK = 4096  # rows scored at a time
_TINY = 1e-6  # floor of a block norm before its log (a layer that does not respond at all)


def view(feats: Features, name: str) -> torch.Tensor:
    """The gate's view `name` of `feats`: pooled features (N, D), block means (N, M) or log block norms (N, B)."""
    if name == "features":
        return feats.features
    if feats.block_norms is None or feats.block_means is None:
        raise ConfigError("the far-OOD gate reads block norms and means: extract the features with blocks=True")
    return feats.block_means if name == "layers" else log_norms(feats.block_norms)


def log_norms(block_norms: torch.Tensor) -> torch.Tensor:
    return torch.log(block_norms.clamp_min(_TINY))


def distance2(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """min_c (x − μ_c)ᵀ P (x − μ_c), (N,), in float64 (expanded, as the Mahalanobis scorer and its
    exported module compute it; traceable for ONNX/TorchScript)."""
    x, means, precision = x.double(), means.double(), precision.double()
    mu_p = means @ precision
    d2 = (x @ precision * x).sum(dim=1, keepdim=True) - 2.0 * x @ mu_p.T + (mu_p * means).sum(dim=1)[None, :]
    return d2.min(dim=1).values


def gate_score(features: torch.Tensor, block_means: torch.Tensor, block_norms: torch.Tensor,
               state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The gate's score (N,) float64 from pooled features (N, D), block means (N, M), block norms (N, B) and
    the fitted statistics (`FarGate.state`, on the same device): what the scorer and the exported graph
    compute."""
    xs = (features, block_means, log_norms(block_norms))
    return combine([distance2(x, *(state[k] for k in _KEYS[v])) for x, v in zip(xs, VIEWS, strict=True)],
                   state["scales"])


def combine(d2: list[torch.Tensor], scales: torch.Tensor) -> torch.Tensor:
    """The gate's score −max_v d²_v / q_v (float64), from each view's squared distance and its scale q_v."""
    return -torch.stack([d / scales[i].double() for i, d in enumerate(d2)], dim=1).amax(dim=1)


def fit_view(x: torch.Tensor, labels: torch.Tensor, shrinkage: float | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the precision of the shrunk shared covariance (D, D), float64; `shrinkage`
    "auto" = Ledoit-Wolf's on the class-centred features."""
    means, cov = class_gaussians(x, labels, NAME)
    d = cov.shape[0]
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage

        keep = labels >= 0
        classes = torch.unique(labels[keep])
        centred = x[keep].double() - means[torch.searchsorted(classes, labels[keep])]
        shrinkage = float(ledoit_wolf_shrinkage(centred.numpy(), assume_centered=True))
    cov = (1.0 - shrinkage) * cov + shrinkage * (torch.trace(cov) / d) * torch.eye(d, dtype=cov.dtype)
    return means, torch.linalg.pinv(cov, hermitian=True)


def cross_fitted(train: Features, shrinkage: float | str, folds: int = FOLDS) -> torch.Tensor:
    """(N, views) squared distances of each training image from statistics fitted without its fold."""
    n = len(train)
    if n < 2 * folds:
        raise ConfigError(f"the far-OOD gate needs at least {2 * folds} training images, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    out = torch.empty(n, len(VIEWS), dtype=torch.float64)
    for i, name in enumerate(VIEWS):
        x = view(train, name)
        for k in range(folds):
            held = perm[k::folds]
            rest = torch.ones(n, dtype=torch.bool)
            rest[held] = False
            stats = fit_view(x[rest], train.labels[rest], shrinkage)
            out[held, i] = torch.cat([distance2(c, *stats) for c in x[held].split(4096)])
    return out


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(np.quantile(x.double().numpy(), q))  # numpy's linear interpolation


class FarGate(Scorer):
    """S(x) = −max_v d²_v(x) / q_v over three views (pooled features, block means, log block norms), d²_v the
    smallest Mahalanobis distance to a class mean (Lee et al., NeurIPS 2018, Eq. 2, ensembled over layers
    as in their Sec. 2.2), q_v its cross-fitted 99.5 % training quantile: `lbfood score`'s far-OOD gate
    (module docstring). Its threshold comes from `threshold` (99.7 % of the training images kept)."""

    name = NAME
    needs_fit = True
    needs_blocks = True
    defaults = {"shrinkage": "auto"}  # s of each view's covariance: "auto" (Ledoit-Wolf) or a number in [0, 1)
    state_keys = ("means", "precision", "layer_means", "layer_precision", "norm_means", "norm_precision", "scales")

    def check_params(self) -> None:
        s = self.params["shrinkage"]
        if s == "auto":
            return
        try:
            s = float(s)
        except (TypeError, ValueError):
            s = float("nan")
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"fargate: shrinkage must be auto or in [0, 1), got {self.params['shrinkage']!r}")
        self.params["shrinkage"] = s

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        s = self.params["shrinkage"]
        crossed = cross_fitted(train, s)
        state = {}
        for v in VIEWS:
            state.update(zip(_KEYS[v], fit_view(view(train, v), train.labels, s), strict=True))
        state["scales"] = torch.tensor([max(_quantile(crossed[:, i], SCALE), 1e-12) for i in range(len(VIEWS))],
                                       dtype=torch.float64)
        return state

    def _score(self, feats: Features) -> torch.Tensor:
        view(feats, "layers")  # block norms and means present, or a clear error
        state = {k: self._get(k, feats.features) for k in self.state_keys}
        parts = zip(feats.features.split(_CHUNK), feats.block_means.split(_CHUNK), feats.block_norms.split(_CHUNK),
                    strict=True)
        return torch.cat([gate_score(f, m, b, state) for f, m, b in parts])


def threshold(train: Features, gate: FarGate, keep: float = KEEP) -> float:
    """γ_far: the score that keeps a share `keep` of the cross-fitted training scores of the fitted `gate`
    (numpy's linear-interpolation quantile); the gate passes an image when its score is ≥ γ_far."""
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep must be in (0, 1], got {keep}")
    crossed = cross_fitted(train, gate.params["shrinkage"])
    return _quantile(combine(list(crossed.T), gate.state["scales"]), 1.0 - keep)
