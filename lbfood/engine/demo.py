"""The demo's recipe: the embedded `backdrops` benchmark with a CPU-sized ResNet-18."""

from __future__ import annotations

from pathlib import Path

from lbfood.engine.config import TrainConfig

DEMO_ARCH = "resnet18"
DEMO_WIDTH = 0.25
DEMO_PRETRAIN_EPOCHS = 8


def pretrain_config(out: Path, *, device: str = "auto", seed: int = 0) -> TrainConfig:
    return TrainConfig(data="backdrops", arch=DEMO_ARCH, width=DEMO_WIDTH, epochs=DEMO_PRETRAIN_EPOCHS,
                       batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4, device=device, seed=seed,
                       out=str(Path(out) / "pretrained"), workers=0)
