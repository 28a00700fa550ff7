"""The exported graph: uint8 images -> normalise -> model -> logits, score and verdict (paper Eq. 3).

`Detector` wraps a run's model and one score module holding the fitted scorer's statistics as
buffers, so that ONNX and TorchScript store them as constants; with `lbfood score`'s far-OOD gate
(scorers/fargate.py) a second such module computes the gate's score, and is_id needs both to pass.
Each score module computes what its scorer's `_score` computes, from the same tensors (`logits`,
pooled `features`, block norms); tests check both against `lbfood score`. Scores are higher = more in-distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import block_means_of, feature_norm, wide
from lbfood.engine.evaluation.scorers import Scorer, fargate
from lbfood.engine.evaluation.scorers.ash import ash_kept, ash_s_top
from lbfood.engine.evaluation.scorers.base import energy
from lbfood.engine.evaluation.scorers.bghead import bghead_score

LAYOUTS = ("NCHW", "NHWC")


class Detector(nn.Module):
    """images (B, 3, S, S) or (B, S, S, 3) uint8 -> (logits (B, K) float32, score (B,) float32,
    is_id (B,) bool = score ≥ γ) and, with a far-OOD gate, far_score (B,) float32 last, is_id then also
    needing far_score ≥ γ_far. Normalisation is inside: (x / 255 − mean) / std, as `lbfood score`.
    `.double()` makes every step float64 (logits and scores too): the tests' exact-arithmetic reference."""

    def __init__(self, model: nn.Module, score: nn.Module, *, mean, std, threshold: float,
                 layout: str = "NCHW", block: int | None = None, channels_last: bool = False,
                 gate: nn.Module | None = None, far_threshold: float | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ConfigError(f"unknown --layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        self.model, self.score = model, score
        self.nhwc = layout == "NHWC"
        self.channels_last = channels_last  # as `lbfood score` runs on the CPU (oneDNN is faster so)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.block = block  # FeatureNorm: the stage whose norm is the score; None: only the last map
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))
        # float64, as `lbfood score` compares the float32 score with a Python float: same verdicts.
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float64))
        self.gate = gate
        if gate is not None:
            if far_threshold is None or not math.isfinite(far_threshold):
                raise ConfigError(f"the far-OOD gate needs a finite threshold, got {far_threshold}")
            self.register_buffer("far_threshold", torch.tensor(float(far_threshold), dtype=torch.float64))
        self.outputs = ("logits", "score", "is_id") + (("far_score",) if gate is not None else ())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2) if self.nhwc else images
        x = (x.to(self.mean.dtype).div(255) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        gates = [m for m in (self.score, self.gate) if isinstance(m, FarGateScore)]
        outs = None  # every residual block's output, when FeatureNorm or the far-OOD gate reads them
        if self.block is None and not gates:
            z = self.model.forward_features(x)
        else:
            outs = self.model.forward_blocks(x)
            z = self.model.features_from_last_block(outs[-1])
        f = wide(z).mean(dim=(2, 3))
        logits = self.model.head(f)
        score = self._score(self.score, logits, f, outs).to(self.mean.dtype)
        is_id = score.double() >= self.threshold
        if self.gate is None:
            return logits, score, is_id
        far = self._score(self.gate, logits, f, outs).to(self.mean.dtype)  # as `lbfood score`: a float32 score vs γ_far
        return logits, score, is_id & (far.double() >= self.far_threshold), far


    def _score(self, module: nn.Module, logits, f, outs) -> torch.Tensor:
        if isinstance(module, FarGateScore):
            return module.gate(f, block_means_of(outs), torch.stack([feature_norm(o) for o in outs], dim=1))
        return module(logits, f, None if self.block is None else feature_norm(outs[self.block]))


# ---- one score module per scorer family ----------------------------------------------------------


class LogitScore(nn.Module):
    """MSP, MaxLogit, energy: functions of the logits alone."""

    def __init__(self, kind: str, temperature: float = 1.0) -> None:
        super().__init__()
        self.kind, self.temperature = kind, float(temperature)

    def forward(self, logits, features, norm):
        if self.kind == "msp":
            return torch.softmax(wide(logits), dim=1).amax(dim=1)
        if self.kind == "maxlogit":
            return wide(logits).amax(dim=1)
        return energy(logits, self.temperature)


class HeadEnergy(nn.Module):
    """energy(W·g(h) + b) with g = clip at c (ReAct), ASH-S, or identity; W masked for DICE."""

    def __init__(self, weight, bias, *, clip: float | None = None, ash_p: float | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().clone())
        self.register_buffer("bias", bias.float().clone())
        self.clip = None if clip is None or math.isinf(clip) else float(clip)
        self.ash_k = None if ash_p is None else ash_kept(weight.shape[1], ash_p)

    def forward(self, logits, features, norm):
        f = features
        if self.clip is not None:
            f = f.clamp(max=self.clip)
        if self.ash_k is not None:
            f = ash_s_top(wide(f), self.ash_k)
        return energy(F.linear(f, self.weight, self.bias))


class MahalanobisScore(nn.Module):
    """−min_c (h − μ_c)ᵀ P (h − μ_c), expanded and in float64 exactly as the scorer computes it."""

    def __init__(self, means, precision) -> None:
        super().__init__()
        prec = precision.double()
        mu_p = means.double() @ prec
        self.register_buffer("precision", prec.clone())
        self.register_buffer("mu_p", mu_p)  # (C, D)
        self.register_buffer("mu_term", (mu_p * means.double()).sum(dim=1))  # μ_cᵀ P μ_c

    def forward(self, logits, features, norm):
        x = features.double()
        d2 = (x @ self.precision * x).sum(dim=1, keepdim=True) - 2.0 * x @ self.mu_p.T + self.mu_term[None, :]
        return -d2.min(dim=1).values


class ViMScore(nn.Module):
    """energy(f(x)) − α·‖(h − u) R‖, R the residual basis (ViM, Eq. 9–11)."""

    def __init__(self, origin, residual_basis, alpha) -> None:
        super().__init__()
        self.register_buffer("origin", origin.float().clone())
        self.register_buffer("residual_basis", residual_basis.float().clone())
        self.register_buffer("alpha", alpha.float().reshape(1).clone())

    def forward(self, logits, features, norm):
        r = torch.linalg.vector_norm((wide(features) - self.origin) @ self.residual_basis, dim=1)
        return energy(logits) - self.alpha * r


class KNNScore(nn.Module):
    """−distance from h/‖h‖ to its k-th nearest row of the (normalised) training bank, exact search."""

    def __init__(self, bank, k: int) -> None:
        super().__init__()
        self.register_buffer("bank", bank.float().clone())
        self.k = int(k)

    def forward(self, logits, features, norm):
        q = F.normalize(wide(features), p=2, dim=1, eps=1e-10)
        sims = torch.topk(q @ self.bank.T, self.k, dim=1).values[:, self.k - 1]
        return -(2.0 - 2.0 * sims).clamp(min=0).sqrt()


class BgHeadScore(nn.Module):
    """The bg-head run's head log-odds g(h), or log MSP + log σ(g(h)) (scorers/bghead.py)."""

    def __init__(self, weight, bias, combine: str) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float().clone())
        self.register_buffer("bias", bias.float().clone())
        self.combine = combine

    def forward(self, logits, features, norm):
        return bghead_score(logits, features, self.weight, self.bias, self.combine)
class FarGateScore(nn.Module):
    """The far-OOD gate (scorers/fargate.py): −max of its three views' Mahalanobis distances (pooled
    features, block means, log block norms), each in units of its training quantile, computed by
    `fargate.gate_score` itself. `Detector` calls `gate` with every block's mean and norm."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.keys = tuple(state)
        for k, v in state.items():
            self.register_buffer(k, v.double().clone())

    def gate(self, features, block_means, block_norms):
        return fargate.gate_score(features, block_means, block_norms, {k: getattr(self, k) for k in self.keys})


class BlockNorm(nn.Module):
    """FeatureNorm: the chosen block's norm, which `Detector` computes (it owns the model's blocks)."""

    def forward(self, logits, features, norm):
        return norm


def _msp(s: Scorer) -> nn.Module:
    return LogitScore("msp")


def _maxlogit(s: Scorer) -> nn.Module:
    return LogitScore("maxlogit")


def _energy(s: Scorer) -> nn.Module:
    return LogitScore("energy", s.params["temperature"])


def _react(s: Scorer) -> nn.Module:
    return HeadEnergy(s.state["weight"], s.state["bias"], clip=s.state["threshold"].item())


def _dice(s: Scorer) -> nn.Module:
    clip = s.state["threshold"].item() if "threshold" in s.state else None  # dice_react clips first
    return HeadEnergy(s.state["weight"], s.state["bias"], clip=clip)


def _ash(s: Scorer) -> nn.Module:
    return HeadEnergy(s.state["weight"], s.state["bias"], ash_p=float(s.params["p"]))


def _mahalanobis(s: Scorer) -> nn.Module:
    return MahalanobisScore(s.state["means"], s.state["precision"])


def _vim(s: Scorer) -> nn.Module:
    return ViMScore(s.state["origin"], s.state["residual_basis"], s.state["alpha"])


def _fargate(s: Scorer) -> nn.Module:
    return FarGateScore(s.state)


def _knn(s: Scorer) -> nn.Module:
    return KNNScore(s.state["bank"], s.params["k"])


def _bghead(s: Scorer) -> nn.Module:
    return BgHeadScore(s.state["weight"], s.state["bias"], s.params["combine"])


def _featurenorm(s: Scorer) -> nn.Module:
    return BlockNorm()


BUILDERS: dict[str, Callable[[Scorer], nn.Module]] = {
    "msp": _msp, "maxlogit": _maxlogit, "energy": _energy, "react": _react, "dice": _dice,
    "dice_react": _dice, "ash": _ash, "mahalanobis": _mahalanobis, "vim": _vim, "knn": _knn,
    "featurenorm": _featurenorm, "bghead": _bghead, "fargate": _fargate,
}


def build(model: nn.Module, s: Scorer, *, size: int, mean, std, threshold: float,
          layout: str = "NCHW", channels_last: bool = False, gate: Scorer | None = None,
          far_threshold: float | None = None) -> Detector:
    """The detector for a fitted scorer `s` on `model` (eval mode, CPU, fp32) for size×size images; with
    `gate` (the fitted far-OOD gate) and its `far_threshold`, `lbfood score`'s default verdict."""
    if s.name not in BUILDERS:
        raise ConfigError(f"{s.name} cannot be exported; exportable: {', '.join(sorted(BUILDERS))}")
    block = None
    if s.name == "featurenorm":
        block = s.block
        with torch.no_grad():
            n = len(model.forward_blocks(torch.zeros(1, 3, size, size)))  # stages the model exposes
        if not -n <= block < n:
            raise ConfigError(f"featurenorm: block {block} does not exist; the model has {n} blocks (0..{n - 1})")
        block %= n
    det = Detector(model, BUILDERS[s.name](s), mean=mean, std=std, threshold=threshold, layout=layout,
                   block=block, channels_last=channels_last,
                   gate=None if gate is None else BUILDERS[gate.name](gate), far_threshold=far_threshold).eval()
    det.requires_grad_(False)
    return det
