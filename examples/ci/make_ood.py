"""Writes examples/ci/ood/: 12 small PNGs (32 × 32) that the example workflow gates on as an OOD folder.

Four images from each of lbfood's embedded OOD splits (backdrops-scenes: backgrounds without an object,
backdrops-novel: shapes that are none of the ten classes, backdrops-noise: noise). In your own pipeline
this folder holds images your detector must reject, e.g. a sample of last month's rejected uploads.

    python examples/ci/make_ood.py
"""

from pathlib import Path

from PIL import Image

from lbfood.engine.data import backdrops

OUT = Path(__file__).parent / "ood"
PER_SPLIT = 4

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for split in ("scenes", "novel", "noise"):
        images, _ = backdrops.generate(split)
        for i in range(PER_SPLIT):
            Image.fromarray(images[i].numpy()).save(OUT / f"{split}-{i}.png", optimize=True)
    print(f"wrote {3 * PER_SPLIT} images to {OUT}")
