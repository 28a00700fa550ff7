"""Loaders: the device-resident pipeline matches torchvision's (same images with augmentation off, same
crop/flip statistics and pixel-identical crops/flips/jitter when on), is deterministic, slices exactly
across data-parallel ranks; the file loader drops undecodable files and counts them."""

from __future__ import annotations

import fakedata as fd
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import functional as F

from lbfood.engine.data.base import CIFAR10_MEAN, CIFAR10_STD, ImageSet
from lbfood.engine.data.images import decode
from lbfood.engine.data.loaders import (
    Augment,
    AugParams,
    DeviceLoader,
    FileLoader,
    apply_augment,
    draw_params,
)

PAD, SIZE = 4, 32
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # loader output is then exactly uint8 / 255
CROP_FLIP = Augment(crop_pad=PAD, flip=True, jitter=0.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """The batches here are tiny: intra-op threads only add overhead on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _image_set(images: np.ndarray | torch.Tensor) -> ImageSet:
    images = torch.as_tensor(images)
    return ImageSet("fake", (), images=images, labels=torch.arange(len(images)))


def _pattern_set(n: int) -> ImageSet:
    return _image_set(np.stack([fd.pattern(k, SIZE, SIZE) for k in range(n)]))


def _marker_images(n: int) -> torch.Tensor:
    """uint8 (n, 32, 32, 3): R = 1 + row, G = 1 + column, B = 1 + (image number mod 250).

    No pixel is 0 (the crop's padding value), so an augmented output gives away its crop offset and flip.
    """
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    b = 1 + torch.arange(n) % 250
    return torch.stack([(1 + y).expand(n, -1, -1), (1 + x).expand(n, -1, -1),
                        b[:, None, None].expand(-1, SIZE, SIZE)], dim=-1).to(torch.uint8)


def _recover(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flip) per cropped (offsets into the 4-padded image) and maybe flipped marker image (B, 3, 32, 32).

    The centre pixels are inside the image for every offset in [0, 8]: out[i, j] = src[i + dy - 4, j' + dx - 4]
    with j' = j, or 31 - j when flipped; G grows to the right unless flipped.
    """
    r, g, c = out[:, 0].long(), out[:, 1].long(), SIZE // 2
    flip = g[:, c, c + 1] < g[:, c, c]
    dy = r[:, c, c] - 1 - c + PAD
    dx = g[:, c, c] - 1 - torch.where(flip, SIZE - 1 - c, c) + PAD
    return dy, dx, flip


def _tv_crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip at fixed parameters, on uint8 (..., 3, H, W)."""
    out = F.crop(F.pad(img, [PAD]), dy, dx, SIZE, SIZE)
    return F.hflip(out) if flip else out


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- augmentation off

@pytest.mark.parametrize("mean, std", [(CIFAR10_MEAN, CIFAR10_STD), ((0.5, 0.25, 0.0), (0.5, 2.0, 1.0))])
def test_no_augmentation_is_totensor_normalize_in_order(mean, std):
    images = _pattern_set(10)
    loader = DeviceLoader(images, batch_size=4, mean=mean, std=std, train=False)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]  # the partial batch is kept
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, torch.arange(10))
    ref = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    expected = torch.stack([ref(img) for img in images.images.numpy()])
    assert x.shape == (10, 3, SIZE, SIZE) and x.dtype == torch.float32
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


def test_train_without_augmentation_yields_the_same_images_shuffled():
    images = _pattern_set(10)
    ref = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = DeviceLoader(images, batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True,
                          aug=Augment.none(), drop_last=False, seed=3)
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    assert sorted(y.tolist()) == list(range(10)) and not torch.equal(y, torch.arange(10))
    expected = torch.stack([ref(images.images[int(k)].numpy()) for k in y])
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- crop and flip

N_DRAWS = 4000


def _device_draws() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N_DRAWS crop/flip outputs of DeviceLoader on marker images: (uint8 outputs, source images, labels)."""
    images = _image_set(_marker_images(500))
    loader = DeviceLoader(images, batch_size=250, train=True, aug=CROP_FLIP, seed=11, **IDENTITY)
    xs, ys = [], []
    for epoch in range(N_DRAWS // 500):
        loader.set_epoch(epoch)
        for x, y in loader:
            xs.append(x)
            ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    src = images.images.permute(0, 3, 1, 2)[y]
    u = _to_uint8(x)
    assert torch.equal(x, u.float().div(255))  # identity normalisation: the floats are exactly uint8 / 255
    return u, src, y


def _torchvision_draws() -> tuple[torch.Tensor, torch.Tensor]:
    """N_DRAWS outputs of torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip on the same images."""
    src = _marker_images(500).permute(0, 3, 1, 2)
    tf = T.Compose([T.RandomCrop(SIZE, padding=PAD), T.RandomHorizontalFlip()])
    src = src.repeat(N_DRAWS // 500, 1, 1, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        out = torch.stack([tf(img) for img in src])
    return out, src


def _params(outputs: torch.Tensor, src: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Recovered (offset index dy·9 + dx, flip) per output, checking each is torchvision's crop/flip at them."""
    dy, dx, flip = _recover(outputs)
    assert ((dy >= 0) & (dy <= 2 * PAD) & (dx >= 0) & (dx <= 2 * PAD)).all()
    # Group the outputs by their parameters so torchvision's functional ops run once per group.
    for a, b, f in torch.stack([dy, dx, flip.long()], 1).unique(dim=0).tolist():
        m = (dy == a) & (dx == b) & (flip == bool(f))
        assert torch.equal(outputs[m], _tv_crop_flip(src[m], a, b, bool(f)))  # pixel-identical at the same parameters
    return (dy * (2 * PAD + 1) + dx).numpy(), flip.numpy()


def crop_flip_statistics() -> dict[str, float]:
    """Offset histograms (81 bins) and flip rates of both pipelines, as test statistics."""
    dev_out, dev_src, _ = _device_draws()
    tv_out, tv_src = _torchvision_draws()
    dev_off, dev_flip = _params(dev_out, dev_src)
    tv_off, tv_flip = _params(tv_out, tv_src)
    bins = (2 * PAD + 1) ** 2
    dev_hist = np.bincount(dev_off, minlength=bins)
    tv_hist = np.bincount(tv_off, minlength=bins)
    return {
        "device_uniform_p": float(stats.chisquare(dev_hist).pvalue),
        "torchvision_uniform_p": float(stats.chisquare(tv_hist).pvalue),
        "same_distribution_p": float(stats.chi2_contingency(np.stack([dev_hist, tv_hist])).pvalue),
        "device_flip_rate": float(dev_flip.mean()),
        "torchvision_flip_rate": float(tv_flip.mean()),
        "flip_two_sample_p": float(stats.chi2_contingency(
            [[dev_flip.sum(), (~dev_flip).sum()], [tv_flip.sum(), (~tv_flip).sum()]]).pvalue),
        "device_min_bin": int(dev_hist.min()),
        "torchvision_min_bin": int(tv_hist.min()),
    }


def test_recover_reads_back_every_crop_and_flip():
    img = _marker_images(1)[0].permute(2, 0, 1)
    params = [(dy, dx, flip) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1) for flip in (False, True)]
    out = torch.stack([_tv_crop_flip(img, *p) for p in params])
    dy, dx, flip = _recover(out)
    assert list(zip(dy.tolist(), dx.tolist(), flip.tolist(), strict=True)) == params


def test_crop_and_flip_match_torchvision_statistics():
    s = crop_flip_statistics()
    # 81 offsets, each uniform; both pipelines' histograms agree with each other.
    assert s["device_uniform_p"] > 1e-3 and s["torchvision_uniform_p"] > 1e-3, s
    assert s["same_distribution_p"] > 1e-3, s
    assert s["device_min_bin"] > 0 and s["torchvision_min_bin"] > 0, s  # every offset reached
    sigma = (0.25 / N_DRAWS) ** 0.5
    assert abs(s["device_flip_rate"] - 0.5) < 3 * sigma, s
    assert abs(s["torchvision_flip_rate"] - 0.5) < 3 * sigma, s
    assert s["flip_two_sample_p"] > 1e-3, s


def test_apply_augment_crop_flip_at_given_parameters():
    src = _marker_images(6).permute(0, 3, 1, 2).contiguous()
    dy, dx = torch.tensor([0, 8, 4, 1, 7, 3]), torch.tensor([8, 0, 4, 2, 6, 5])
    flip = torch.tensor([False, True, False, True, True, False])
    ones = torch.ones(6)
    out = apply_augment(src, CROP_FLIP, AugParams(dy, dx, flip, ones, ones, ones))
    for k in range(6):
        expected = _tv_crop_flip(src[k], int(dy[k]), int(dx[k]), bool(flip[k])).float().div(255)
        assert torch.equal(out[k], expected)


# ----------------------------------------------------------------------------- colour jitter

def test_colour_jitter_matches_torchvision_functional():
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    bright = torch.tensor([0.6, 1.4, 1.0, 1.25, 0.9])
    contrast = torch.tensor([1.4, 0.6, 0.8, 1.1, 1.0])
    sat = torch.tensor([0.7, 1.3, 1.0, 0.65, 1.4])
    zeros = torch.zeros(5, dtype=torch.long)
    params = AugParams(zeros, zeros, torch.zeros(5, dtype=torch.bool), bright, contrast, sat)
    out = apply_augment(x, Augment(crop_pad=0, flip=False, jitter=0.4), params)
    for k in range(5):
        img = x[k].float() / 255
        img = F.adjust_brightness(img, float(bright[k]))
        img = F.adjust_contrast(img, float(contrast[k]))
        img = F.adjust_saturation(img, float(sat[k]))
        torch.testing.assert_close(out[k], img, atol=1e-5, rtol=0)


def test_jitter_factors_are_uniform_in_range():
    j = 0.4
    p = draw_params(Augment(jitter=j), 20_000, torch.Generator().manual_seed(2))
    factors = torch.stack([p.bright, p.contrast, p.sat])
    assert factors.min() >= 1 - j and factors.max() <= 1 + j
    for f in factors:
        assert stats.kstest(f.numpy(), stats.uniform(loc=1 - j, scale=2 * j).cdf).pvalue > 1e-3
    # Three independent draws, not one factor reused.
    assert abs(np.corrcoef(factors.numpy())[np.triu_indices(3, 1)]).max() < 0.05


def test_draw_params_respects_switched_off_parts():
    p = draw_params(Augment(crop_pad=0, flip=False, jitter=0.0), 50, torch.Generator().manual_seed(0))
    assert not p.dy.any() and not p.dx.any() and not p.flip.any()
    assert torch.equal(p.bright, torch.ones(50)) and torch.equal(p.sat, torch.ones(50))


# ----------------------------------------------------------------------------- determinism and ranks

def _batches(images: ImageSet, epoch: int = 0, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DeviceLoader(images, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True, **kw)
    loader.set_epoch(epoch)
    return list(loader)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_same_seed_and_epoch_give_identical_batches():
    images = _pattern_set(24)
    a = _batches(images, epoch=3, batch_size=8, seed=7)
    assert len(a) == 3
    assert _same(a, _batches(images, epoch=3, batch_size=8, seed=7))
    other_epoch = _batches(images, epoch=4, batch_size=8, seed=7)
    order = torch.cat([y for _, y in a])
    assert sorted(order.tolist()) == list(range(24))
    assert not torch.equal(order, torch.cat([y for _, y in other_epoch]))
    assert not _same(a, _batches(images, epoch=3, batch_size=8, seed=8))
    # Iterating one loader twice repeats its epoch.
    loader = DeviceLoader(images, batch_size=8, mean=CIFAR10_MEAN, std=CIFAR10_STD, train=True, seed=7)
    loader.set_epoch(3)
    assert _same(list(loader), list(loader)) and _same(list(loader), a)


@pytest.mark.parametrize("n, drop_last", [(24, True), (21, False), (22, False)])
def test_two_ranks_concatenate_to_the_single_process_batches(n, drop_last):
    images = _pattern_set(n)
    kw = dict(batch_size=8, seed=1, epoch=2, drop_last=drop_last)  # default Augment: crop, flip and jitter
    single = _batches(images, **kw)
    ranks = [_batches(images, rank=r, world=2, **kw) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks, strict=True):
        if len(y) == 8:
            assert len(y0) == len(y1) == 4
        assert torch.equal(torch.cat([y0, y1]), y)
        assert torch.equal(torch.cat([x0, x1]), x)
    assert sum(len(y) for _, y in single) == (n // 8 * 8 if drop_last else n)


# ----------------------------------------------------------------------------- files

@pytest.mark.parametrize("batch_size", [1, 2])
def test_file_loader_drops_and_counts_undecodable_files(tmp_path, batch_size):
    fd.write_flat_folder(tmp_path / "ok", n=3, size=(48, 44))
    fd.write_mixed_images(tmp_path / "mixed")
    ok = [str(tmp_path / "ok" / f"img_{k:03d}.png") for k in range(3)]
    paths = [ok[0], str(tmp_path / "mixed" / "fake.png"), ok[1], str(tmp_path / "mixed" / "truncated.jpg"), ok[2]]
    images = ImageSet("files", (), files=tuple(paths), labels=torch.arange(len(paths)))
    loader = FileLoader(images, batch_size=batch_size, mean=CIFAR10_MEAN, std=CIFAR10_STD, image_size=40,
                        train=False, workers=0)
    batches = list(loader)
    assert loader.skipped == 2
    assert all(x.shape == (len(y), 3, 40, 40) for x, y in batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert y.tolist() == [0, 2, 4]
    # Evaluation transform at 40 px: resize to round(40 · 256 / 224) = 46, centre crop 40.
    ref = T.Compose([T.Resize(46), T.CenterCrop(40), T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    expected = torch.stack([ref(Image.fromarray(decode(p))) for p in ok])
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


def test_file_loader_training_batch_drops_bad_files(tmp_path):
    fd.write_flat_folder(tmp_path, n=3, size=(48, 44))
    (tmp_path / "garbage.png").write_bytes(bytes(range(256)) * 4)
    paths = sorted(str(p) for p in tmp_path.iterdir())
    images = ImageSet("files", (), files=tuple(paths), labels=torch.zeros(len(paths), dtype=torch.long))
    loader = FileLoader(images, batch_size=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, image_size=40, train=True,
                        workers=0, seed=0)
    batches = list(loader)
    assert loader.skipped == 1 and len(batches) == 1
    assert batches[0][0].shape == (3, 3, 40, 40) and torch.isfinite(batches[0][0]).all()
