"""Fine-tune step with each background objective / the same step with CE only (same model, batch, data).
Target ≤ 1.10 for each (issue 23).

Every variant runs lbfood's own `train.train_step` with the objective's loss hook (objectives.py) on the same
backbone forward: lff (the paper's L_LFF), lff-rel (relative margin), bg-energy (energy-bounded loss on the
location logits), bg-head (BCE of the background head). Steps cycle through the variants, so drifting
machine load hits all of them equally; each ratio is the median step over the median CE-only step.
"""

from __future__ import annotations

import _common

from lbfood.engine.runtime import make_runtime
from lbfood.engine.training import loop as train
from lbfood.engine.training import objectives


def main() -> None:
    args = _common.parser(__doc__).parse_args()
    rt = make_runtime(args.device, args.precision)
    model, opt, scaler, x, y = _common.step_setup(args, rt, bg_head=True)
    hooks = {"ce": None, "lff": objectives.LFFHook(model, 0.1, 1.0, 1.0),
             "lff-rel": objectives.RelLFFHook(model, 0.1, 0.5, 1.0),
             "bg-energy": objectives.BgEnergyHook(model, 0.1, -5.0, -1.0, 0.1),
             "bg-head": objectives.BgHeadHook(model, 0.1, 1.0)}
    times: dict[str, list[float]] = {k: [] for k in hooks}
    for i in range(args.warmup + args.steps):
        for name, hook in hooks.items():
            t = _common.timed(lambda h=hook: train.train_step(model, x, y, opt, scaler, rt, h), rt, 1, 0)
            if i >= args.warmup:
                times[name] += t
    med = {k: _common.median(v) for k, v in times.items()}
    print(f"machine: {_common.machine(rt)}; {args.arch} width {args.width}, batch {args.batch_size}, "
          f"median of {args.steps} steps")
    print("step ms: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()))
    for name in list(hooks)[1:]:
        print(f"{name} / CE-only step ratio: {med[name] / med['ce']:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
