"""The demo's recipe: the embedded `backdrops` benchmark with a CPU-sized ResNet-18.

pretrain (CE) → fine-tune with CE + λ·L_LFF → the CE-only control (λ = 0, same length and recipe) →
one report with the three runs side by side. Only the difference between the LFF run and the control
is the method's effect; the pretrained run shows what the extra epochs alone do.
"""

from __future__ import annotations

from pathlib import Path

from lbfood.engine.config import FinetuneConfig, ReportConfig, TrainConfig

DEMO_ARCH = "resnet18"
DEMO_WIDTH = 0.25
DEMO_PRETRAIN_EPOCHS = 6
DEMO_METHODS = ("react",)  # the paper's default score; `lbfood report --method ...` adds others


def pretrain_config(out: Path, *, device: str = "auto", seed: int = 0) -> TrainConfig:
    return TrainConfig(data="backdrops", arch=DEMO_ARCH, width=DEMO_WIDTH, epochs=DEMO_PRETRAIN_EPOCHS,
                       batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4, warmup_epochs=1, device=device,
                       seed=seed,
                       out=str(Path(out) / "pretrained"), workers=0)


def finetune_config(out: Path, parent: Path, *, lam: float, device: str = "auto", seed: int = 0) -> FinetuneConfig:
    """The backdrops preset (δ = 1/K, μ auto, 4 epochs); `lam` = 0 gives the CE-only control."""
    name = "lff" if lam > 0 else "ce-only"
    cfg = FinetuneConfig(parent=str(parent), lam=lam, batch_size=128, device=device, seed=seed,
                         out=str(Path(out) / name), workers=0)
    return cfg


def report_config(lff: Path, others: list[Path], *, device: str = "auto") -> ReportConfig:
    return ReportConfig(model=str(lff), compare=tuple(str(p) for p in others), benchmark="backdrops",
                        methods=DEMO_METHODS, device=device, workers=0)
