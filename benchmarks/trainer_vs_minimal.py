"""Throughput of lbfood's training loop / a minimal plain-PyTorch loop. Target ≥ 0.95.

Equal work on both sides: same model (architecture, width, initial weights), data (the `backdrops`
training images, uint8 on the device), augmentation (random crop with 4-px zero padding and a
horizontal flip per image, drawn per batch; colour jitter off on both sides), optimizer (SGD momentum
0.9, wd 5e-4, lr 0.1), batch and precision. What lbfood adds is its own: the lr schedule, metrics
accumulated on the device, progress events, its loader's bookkeeping. The minimal loop draws its crop
offsets and flips on the device and indexes them out of a padded batch in plain PyTorch. Each side runs
one warm-up epoch, then the better of `--repeats` timed epochs counts; each side is run twice, alternating.
"""

from __future__ import annotations

import time
from pathlib import Path

import _common
import torch
import torch.nn.functional as F

from lbfood.engine import models
from lbfood.engine.config import TrainConfig
from lbfood.engine.data import LoadOptions
from lbfood.engine.data import get as get_dataset
from lbfood.engine.events import EpochEnd
from lbfood.engine.runtime import make_runtime
from lbfood.engine.training import loop as train
from lbfood.engine.training.setup import prepare_pretrain


def lbfood_epoch_speed(args, epochs: int) -> float:
    """images/s of lbfood's loop (training steps only, as its EpochEnd metrics report them)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(data="backdrops", arch=args.arch, width=args.width, epochs=epochs,
                          batch_size=args.batch_size, limit=args.images, device=args.device,
                          precision=args.precision, workers=0, out=f"{d}/run", log_every=50, jitter=0.0,
                          stop_at_chance=False)  # a speed benchmark: its few epochs are not judged
        s = prepare_pretrain(cfg)
        s.test_set = s.test_set.subset(torch.arange(64))  # evaluation is not part of the comparison
        # train.fit alone: the closing calibration (pipeline.train) is not part of the comparison either
        speeds = [ev.metrics["images_per_s"] for ev in train.fit(s) if isinstance(ev, EpochEnd)]
    return max(speeds[1:])


def crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding=pad) + RandomHorizontalFlip on a uint8 (B, 3, H, W) batch, on its device."""
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev)
    rows = (dy + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx + torch.arange(w, device=dev))[:, None, None, :]
    x = xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
           rows, cols]
    return torch.where(torch.rand(b, 1, 1, 1, device=dev) < 0.5, x.flip(3), x)


def minimal_epoch_speed(args, epochs: int) -> float:
    rt = make_runtime(args.device, args.precision)
    spec = get_dataset("backdrops")
    data = spec.load(LoadOptions(root=Path(".")), "train")
    x_all = data.images[: args.images].permute(0, 3, 1, 2).contiguous().to(rt.device)
    y_all = data.labels[: args.images].to(rt.device)
    mean = torch.tensor(spec.mean, device=rt.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=rt.device).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = models.build(args.arch, num_classes=10, width=args.width).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    speeds = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), device=rt.device)
        _common.sync(rt)
        t = time.perf_counter()
        n = 0
        for i in range(len(x_all) // args.batch_size):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = (crop_flip(x_all[idx]).float() / 255 - mean) / std
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                loss = F.cross_entropy(model(x).float(), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(idx)
        _common.sync(rt)
        speeds.append(n / (time.perf_counter() - t))
    return max(speeds[1:])


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--images", type=int, default=1024, help="training images per epoch")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs per side")
    args = p.parse_args()
    rt = make_runtime(args.device, args.precision)
    epochs = 1 + args.repeats
    # Alternate the two sides so that machine load drifts hit both.
    lb = max(lbfood_epoch_speed(args, epochs), lbfood_epoch_speed(args, epochs))
    mini = max(minimal_epoch_speed(args, epochs), minimal_epoch_speed(args, epochs))
    print(f"machine: {_common.machine(rt)}; {args.arch} width {args.width}, batch {args.batch_size}, "
          f"{args.images} images/epoch")
    print(f"lbfood loop {lb:,.0f} img/s, minimal loop {mini:,.0f} img/s (both: crop + flip, no colour jitter)")
    print(f"trainer_vs_minimal ratio: {lb / mini:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
