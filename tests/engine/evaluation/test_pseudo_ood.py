"""Pseudo-OOD generators made from held-out ID images (lbfood.engine.evaluation.pseudo_ood.py)."""

import pytest
import torch

from lbfood.engine.data import ImageSet
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import pseudo_ood


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_jigsaw_permutes_whole_tiles_and_keeps_the_remainder():
    # 9×9 px, 4×4 grid of 2-px tiles: tile (i, j) is filled with the value 10·i + j; row/column 8 is 255.
    x = torch.full((1, 9, 9, 3), 255, dtype=torch.uint8)
    for i in range(4):
        for j in range(4):
            x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = 10 * i + j
    y = pseudo_ood.jigsaw(x, _gen())
    assert (y[0, 8] == 255).all() and (y[0, :, 8] == 255).all()
    tiles = y[0, :8, :8, 0].reshape(4, 2, 4, 2).permute(0, 2, 1, 3).reshape(16, 4)
    assert (tiles == tiles[:, :1]).all()  # every output tile is one whole input tile
    assert sorted(tiles[:, 0].tolist()) == sorted(10 * i + j for i in range(4) for j in range(4))
    assert not torch.equal(y, x)
    assert torch.equal(y, pseudo_ood.jigsaw(x, _gen()))  # deterministic for a seed


def test_uniform_is_seeded_noise_over_the_full_range():
    x = torch.zeros(4, 16, 16, 3, dtype=torch.uint8)
    y = pseudo_ood.uniform(x, _gen())
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(y, torch.randint(0, 256, x.shape, generator=_gen()).to(torch.uint8))
    assert y.min() < 10 and y.max() > 245


def test_gaussian_matches_the_channel_statistics():
    x = torch.zeros(64, 16, 16, 3, dtype=torch.uint8)
    x[..., 0], x[..., 1] = 100, 200
    x[::2, ..., 2] = 50  # channel 2: half 50, half 150 -> mean 100, std 50
    x[1::2, ..., 2] = 150
    y = pseudo_ood.gaussian(x, _gen()).float()
    assert (y[..., 0] == 100).all() and (y[..., 1] == 200).all()  # std 0: the mean exactly
    assert abs(y[..., 2].mean().item() - 100) < 1.5 and abs(y[..., 2].std().item() - 50) < 1.5


def test_blur_keeps_constants_and_smooths_an_edge():
    x = torch.full((1, 8, 8, 3), 77, dtype=torch.uint8)
    assert torch.equal(pseudo_ood.blur(x, _gen()), x)
    x = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    x[:, :, 4:] = 255  # a vertical edge; k = 3 (⌈8/4⌉ = 2, made odd)
    row = pseudo_ood.blur(x, _gen())[0, 0, :, 0].tolist()
    # Box 3 twice = weights (1, 2, 3, 2, 1)/9: columns 2..5 see 1/9, 3/9, 6/9, 8/9 of 255.
    assert row == [0, 0, 28, 85, 170, 227, 255, 255]


def test_make_names_each_set_and_checks_its_input():
    held = ImageSet("x", ("a",), images=torch.zeros(5, 8, 8, 3, dtype=torch.uint8), labels=torch.zeros(5, dtype=torch.long))
    sets = pseudo_ood.make(held, ("uniform", "blur"), max_images=3)
    assert list(sets) == ["uniform", "blur"] and [len(s) for s in sets.values()] == [3, 3]
    assert (sets["uniform"].labels == -1).all()
    with pytest.raises(ConfigError, match="unknown pseudo-OOD"):
        pseudo_ood.make(held, ("fog",))
    files = ImageSet("f", ("a",), files=("a.png",), labels=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="--val-ood"):
        pseudo_ood.make(files, ("uniform",))
