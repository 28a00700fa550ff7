"""The scorer interface: fit on ID training `Features` (if needed), then score any `Features`.

Every score is **higher = more in-distribution** (paper Eq. 3: S(x) ≥ γ ⇒ ID).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features, wide


class Scorer:
    """A post-hoc OOD detector. Subclasses set the class attributes and implement `_fit` / `_score`.

    `score(feats)` returns a float32 tensor (N,), higher = more in-distribution (paper Eq. 3).
    `fit(train, head)` computes statistics from the ID training set (and the classifier head) and
    keeps them in `state_dict()`, a flat dict of tensors the caller saves as safetensors; after
    `load_state_dict` a scorer scores without refitting. `params` holds the hyper-parameters
    (`defaults` updated by the keyword arguments given to `get`).
    """

    name: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = False
    needs_images: ClassVar[bool] = False  # True: scores images itself (`score_images`), not Features
    needs_blocks: ClassVar[bool] = False  # True: reads `Features.block_norms` (extract with blocks=True)
    defaults: ClassVar[dict[str, Any]] = {}
    reads: ClassVar[str] = "head"  # the model's linear head that `fit` takes (bghead: "bg_head")
    state_keys: ClassVar[tuple[str, ...]] = ()  # what `fit` stores

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(f"scorer {self.name}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
        self.params: dict[str, Any] = dict(self.defaults)
        for k, v in params.items():
            self.params[k] = _coerce(self.name, k, v, self.defaults[k])
        self.check_params()
        self.state: dict[str, torch.Tensor] = {}

    def check_params(self) -> None:
        """Raise ConfigError for out-of-range hyper-parameters."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def can_fit(self, n_train: int) -> bool:
        """Whether `n_train` training features are enough to fit this scorer (KNN needs k of them)."""
        return True

    @property
    def fitted(self) -> bool:
        return not self.needs_fit or set(self.state) >= set(self.state_keys)

    def fit(self, train: Features, head: nn.Linear) -> Scorer:
        """Compute the scorer's statistics from ID training features and the classifier head."""
        if self.needs_fit:
            if len(train) == 0:
                raise ConfigError(f"scorer {self.name}: the training features are empty")
            state = self._fit(train, head)
            self.state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        return self

    def score(self, feats: Features) -> torch.Tensor:
        """Scores (N,), float32, higher = more in-distribution (paper Eq. 3)."""
        if not self.fitted:
            raise ConfigError(f"scorer {self.name} is not fitted: call fit(train_features, model.head) "
                              "or load_state_dict(saved statistics) first")
        s = self._score(feats).float()
        if s.shape != (len(feats),):
            raise RuntimeError(f"scorer {self.name} returned shape {tuple(s.shape)} for {len(feats)} inputs")
        return s

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> Scorer:
        missing = [k for k in self.state_keys if k not in d]
        if missing:
            raise ConfigError(f"scorer {self.name}: saved statistics lack {', '.join(missing)}; "
                              "refit the scorer on the training features")
        self.state = {k: d[k].detach().to("cpu").contiguous() for k in self.state_keys}
        return self

    # Expected shapes of the fitted statistics by name: D = feature dim, K = classes, None = any size;
    # () = one number. Statistics not named here (FeatureNorm's block choice) are only checked finite.
    STATE_SHAPES: ClassVar[dict[str, tuple]] = {
        "weight": ("K", "D"), "bias": ("K",), "means": (None, "D"), "precision": ("D", "D"), "origin": ("D",),
        "residual_basis": ("D", None), "bank": (None, "D"), "threshold": (), "alpha": ()}

    def check_state(self, head: nn.Linear) -> None:
        """Raise ValueError if the loaded statistics cannot belong to `head`'s model (another model's file,
        a damaged one): every tensor finite, the named ones of the expected shape."""
        sizes = {"D": head.in_features, "K": head.out_features}
        for k, v in self.state.items():
            if not torch.isfinite(v.float()).all():
                raise ValueError(f"{self.name}: {k} is not finite")
            want = self.STATE_SHAPES.get(k)
            if want is None:
                continue
            if want == ():
                ok = v.numel() == 1
            else:
                ok = v.ndim == len(want) and all(w is None or n == sizes[w] for n, w in zip(v.shape, want, strict=True))
            if not ok:
                raise ValueError(f"{self.name}: {k} has shape {tuple(v.shape)}, expected {want} with {sizes}")

    # -- for subclasses -----------------------------------------------------------------------------

    def _fit(self, train: Features, head: nn.Linear) -> dict[str, torch.Tensor]:
        return {}

    def _score(self, feats: Features) -> torch.Tensor:
        raise NotImplementedError

    def _get(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """A fitted statistic on the device of `like`."""
        return self.state[key].to(like.device)


def head_of(s: Scorer, model: nn.Module) -> nn.Linear:
    """The linear head scorer `s` fits from: the classifier `head`, or the bg-head objective's `bg_head`."""
    head = getattr(model, s.reads, None)
    if head is None:
        raise ConfigError(f"scorer {s.name} reads the background-vs-ID head that `lbfood finetune --objective "
                          "bg-head` trains; this run has none: pass a bg-head run, or another --method")
    return head


def head_state(head: nn.Linear) -> dict[str, torch.Tensor]:
    """The head's weight (K, D) and bias (K,) as float32 (zeros when the head has no bias)."""
    w = head.weight.detach().float()
    b = head.bias.detach().float() if head.bias is not None else torch.zeros(w.shape[0])
    return {"weight": w.cpu().clone(), "bias": b.cpu().clone()}


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy T·logsumexp(f(x)/T) (Liu et al., NeurIPS 2020, Eq. 7; paper Eq. 8)."""
    return temperature * torch.logsumexp(wide(logits) / temperature, dim=1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight, bias)


def percentile(x: torch.Tensor, p: float) -> float:
    """numpy's (linear-interpolation) percentile of all elements, as the reference code computes it."""
    import numpy as np

    return float(np.percentile(x.detach().to("cpu").numpy().reshape(-1), p))


def _coerce(scorer: str, key: str, value: Any, default: Any) -> Any:
    """Convert a parameter to the type of its default (CLI values may arrive as text)."""
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = value.split(",")
            out = tuple(type(d)(v) for d, v in zip(default, value, strict=True))
            return out
    except (TypeError, ValueError):
        raise ConfigError(f"scorer {scorer}: parameter {key}={value!r} must be like {default!r}") from None
    return value
