"""The pre-resized image cache (shapes, dtype, the PIL resize's pixels, invalidation, atomic writes) and
the loader that crops and flips its images on the device."""

from __future__ import annotations

import json
import os

import fakedata as fd
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from lbfood.engine.data import image_cache
from lbfood.engine.data.cached_loader import CachedLoader, crop_resize, rrc_boxes
from lbfood.engine.data.image_cache import open_cache

SIZES = [(40, 60), (72, 48), (50, 50)]  # (h, w): landscape, portrait, square


def _folder(tmp_path, sizes=SIZES, ext=".png"):
    files = []
    for i, (h, w) in enumerate(sizes):
        f = tmp_path / "imgs" / f"{i}{ext}"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fd.pattern(i, h, w)).save(f)
        files.append(f)
    return files


def _pil_resized(f, short):
    """torchvision's Resize(short) + CenterCrop(short) on the PIL image, as uint8 (short, short, 3)."""
    return np.asarray(T.CenterCrop(short)(T.Resize(short)(Image.open(f).convert("RGB"))))


def test_cache_holds_the_pil_resize(tmp_path):
    files = _folder(tmp_path)
    c = open_cache(files, 32, tmp_path / "cache" / "train")
    assert c.built and c.images.shape == (3, 32, 32, 3) and c.images.dtype == np.uint8
    assert isinstance(c.images, np.memmap) and c.kept.tolist() == [0, 1, 2] and c.skipped == 0
    for i, f in enumerate(files):
        assert np.abs(c.images[i].astype(int) - _pil_resized(f, 32).astype(int)).max() <= 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        ["train-" + image_cache.fingerprint(files, 32)[:16] + ".npy", "train.json"]
    assert os.path.getsize(tmp_path / "cache" / "train.json") < 1000
    again = open_cache(files, 32, tmp_path / "cache" / "train")
    assert not again.built and np.array_equal(again.images, c.images)


def test_cache_rebuilt_when_the_folder_changes(tmp_path):
    files = _folder(tmp_path)
    stem = tmp_path / "cache" / "train"
    first = np.array(open_cache(files, 32, stem).images)
    old_data = stem.parent / f"train-{image_cache.fingerprint(files, 32)[:16]}.npy"
    assert old_data.is_file()
    Image.fromarray(fd.pattern(9, 40, 60)).save(files[0])  # rewritten: new content and mtime
    os.utime(files[0], ns=(10**18, 10**18))
    changed = open_cache(files, 32, stem)
    assert changed.built and not old_data.exists()  # the stale data file is removed
    assert np.array_equal(changed.images[0], _pil_resized(files[0], 32))
    assert not np.array_equal(changed.images[0], first[0]) and np.array_equal(changed.images[1:], first[1:])
    more = files + _folder(tmp_path / "x", sizes=[(30, 30)])
    assert open_cache(more, 32, stem).images.shape == (4, 32, 32, 3)
    assert open_cache(more, 24, stem).images.shape == (4, 24, 24, 3)  # another size: another fingerprint
    assert len(list(stem.parent.glob("*.npy"))) == 1


def test_undecodable_files_are_left_out(tmp_path):
    files = _folder(tmp_path)
    bad = tmp_path / "imgs" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    c = open_cache([files[0], bad, files[2]], 32, tmp_path / "c" / "s")
    assert c.kept.tolist() == [0, 2] and c.skipped == 1 and c.images.shape == (2, 32, 32, 3)
    assert np.array_equal(c.images[1], _pil_resized(files[2], 32))


def test_interrupted_build_leaves_the_previous_cache(tmp_path, monkeypatch):
    files = _folder(tmp_path)
    stem = tmp_path / "cache" / "train"
    before = np.array(open_cache(files, 32, stem).images)
    index = (tmp_path / "cache" / "train.json").read_text()
    os.utime(files[1], ns=(10**18, 10**18))  # out of date: the next open rebuilds
    real = image_cache._decode

    def crash(f, short):
        if str(f).endswith("1.png"):
            raise KeyboardInterrupt
        return real(f, short)

    monkeypatch.setattr(image_cache, "_decode", crash)
    with pytest.raises(KeyboardInterrupt):
        open_cache(files, 32, stem)
    assert (tmp_path / "cache" / "train.json").read_text() == index  # index and data untouched
    # No temporary file left behind; the old data file still opens, as the old index says.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(["train.json", json.loads(index)["data"]])
    assert np.array_equal(np.load(tmp_path / "cache" / json.loads(index)["data"]), before)
    monkeypatch.setattr(image_cache, "_decode", real)
    rebuilt = open_cache(files, 32, stem)
    assert rebuilt.built and np.array_equal(rebuilt.images, before)  # same pixels, new mtime


def _ramp(n: int, s: int) -> torch.Tensor:
    """uint8 (n, 3, s, s): R = 4·column, G = 4·row, B = image number (linear: bilinear sampling is exact)."""
    y, x = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    return torch.stack([torch.stack([4 * x, 4 * y, torch.full_like(x, k)]) for k in range(n)]).to(torch.uint8)


def test_crop_resize_exact_on_linear_images():
    x = _ramp(2, 16)
    full = torch.tensor([[0.0, 0.0, 16, 16]] * 2)
    assert torch.equal(crop_resize(x, full, 16), x)  # the whole image at its size: the identity
    box = torch.tensor([[2.0, 4.0, 8, 8], [0.0, 0.0, 16, 16]])
    y = crop_resize(x, box, 4)  # 2× down: samples fall between pixel pairs, the mean of the two
    assert y[0, 0].tolist() == [[4 * (4 + 2 * u + 0.5) for u in range(4)]] * 4
    assert y[0, 1, :, 0].tolist() == [4 * (2 + 2 * v + 0.5) for v in range(4)]
    assert y[1, 0, 0].tolist() == [4 * (4 * u + 1.5) for u in range(4)]  # 4× down on the whole image
    assert torch.equal(y[:, 2], torch.tensor([0, 1], dtype=torch.uint8)[:, None, None].expand(2, 4, 4))


def test_rrc_boxes_follow_torchvision_bounds():
    b = rrc_boxes(2000, 64, torch.Generator().manual_seed(0))
    top, left, h, w = b.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    share = h * w / 64**2
    assert share.min() >= 0.07 and share.max() <= 1.0
    assert (w / h).min() >= 0.70 and (w / h).max() <= 1.43  # 3/4 .. 4/3, rounding aside
    assert 0.45 < share.mean() < 0.6  # uniform area share on [0.08, 1], large crops clipped: about 0.52
    assert torch.equal(b, rrc_boxes(2000, 64, torch.Generator().manual_seed(0)))


def test_cached_loader_eval_equals_the_file_loaders_transform(tmp_path):
    files = _folder(tmp_path, sizes=[(256, 300), (320, 256), (260, 260)], ext=".jpg")
    c = open_cache(files, 256, tmp_path / "c" / "s")
    loader = CachedLoader(c, torch.arange(3), batch_size=2, mean=(0,) * 3, std=(1,) * 3, out=224, train=False)
    xs, ys = zip(*loader, strict=True)
    assert [len(y) for y in ys] == [2, 1] and torch.cat(ys).tolist() == [0, 1, 2]
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    for x, f in zip(torch.cat(xs), files, strict=True):
        torch.testing.assert_close(x, ref(Image.open(f).convert("RGB")), atol=1.01 / 255, rtol=0)


def test_cached_loader_train_batches_have_one_shape(tmp_path):
    files = _folder(tmp_path, sizes=[(40, 40)] * 5)
    c = open_cache(files, 32, tmp_path / "c" / "s")
    loader = CachedLoader(c, torch.tensor([0, 1, 0, 1, 0]), batch_size=2, mean=(0.5,) * 3, std=(0.25,) * 3,
                          out=24, train=True, channels_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and loader.drop_last  # the ragged fifth image is dropped
    assert all(x.shape == (2, 3, 24, 24) and x.dtype == torch.float32 for x, _ in batches)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, loader, strict=True))  # deterministic
