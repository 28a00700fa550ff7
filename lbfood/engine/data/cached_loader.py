"""224-px batches from the pre-resized uint8 cache (`image_cache`), augmented on the device per batch.

Per batch the loader reads rows of the memory-mapped cache (a background thread reads the next batch
while the current one trains), copies them to the device as uint8, and there does what torchvision's
PIL transforms do per image: RandomResizedCrop(out) as one batched `grid_sample` (bilinear, one
affine map per image), then the flip and colour jitter of the 32-px path (`loaders.apply_augment`).
Evaluation resamples the centre square of side short·out/round(out·256/224) to `out`: the file loader's
`Resize(round(out·256/224))` + `CenterCrop(out)` (pixel-exact when short = 256 and out = 224).

The crop is drawn from the cached centre square (shorter side × shorter side) of each image, not from
the whole of a non-square image: the cost of a fixed-shape memory map.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from lbfood.engine.data.image_cache import CachedImages
from lbfood.engine.data.loaders import Augment, apply_augment, draw_params


def rrc_boxes(n: int, size: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
              tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes for `n` square images of side `size`: float (n, 4) as (top, left, h, w).

    torchvision's algorithm, vectorised: `tries` draws of area share and log-uniform aspect ratio per
    image, the first that fits wins; none fitting gives the whole image (its fallback for a square).
    """
    area = size * size
    share = scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen)
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, tries, generator=gen)
    aspect = logr.exp()
    w = (area * share * aspect).sqrt().round()
    h = (area * share / aspect).sqrt().round()
    ok = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0)[:, None]
    w = torch.where(first >= 0, w.gather(1, pick).squeeze(1), torch.full((n,), float(size)))
    h = torch.where(first >= 0, h.gather(1, pick).squeeze(1), torch.full((n,), float(size)))
    top = torch.floor(torch.rand(n, generator=gen) * (size - h + 1))
    left = torch.floor(torch.rand(n, generator=gen) * (size - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, out: int) -> torch.Tensor:
    """Resample box (top, left, h, w) of each uint8 (B, C, S, S) image to out × out, bilinearly; uint8.

    Output pixel u samples source x = left + (u + 0.5)·w/out − 0.5 (pixel centres, as `interpolate`
    with align_corners=False), so a box of the image's own size is the identity.
    """
    b, _, s, _ = x.shape
    boxes = boxes.to(x.device, torch.float32)
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = w / s
    theta[:, 0, 2] = (2 * left + w) / s - 1
    theta[:, 1, 1] = h / s
    theta[:, 1, 2] = (2 * top + h) / s - 1
    grid = F.affine_grid(theta, [b, x.shape[1], out, out], align_corners=False)
    y = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class CachedLoader:
    """Iterates like a DataLoader over a `CachedImages`: yields normalised (x, y) at out × out on `device`.

    Training drops the ragged last batch (every batch has the same shape: the compiled step needs it).
    """

    def __init__(self, cache: CachedImages, labels: torch.Tensor, *, batch_size: int, mean, std, out: int,
                 device: torch.device | str = "cpu", train: bool = False, aug: Augment | None = None,
                 seed: int = 0, channels_last: bool = False):
        self.cache, self.device, self.out = cache, torch.device(device), out
        self.y = torch.as_tensor(labels)[torch.from_numpy(cache.kept)].to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.batch_size, self.train, self.seed, self.channels_last = batch_size, train, seed, channels_last
        # The crop replaces crop_pad: flip and jitter as on the 32-px path.
        a = (aug or Augment()) if train else Augment.none()
        self.aug = Augment(crop_pad=0, flip=a.flip, jitter=a.jitter)
        self.drop_last = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.cache)

    def __len__(self) -> int:
        n = len(self.cache)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.cache.images[idx])  # page-cache reads of the memory map
        return x.pin_memory() if self.device.type == "cuda" else x

    def __iter__(self):
        n, s = len(self.cache), self.cache.short
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        batches = [np.sort(order[i * self.batch_size:(i + 1) * self.batch_size].numpy()) for i in range(len(self))]
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(self._read, batches[0]) if batches else None
            for k, idx in enumerate(batches):
                host = nxt.result()
                if k + 1 < len(batches):
                    nxt = pool.submit(self._read, batches[k + 1])
                x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                if self.train:
                    boxes = rrc_boxes(len(idx), s, gen)
                else:
                    c = s * self.out / round(self.out * 256 / 224)  # Resize(out·256/224), CenterCrop(out)
                    boxes = torch.tensor([[(s - c) / 2, (s - c) / 2, c, c]]).expand(len(idx), 4)
                x = crop_resize(x, boxes, self.out)
                if self.aug.active:
                    x = apply_augment(x, self.aug, draw_params(self.aug, len(idx), gen))
                else:
                    x = x.float().div_(255)
                x = (x - self.mean) / self.std
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, self.y[torch.from_numpy(idx).to(self.device)]
