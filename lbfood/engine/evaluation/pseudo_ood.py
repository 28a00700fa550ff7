"""Pseudo-OOD images made from held-out ID images: the validation OOD of `lbfood sweep` and `--method auto`
when no real validation OOD set is given. No test image, ID or OOD, is involved.

Each generator maps uint8 images (N, H, W, 3) to N new uint8 images of the same shape, deterministically
for a given seed:

- jigsaw:   each image cut into a 4×4 grid of tiles, tiles shuffled (local texture kept, object layout
            destroyed; the pseudo-OOD of FeatureNorm, Yu et al. CVPR 2023, on a finer grid);
- uniform:  i.i.d. uniform pixels in [0, 255] (no image content at all);
- gaussian: i.i.d. Gaussian pixels with the held-out images' per-channel mean and standard deviation
            (the ID colour statistics, no structure);
- blur:     a heavy blur: a box filter of width ⌈W/4⌉ (odd), applied twice with replicated borders
            (the ID colours and coarse layout, no object detail).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lbfood.engine.data import ImageSet
from lbfood.engine.errors import ConfigError

JIGSAW_GRID = 4


def jigsaw(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Tiles of a JIGSAW_GRID × JIGSAW_GRID grid shuffled per image (rows/columns beyond the grid kept)."""
    n, h, w, c = x.shape
    g = JIGSAW_GRID
    th, tw = h // g, w // g
    if th == 0 or tw == 0:
        raise ConfigError(f"pseudo-OOD jigsaw: {h}×{w} px images are too small for a {g}×{g} grid")
    out = x.clone()
    tiles = x[:, : g * th, : g * tw].reshape(n, g, th, g, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, g * g, th, tw, c)
    perm = torch.argsort(torch.rand(n, g * g, generator=gen), dim=1)
    tiles = tiles[torch.arange(n)[:, None], perm]
    out[:, : g * th, : g * tw] = tiles.reshape(n, g, g, th, tw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, g * th, g * tw, c)
    return out


def uniform(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform noise: every pixel and channel drawn from {0, …, 255}."""
    return torch.randint(0, 256, x.shape, generator=gen, dtype=torch.int64).to(torch.uint8)


def gaussian(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise with the images' per-channel mean and std, rounded and clipped to [0, 255]."""
    f = x.float().reshape(-1, x.shape[-1])
    mean, std = f.mean(0), f.std(0, unbiased=False)
    noise = torch.randn(x.shape, generator=gen) * std + mean
    return noise.round().clamp(0, 255).to(torch.uint8)


def blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A box filter of width k = ⌈W/4⌉ rounded up to odd, twice, with replicated borders."""
    k = -(-x.shape[2] // 4)
    k += 1 - k % 2
    y = x.permute(0, 3, 1, 2).float()
    for _ in range(2):
        y = F.avg_pool2d(F.pad(y, (k // 2,) * 4, mode="replicate"), k, stride=1)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


GENERATORS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "jigsaw": jigsaw, "uniform": uniform, "gaussian": gaussian, "blur": blur}


def make(held_out: ImageSet, names: tuple[str, ...], *, seed: int = 0, max_images: int = 1000) -> dict[str, ImageSet]:
    """One unlabelled ImageSet per generator, from the first `max_images` held-out images (in memory)."""
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        raise ConfigError(f"unknown pseudo-OOD generator(s) {', '.join(unknown)}; valid: {', '.join(GENERATORS)}")
    if not held_out.in_memory:
        raise ConfigError("pseudo-OOD from held-out images needs an in-memory ID set (≤ 64 px); pass "
                          "--val-ood DATASET or folder:PATH for large-image data")
    x = held_out.images[:max_images]
    out = {}
    for name in names:
        gen = torch.Generator().manual_seed(seed * 1000 + list(GENERATORS).index(name))
        out[name] = ImageSet(f"pseudo-{name}", images=GENERATORS[name](x, gen))
    return out
