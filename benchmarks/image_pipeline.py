"""Images/s of the 224-px training input pipeline alone: today's PIL loader vs the pre-resized cache.

A folder of `--images` generated 128-px JPEGs (two classes). The PIL side is lbfood's `FileLoader`
(torchvision DataLoader, `--workers` processes: decode, RandomResizedCrop(224), flip, colour jitter,
ToTensor, Normalize, copy to the device). The cached side is `image_cache.open_cache` (decoded and
resized once, shorter side `--short` px, memory-mapped) read by `CachedLoader` (RandomResizedCrop as
one batched grid_sample, flip and jitter as tensor ops, on the device). Each side: one warm-up epoch,
then the best of `--repeats` timed epochs; no model runs. Also prints the one-time cache build and its
disk cost next to the JPEGs'. GPU JPEG decoding (torchvision.io.decode_jpeg on CUDA) is not measured.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image

from lbfood.engine.data.base import IMAGENET_MEAN, IMAGENET_STD, ImageSet
from lbfood.engine.data.cached_loader import CachedLoader
from lbfood.engine.data.image_cache import open_cache
from lbfood.engine.data.loaders import Augment, FileLoader
from lbfood.engine.runtime import make_runtime


def make_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    """`n` smooth random colour images (a 4×4 grid upsampled, plus grain), JPEG quality 90."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        arr = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        f = folder / f"c{i % 2}" / f"{i:05d}.jpg"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(f, quality=90)
        files.append(f)
    return files


def epoch_speed(loader, rt, repeats: int) -> float:
    best = 0.0
    for epoch in range(1 + repeats):
        loader.set_epoch(epoch)
        _common.sync(rt)
        t, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        _common.sync(rt)
        if epoch:
            best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--size", type=int, default=128, help="side of the generated JPEGs")
    p.add_argument("--short", type=int, default=160, help="the cache's shorter side")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="PIL loader worker processes")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    rt = make_runtime(args.device, "fp32")
    aug = Augment(crop_pad=0, flip=True, jitter=0.4)
    with tempfile.TemporaryDirectory() as d:
        files = make_jpegs(Path(d) / "jpegs", args.images, args.size)
        labels = torch.tensor([i % 2 for i in range(len(files))])
        jpeg_bytes = sum(f.stat().st_size for f in files)
        pil = FileLoader(ImageSet("jpegs", ("c0", "c1"), files=tuple(map(str, files)), labels=labels),
                         batch_size=args.batch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=224,
                         train=True, device=rt.device, aug=aug, workers=args.workers,
                         channels_last=rt.channels_last)
        pil_speed = epoch_speed(pil, rt, args.repeats)
        del pil
        t = time.perf_counter()
        cache = open_cache(files, args.short, Path(d) / "cache" / "train")
        build = time.perf_counter() - t
        cache_bytes = sum(f.stat().st_size for f in (Path(d) / "cache").iterdir())
        cached = CachedLoader(cache, labels, batch_size=args.batch_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              out=224, device=rt.device, train=True, aug=aug, channels_last=rt.channels_last)
        cached_speed = epoch_speed(cached, rt, args.repeats)
    print(f"machine: {_common.machine(rt)}; {args.images} JPEGs of {args.size} px, batch {args.batch_size}, "
          f"224-px RandomResizedCrop + flip + jitter, best of {args.repeats} epochs")
    print(f"PIL loader ({args.workers} workers) {pil_speed:,.0f} img/s; cached ({args.short} px) {cached_speed:,.0f} "
          f"img/s")
    print(f"cache build {build:.1f} s ({args.images / build:,.0f} img/s, once); disk {cache_bytes / 1e6:.1f} MB "
          f"({cache_bytes / args.images / 1e3:.1f} kB/image) vs JPEGs {jpeg_bytes / 1e6:.1f} MB")
    print(f"image_pipeline ratio (cached / PIL): {cached_speed / pil_speed:.2f}")


if __name__ == "__main__":
    main()
