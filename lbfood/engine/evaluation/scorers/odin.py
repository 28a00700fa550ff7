"""ODIN: temperature scaling and input perturbation (Liang, Li & Srikant, ICLR 2018)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation.features import Features
from lbfood.engine.evaluation.scorers.base import Scorer

# The std the original ODIN code divides the gradient sign by (63.0/255, 62.1/255, 66.7/255): CIFAR's.
ODIN_STD = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)


class ODIN(Scorer):
    """S(x) = max_k softmax(f(x̃)/T)_k, x̃ = x − ε·sign(−∇ₓ log S_ŷ(x; T)) (Liang et al., ICLR 2018, Eq. 1–2).

    ODIN needs the images (it back-propagates to the input), so it has its own pass:
    `score_images(model, loader)`; `score(features)` is not available. Inputs are normalised images,
    so, as in the reference (and OpenOOD), the gradient sign is divided by the per-channel
    normalisation std: ε is a step in [0, 1] pixel units. Pass the dataset's `std`; the default is
    the original code's CIFAR values. A zero gradient counts as positive (`torch.ge(grad, 0)`).
    Defaults T = 1000, ε = 0.0014 are OpenOOD's.
    """

    name = "odin"
    needs_images = True
    defaults = {"temperature": 1000.0, "epsilon": 0.0014, "std": ODIN_STD}  # T, ε, per-channel std

    def check_params(self) -> None:
        p = self.params
        if p["temperature"] <= 0:
            raise ConfigError(f"odin: temperature must be > 0, got {p['temperature']}")
        if p["epsilon"] < 0:
            raise ConfigError(f"odin: epsilon must be >= 0, got {p['epsilon']}")
        if len(p["std"]) != 3 or min(p["std"]) <= 0:
            raise ConfigError(f"odin: std must be three positive numbers, got {p['std']!r}")

    def _score(self, feats: Features) -> torch.Tensor:
        raise ConfigError("odin perturbs the input images; score with "
                          "scorer.score_images(model, loader, device=...) instead of score(features)")

    def score_images(self, model: nn.Module, loader: Iterable, device: str | torch.device = "cpu",
                     std: Sequence[float] | None = None) -> torch.Tensor:
        """ODIN scores (N,) float32 on the CPU for batches (x, y) of normalised images (y is ignored)."""
        dev = torch.device(device)
        t, eps = self.params["temperature"], self.params["epsilon"]
        s = torch.tensor(tuple(std) if std is not None else self.params["std"], dtype=torch.float32, device=dev)
        was_training = model.training
        model.eval()
        model.to(dev)
        out = []
        try:
            for x, _ in loader:
                x = x.to(dev, non_blocking=True).float().detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = model(x)
                    loss = F.cross_entropy(logits / t, logits.detach().argmax(dim=1))
                    (grad,) = torch.autograd.grad(loss, x)
                step = torch.where(grad >= 0, 1.0, -1.0) / s.view(1, -1, 1, 1)
                with torch.no_grad():
                    out.append(torch.softmax(model(x.detach() - eps * step) / t, dim=1).amax(dim=1))
        finally:
            model.train(was_training)
        if not out:
            raise ConfigError("odin: the loader yielded no batches; is the dataset empty?")
        return torch.cat(out).to("cpu", torch.float32)
