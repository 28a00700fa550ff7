"""The built-in `backdrops` benchmark: deterministic, balanced, and its OOD splits are what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lbfood.engine import data
from lbfood.engine.data import LoadOptions
from lbfood.engine.data import backdrops as bd
from lbfood.engine.errors import DataError

SIZES = {"train": 5000, "test": 1000, "scenes": 1000, "novel": 1000, "noise": 1000}


@pytest.mark.parametrize("split", list(SIZES))
def test_shapes_dtypes_counts(split):
    images, labels = bd.generate(split)
    assert images.shape == (SIZES[split], 32, 32, 3) and images.dtype == torch.uint8
    assert labels.shape == (SIZES[split],) and labels.dtype == torch.int64
    if split in ("train", "test"):
        assert torch.bincount(labels, minlength=10).tolist() == [SIZES[split] // 10] * 10
    else:
        assert (labels == -1).all()


def test_deterministic_across_fresh_builds():
    a, la = bd.generate("test")
    bd._cached.cache_clear()
    b, lb = bd.generate("test")
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert torch.equal(la, lb)


def test_seed_and_split_change_the_images():
    assert not torch.equal(bd.generate("test", seed=0)[0], bd.generate("test", seed=1)[0])
    assert not torch.equal(bd.generate("train")[0][:1000], bd.generate("test")[0])


def test_callers_get_copies_of_the_cache():
    images, _ = bd.generate("scenes")
    images.zero_()
    assert bd.generate("scenes")[0].any()


def test_objects_leave_the_background_untouched():
    # Background, object and grain come from separate random streams: rendering the same split
    # without objects gives the identical image wherever the object (and its outline) does not reach.
    images, labels, alpha = bd._render("test", 0)
    bare, bare_labels, bare_alpha = bd._render("test", 0, objects=False)
    outside = alpha == 0
    assert torch.equal(images[outside], bare[outside])
    assert torch.equal(labels, bare_labels) and not bare_alpha.any()
    # Every ID image has an object covering a real part of it, and it changes the pixels there.
    covered = (alpha == 1).flatten(1).sum(1)
    assert covered.min() >= 20
    assert (images.int() - bare.int()).abs()[alpha == 1].float().mean() > 40


def test_scenes_are_bare_backgrounds():
    scenes, _ = bd.generate("scenes")
    bare, _, alpha = bd._render("scenes", 0, objects=False)
    assert torch.equal(scenes, bare) and not alpha.any()
    # Same background families and colours as the ID splits, so the overall statistics are close...
    ood = scenes.float().div(255)
    idd = bd.generate("test")[0].float().div(255)
    assert (ood.mean((0, 1, 2)) - idd.mean((0, 1, 2))).abs().max() < 0.05
    # ...but no outline: ID images have many near-black pixels (the outline is 0.15 × the fill), scenes few.
    dark = lambda x: (x.amax(-1) < 0.1).flatten(1).float().mean(1)  # noqa: E731
    assert dark(idd).mean() > 3 * dark(ood).mean()


def test_novel_shapes_are_not_classes():
    assert not set(bd.NOVEL_SHAPES) & set(bd.CLASSES)
    _, _, alpha = bd._render("novel", 0)
    assert (alpha == 1).flatten(1).sum(1).min() >= 20


def _off_line_variance(images: torch.Tensor) -> torch.Tensor:
    """Per image, the colour variance off its first principal axis (the two smallest eigenvalues)."""
    x = images.float().div(255).flatten(1, 2)  # (N, P, 3)
    x = x - x.mean(1, keepdim=True)
    return torch.linalg.eigvalsh(x.transpose(1, 2) @ x / x.shape[1])[:, :2].sum(1)


def test_noise_is_far_from_backgrounds():
    # A background mixes two colours (plus grain of σ ≤ 0.04): its pixels lie near one line in RGB.
    # Pixel noise fills the colour cube, so its off-line variance is larger, for every image.
    scenes = _off_line_variance(bd.generate("scenes")[0])
    noise = _off_line_variance(bd.generate("noise")[0])
    assert scenes.max() < 0.004  # about 2σ² for σ = 0.04, plus 8-bit rounding
    assert noise.min() > 5 * scenes.max()


def test_mean_std_constants_match_the_train_split():
    x = bd.generate("train")[0].float().div(255)
    assert torch.allclose(x.mean((0, 1, 2)), torch.tensor(bd.MEAN), atol=1e-3)
    assert torch.allclose(x.std((0, 1, 2)), torch.tensor(bd.STD), atol=1e-3)


def test_unknown_split_raises():
    with pytest.raises(DataError, match="valid"):
        bd.generate("val")


def test_registry_id_dataset():
    spec = data.get("backdrops")
    opts = LoadOptions(root=Path("."), seed=7)  # opts.seed must not change the benchmark
    assert (spec.role, spec.preset, spec.image_size, spec.generated) == ("id", "backdrops", 32, True)
    train = spec.load(opts, "train")
    assert train.classes == bd.CLASSES and len(train) == 5000
    assert torch.equal(train.images, bd.generate("train")[0])
    assert len(spec.load(opts, "test")) == 1000
    assert spec.count(opts) == 6000
    with pytest.raises(DataError):
        spec.load(opts, "val")


@pytest.mark.parametrize("split", ["scenes", "novel", "noise"])
def test_registry_ood_datasets(split):
    spec = data.get(f"backdrops-{split}")
    opts = LoadOptions(root=Path("."))
    assert (spec.role, spec.preset, spec.generated) == ("ood", "backdrops", True)
    assert spec.mean == data.get("backdrops").mean
    ood = spec.load(opts, "test")
    assert len(ood) == spec.count(opts) == 1000 and (ood.labels == -1).all()
    assert torch.equal(ood.images, bd.generate(split)[0])
    with pytest.raises(DataError, match="only a 'test' split"):
        spec.load(opts, "train")
