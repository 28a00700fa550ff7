"""Share of a training step spent waiting for data in lbfood's loop, as a fraction. Target ≤ 0.05.

The real loader (`make_loader`: device-resident uint8 images, per-batch crop/flip/colour jitter on the
device) feeds lbfood's real `train_step`; the time to produce each batch over the time of the whole
step (batch + optimisation), summed over `--steps` steps after warm-up. Batches are drawn epoch after
epoch (as the training loop does, `set_epoch` between them), so any batch size and step count works;
the first batch of an epoch, which starts a new permutation, is timed like any other.
"""

from __future__ import annotations

import time
from pathlib import Path

import _common
import torch

from lbfood.engine import models
from lbfood.engine.config import TrainConfig
from lbfood.engine.data import LoadOptions
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.loaders import Augment, make_loader
from lbfood.engine.runtime import make_runtime
from lbfood.engine.training import loop as train


def batches(loader):
    """Batches without end: epoch after epoch, with a new permutation (set_epoch) each time."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    rt = make_runtime(args.device, args.precision)
    spec = get_dataset("backdrops")
    data = spec.load(LoadOptions(root=Path(".")), "train")
    loader = make_loader(data, batch_size=args.batch_size, mean=spec.mean, std=spec.std, image_size=32,
                         train=True, aug=Augment(), device=rt.device, channels_last=rt.channels_last)
    torch.manual_seed(0)
    model = rt.prepare(models.build(args.arch, num_classes=10, width=args.width))
    opt = train.make_optimizer(TrainConfig(), model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    if len(loader) == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {loader.num_samples} backdrops images")
    it = batches(loader)
    wait = total = 0.0
    for i in range(args.warmup + args.steps):
        _common.sync(rt)
        t0 = time.perf_counter()
        x, y = next(it)
        _common.sync(rt)
        t1 = time.perf_counter()
        train.train_step(model, x, y, opt, scaler, rt)
        _common.sync(rt)
        t2 = time.perf_counter()
        if i >= args.warmup:
            wait += t1 - t0
            total += t2 - t0
    print(f"machine: {_common.machine(rt)}; {args.arch} width {args.width}, batch {args.batch_size}, "
          f"{args.steps} steps ({args.steps * args.batch_size / loader.num_samples:.1f} epochs "
          f"of {loader.num_samples} images)")
    print(f"data {wait / args.steps * 1e3:.1f} ms of {total / args.steps * 1e3:.1f} ms per step")
    print(f"loader_share: {wait / total:.3f}  (target <= 0.05)")


if __name__ == "__main__":
    main()
