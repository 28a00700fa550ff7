"""Training images/s from device-resident synthetic data: fp32 vs bf16 + channels_last (a GPU check).

Uses lbfood's own `train_step`, runtime and (for 32-px models) device-resident loader with the paper's
augmentation, so the figure is what `lbfood pretrain` reaches on this accelerator.
"""

from __future__ import annotations

import time

import _common
import torch

from lbfood.engine import models
from lbfood.engine.config import TrainConfig
from lbfood.engine.data import ImageSet
from lbfood.engine.data.loaders import Augment, DeviceLoader
from lbfood.engine.runtime import Runtime, make_runtime
from lbfood.engine.training import loop as train


def speed(args, rt: Runtime) -> float:
    size = models.input_size(args.arch)
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    images = ImageSet("synthetic", tuple(str(i) for i in range(10)),
                      images=torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8),
                      labels=torch.randint(0, 10, (n,)))
    loader = DeviceLoader(images, batch_size=args.batch_size, mean=(0.5,) * 3, std=(0.25,) * 3, device=rt.device,
                          train=True, aug=Augment(crop_pad=4 if size == 32 else 0), channels_last=rt.channels_last)
    model = rt.prepare(models.build(args.arch, num_classes=10, width=args.width))
    opt = train.make_optimizer(TrainConfig(), model)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.use_scaler)
    it = iter(loader)
    for _ in range(args.warmup):
        x, y = next(it)
        train.train_step(model, x, y, opt, scaler, rt)
    _common.sync(rt)
    t = time.perf_counter()
    for _ in range(args.steps):
        x, y = next(it)
        train.train_step(model, x, y, opt, scaler, rt)
    _common.sync(rt)
    return args.steps * args.batch_size / (time.perf_counter() - t)


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--only", choices=["fp32", "bf16"], default=None)
    args = p.parse_args()
    base = make_runtime(args.device, "fp32")
    variants = {"fp32": Runtime(base.device, "fp32", channels_last=False),
                "bf16": Runtime(base.device, "bf16", channels_last=True)}
    for name, rt in variants.items():
        if args.only and name != args.only:
            continue
        label = "fp32 (NCHW)" if name == "fp32" else "bf16 + channels_last"
        print(f"{args.arch} width {args.width} batch {args.batch_size} {label}: {speed(args, rt):,.0f} img/s "
              f"on {_common.machine(rt)}")


if __name__ == "__main__":
    main()
