"""Loaders that turn an ImageSet into batches of normalised float tensors on the training device.

Small-image sets (CIFAR, backdrops, MNIST-likes, ImageFolders at ≤ 64 px) are held once as a uint8
tensor on the device and augmented per batch with tensor ops (random crop with padding, horizontal
flip, colour jitter), as airbench does: no worker processes, no per-image Python. Large-image sets use
torchvision's DataLoader with worker processes, pinned memory and persistent workers.

Under data parallelism every rank draws the same permutation and the same augmentation parameters for
the *global* batch and keeps its own slice, so N processes see exactly the batches one process would.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lbfood.engine.data.base import ImageSet


@dataclass(frozen=True)
class Augment:
    """Training augmentation (the paper's recipe): crop with padding, flip, colour jitter.

    At 32 px: RandomCrop(32, padding=4) + RandomHorizontalFlip + ColorJitter(b, c, s).
    At 224 px: RandomResizedCrop(224) + RandomHorizontalFlip + ColorJitter(b, c, s).
    Fine-tuning drops the colour jitter (paper §V-A).
    """

    crop_pad: int = 4
    flip: bool = True
    jitter: float = 0.4  # brightness, contrast and saturation factors drawn from [1 - j, 1 + j]; 0 = off

    @staticmethod
    def none() -> Augment:
        return Augment(crop_pad=0, flip=False, jitter=0.0)

    @property
    def active(self) -> bool:
        return self.crop_pad > 0 or self.flip or self.jitter > 0


def _gray(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


@dataclass
class AugParams:
    """Per-image augmentation draws for one global batch (so ranks can slice them consistently)."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    bright: torch.Tensor
    contrast: torch.Tensor
    sat: torch.Tensor

    def slice(self, s: slice) -> AugParams:
        return AugParams(*(t[s] for t in (self.dy, self.dx, self.flip, self.bright, self.contrast, self.sat)))


def draw_params(aug: Augment, n: int, gen: torch.Generator) -> AugParams:
    """Draw crop offsets in [0, 2·pad], flips with p = 0.5, jitter factors in [1 - j, 1 + j]."""
    span = 2 * aug.crop_pad + 1
    dy = torch.randint(0, span, (n,), generator=gen)
    dx = torch.randint(0, span, (n,), generator=gen)
    flip = (torch.rand(n, generator=gen) < 0.5) if aug.flip else torch.zeros(n, dtype=torch.bool)
    j = aug.jitter
    factors = 1 - j + 2 * j * torch.rand(3, n, generator=gen)
    return AugParams(dy, dx, flip, factors[0], factors[1], factors[2])


def apply_augment(x: torch.Tensor, aug: Augment, p: AugParams) -> torch.Tensor:
    """Augment a uint8 (B, 3, H, W) batch on its device; returns float in [0, 1]."""
    b, c, h, w = x.shape
    dev = x.device
    if aug.crop_pad > 0:
        pad = aug.crop_pad
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # zero fill, as RandomCrop(padding=4)
        rows = p.dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (B, H)
        cols = p.dx.to(dev)[:, None] + torch.arange(w, device=dev)  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if aug.flip:
        x = torch.where(p.flip.to(dev)[:, None, None, None], x.flip(3), x)
    x = x.float().div_(255)
    if aug.jitter > 0:
        # torchvision's adjust_brightness / adjust_contrast / adjust_saturation, in that order.
        x = (x * p.bright.to(dev)[:, None, None, None]).clamp_(0, 1)
        m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        f = p.contrast.to(dev)[:, None, None, None]
        x = (f * x + (1 - f) * m).clamp_(0, 1)
        f = p.sat.to(dev)[:, None, None, None]
        x = (f * x + (1 - f) * _gray(x)).clamp_(0, 1)
    return x


class DeviceLoader:
    """Iterates like a DataLoader over a device-resident uint8 image set: yields (x, y) on `device`.

    `batch_size` is the global batch; with `world` > 1 each rank yields its `batch_size // world` slice.
    """

    def __init__(self, images: ImageSet, *, batch_size: int, mean, std, device: torch.device | str = "cpu",
                 train: bool = False, aug: Augment | None = None, seed: int = 0, drop_last: bool | None = None,
                 rank: int = 0, world: int = 1, channels_last: bool = False, limit: int | None = None):
        if not images.in_memory:
            raise ValueError("DeviceLoader needs an in-memory ImageSet")
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        self.device = torch.device(device)
        data = images.images if limit is None else images.images[:limit]
        labels = images.labels if limit is None else images.labels[:limit]
        # NHWC uint8 -> NCHW uint8, once, on the device.
        self.x = data.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.y = labels.to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.aug = (aug or Augment()) if train else Augment.none()
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world, self.channels_last = rank, world, channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __iter__(self):
        n = len(self.x)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        order = order.to(self.device)
        per_rank = self.batch_size // self.world
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            params = draw_params(self.aug, len(idx), gen) if self.aug.active else None
            if self.world > 1:
                # The last partial batch is split as evenly as possible; drop_last keeps it exact.
                bounds = [round(r * len(idx) / self.world) for r in range(self.world + 1)]
                s = slice(bounds[self.rank], bounds[self.rank + 1]) if len(idx) < self.batch_size \
                    else slice(self.rank * per_rank, (self.rank + 1) * per_rank)
                idx = idx[s]
                params = params.slice(s) if params is not None else None
                if len(idx) == 0:  # a last partial batch smaller than the number of ranks
                    continue
            x = self.x[idx]
            x = apply_augment(x, self.aug, params) if params is not None else x.float().div_(255)
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx]


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, files, labels, transform, image_size):
        self.files, self.labels, self.transform, self.size = files, labels, transform, image_size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        from lbfood.engine.data.images import decode

        try:
            return self.transform(Image.fromarray(decode(self.files[i]))), int(self.labels[i]), True
        except Exception:  # noqa: BLE001 - an undecodable file is dropped from its batch and counted
            return torch.zeros(3, self.size, self.size), int(self.labels[i]), False


def _eval_crop(img, size: int):
    """The ImageNet test transform, Resize(round(size·256/224)) + CenterCrop(size), with the arithmetic
    `lbfood score` uses (images.resize_center_crop)."""
    import numpy as np

    from lbfood.engine.data.images import resize_center_crop

    return resize_center_crop(np.asarray(img), size, int(round(size * 256 / 224)))


class FileLoader:
    """torchvision DataLoader for large images, yielding (x, y) on `device`.

    Training: RandomResizedCrop, flip, colour jitter; evaluation: resize to 256/224 of the size, then
    centre crop. Files that cannot be decoded are dropped from their batch and counted in `skipped`
    (a warning, never a crash mid-epoch).
    """

    def __init__(self, images: ImageSet, *, batch_size: int, mean, std, image_size: int, train: bool,
                 device: torch.device | str = "cpu", aug: Augment | None = None, workers: int = 4, seed: int = 0,
                 rank: int = 0, world: int = 1, channels_last: bool = False):
        from torchvision import transforms as T

        aug = (aug or Augment()) if train else Augment.none()
        if train:
            ops = [T.RandomResizedCrop(image_size)]
            if aug.flip:
                ops.append(T.RandomHorizontalFlip())
            if aug.jitter > 0:
                ops.append(T.ColorJitter(aug.jitter, aug.jitter, aug.jitter))
        else:
            ops = [functools.partial(_eval_crop, size=image_size)]
        ops += [T.ToTensor(), T.Normalize(mean, std)]
        ds = _FileDataset(images.files, images.labels, T.Compose(ops), image_size)
        self.device = torch.device(device)
        self.sampler = None
        if world > 1:
            self.sampler = torch.utils.data.distributed.DistributedSampler(
                ds, world, rank, shuffle=train, seed=seed, drop_last=train)
        self.loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size // world, shuffle=train and self.sampler is None, sampler=self.sampler,
            num_workers=workers, pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            drop_last=train, generator=torch.Generator().manual_seed(seed))
        self.channels_last = channels_last
        self.num_samples = len(ds)
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        else:
            self.loader.generator.manual_seed(hash((self.loader.generator.initial_seed(), epoch)) % 2**62)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y, ok in self.loader:
            if not bool(ok.all()):  # CPU tensors: no device sync
                self.skipped += int((~ok).sum())
                x, y = x[ok], y[ok]
                if len(y) == 0:
                    continue
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


def make_loader(images: ImageSet, *, batch_size: int, mean, std, image_size: int, train: bool,
                device: torch.device | str = "cpu", aug: Augment | None = None, seed: int = 0, rank: int = 0,
                world: int = 1, channels_last: bool = False, workers: int = 4):
    """The right loader for a set: device-resident for in-memory images, a DataLoader for files."""
    if images.in_memory:
        return DeviceLoader(images, batch_size=batch_size, mean=mean, std=std, device=device, train=train,
                            aug=aug, seed=seed, rank=rank, world=world, channels_last=channels_last)
    return FileLoader(images, batch_size=batch_size, mean=mean, std=std, image_size=image_size, train=train,
                      device=device, aug=aug, workers=workers, seed=seed, rank=rank, world=world,
                      channels_last=channels_last)
