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


def finetune_config(out: Path, parent: Path, *, lam: float, device: str = "auto",
                    seed: int = 0) -> tuple[FinetuneConfig, set[str]]:
    """The backdrops preset (δ = 1/K, μ auto, 4 epochs); `lam` = 0 gives the CE-only control."""
    name = "lff" if lam > 0 else "ce-only"
    cfg = FinetuneConfig(parent=str(parent), lam=lam, batch_size=128, device=device, seed=seed,
                         out=str(Path(out) / name), workers=0)
    return cfg, {"lam"}


def report_config(lff: Path, others: list[Path], *, device: str = "auto") -> ReportConfig:
    return ReportConfig(model=str(lff), compare=tuple(str(p) for p in others), benchmark="backdrops",
                        methods=DEMO_METHODS, device=device, workers=0)


# The demo's sample images for `lbfood explain`: (dataset, how many of its first test images).
SAMPLES = (("backdrops", 2), ("backdrops-scenes", 1), ("backdrops-novel", 1), ("backdrops-noise", 1))


def write_samples(folder: Path) -> list[Path]:
    """The first test images of backdrops and of each of its OOD splits, as PNG files in `folder`."""
    import io

    from PIL import Image

    from lbfood.engine.data import LoadOptions, get
    from lbfood.engine.io import atomic_write_bytes

    paths = []
    for name, n in SAMPLES:
        images = get(name).load(LoadOptions(root=Path(folder)), "test").images
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(images[i].numpy()).save(buf, format="png")
            paths.append(Path(folder) / f"{name}-{i}.png")
            atomic_write_bytes(paths[-1], buf.getvalue())
    return paths
