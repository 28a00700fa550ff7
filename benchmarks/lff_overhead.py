"""Fine-tune step with L_LFF / the same step with CE only (same model, batch, data). Target ≤ 1.05.

Both use lbfood's own `train.train_step`; the LFF step adds the background mask (a 1×1 convolution of
the last feature map with the head) and the hinge on location norms, from the same backbone forward.
Steps alternate between the two variants so that drifting machine load hits both equally.
"""

from __future__ import annotations

import _common

from lbfood.engine.runtime import make_runtime
from lbfood.engine.training import loop as train
from lbfood.engine.training.finetune import LFFHook


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    rt = make_runtime(args.device, args.precision)
    model, opt, scaler, x, y = _common.step_setup(args, rt)
    hook = LFFHook(model, delta=0.1, mu=1.0, lam=1.0)
    ce_t, lff_t = [], []
    for i in range(args.warmup + args.steps):
        for variant, out in ((None, ce_t), (hook, lff_t)):
            t = _common.timed(lambda h=variant: train.train_step(model, x, y, opt, scaler, rt, h), rt, 1, 0)
            if i >= args.warmup:
                out += t
    ce, lff = _common.median(ce_t), _common.median(lff_t)
    print(f"machine: {_common.machine(rt)}; {args.arch} width {args.width}, batch {args.batch_size}, "
          f"median of {args.steps} steps")
    print(f"CE-only step {ce * 1e3:.1f} ms, CE + L_LFF step {lff * 1e3:.1f} ms")
    print(f"lff_overhead ratio: {lff / ce:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
