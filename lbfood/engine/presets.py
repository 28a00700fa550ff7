"""The paper's fine-tuning presets (§V-A), shared by training (the recipe) and evaluation (a run's δ).
SGD momentum 0.9, weight decay 1e-4 and no colour jitter throughout; by dataset:

    dataset       δ (Eq. 5)  μ (Eq. 6)  λ (Eq. 7)  epochs  lr     ÷10 at
    cifar10       0.1        1          1          30      0.1    15
    cifar100      0.01       2          1          30      0.1    15
    imagenet100   0.01       3          1          10      5e-5   5
    backdrops     1/K        auto       1          4       0.01   2
    custom        1/K        auto       1          CIFAR recipe at 32 px, ImageNet recipe at 224 px
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": dict(delta=0.1, mu=1.0, lam=1.0, epochs=30, lr=0.1, milestones=(15,)),
    "cifar100": dict(delta=0.01, mu=2.0, lam=1.0, epochs=30, lr=0.1, milestones=(15,)),
    "imagenet100": dict(delta=0.01, mu=3.0, lam=1.0, epochs=10, lr=5e-5, milestones=(5,)),
    "backdrops": dict(delta=None, mu="auto", lam=1.0, epochs=4, lr=0.01, milestones=(2,)),
    "custom32": dict(delta=None, mu="auto", lam=1.0, epochs=30, lr=0.1, milestones=(15,)),
    "custom224": dict(delta=None, mu="auto", lam=1.0, epochs=10, lr=5e-5, milestones=(5,)),
}
# Shared by every preset (paper §V-A): SGD momentum 0.9, weight decay 1e-4 (on every parameter, BN
# weights and biases included, as the paper states it), no colour jitter.
COMMON = dict(momentum=0.9, weight_decay=1e-4, wd_on_bn=True, schedule="multistep", gamma=0.1, jitter=0.0,
              warmup_epochs=0)


def preset_for(preset: str, input_size: int) -> dict[str, Any]:
    if preset in PRESETS:
        return PRESETS[preset]
    return PRESETS["custom224" if input_size > 64 else "custom32"]


def preset_values(preset: str, input_size: int, num_classes: int) -> dict[str, Any]:
    """The fine-tuning recipe for a dataset preset (δ = 1/K where the paper gives none)."""
    p = {**COMMON, **preset_for(preset, input_size)}
    if p["delta"] is None:
        p["delta"] = 1.0 / num_classes
    return p
