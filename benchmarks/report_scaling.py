"""Time of a report with every non-gradient scorer / a report with `energy` only. Target ≤ 1.3.

Same run (an untrained model written as a run folder: the work does not depend on the weights), same
data (backdrops test vs its three OOD splits, scorers fit on the 5,000 training images). The run is
as `lbfood pretrain`/`finetune` leave it: their closing calibration extracted the training split once
(with FeatureNorm's jigsaw norms) into the run's cache. Each timed report starts with no cached
test/OOD features and no fitted scorer, so both sides extract the four evaluation splits and the
every-scorer report also fits all its scorers. Extract once, score many: the extra scorers add their
fits and their scoring of cached tensors, not forward passes. ODIN is left out: it needs input
gradients and runs its own pass. The ratio with a fully cold run (the training split extracted too,
which only the fitted scorers need) is printed as well.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import _common
import torch

from lbfood.engine import models, runs
from lbfood.engine.config import ReportConfig, TrainConfig
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.backdrops import CLASSES
from lbfood.engine.evaluation import report as evaluate
from lbfood.engine.evaluation import scorers
from lbfood.engine.evaluation.calibrate import calibrate
from lbfood.engine.runtime import make_runtime
from lbfood.engine.training.setup import new_meta


def make_run(root: Path, arch: str, width: float, limit: int | None = None) -> Path:
    spec = get_dataset("backdrops")
    meta = new_meta("pretrain", TrainConfig(arch=arch, width=width, limit=limit), spec, CLASSES, models.input_size(arch))
    meta = meta.replace(status="done", epochs_done=1)
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir(parents=True)
    runs.save_model(run, models.build(arch, num_classes=len(CLASSES), width=width))
    runs.write(run, meta)
    return run


def clear(run: Path, keep: set[str] = frozenset()) -> None:
    """Remove the fitted scorers and the cached features not in `keep`."""
    shutil.rmtree(run / "scorers", ignore_errors=True)
    for f in (run / "cache").glob("*"):
        if f.name not in keep:
            f.unlink()


def timed_report(run: Path, methods: tuple[str, ...], args, keep: set[str] = frozenset()) -> float:
    clear(run, keep)
    cfg = ReportConfig(model=str(run), benchmark="backdrops", methods=methods, device=args.device,
                       precision=args.precision, workers=0, limit=args.limit)
    t = time.perf_counter()
    evaluate.report(cfg)
    return time.perf_counter() - t


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--limit", type=int, default=None, help="only the first N images of every split (smoke test)")
    args = p.parse_args()
    rt = make_runtime(args.device, args.precision)
    # every scorer that reads the extracted features and the classifier's head (not ODIN's own pass, not
    # bghead: it reads the head a `--objective bg-head` fine-tune trains, which this run has not)
    every = tuple(n for n in scorers.names() if not scorers.get(n).needs_images and scorers.get(n).reads == "head")
    with tempfile.TemporaryDirectory() as d:
        run = make_run(Path(d), args.arch, args.width, args.limit)
        timed_report(run, ("energy",), args)  # warm-up: data generation, kernels
        cold_one = timed_report(run, ("energy",), args)
        cold_all = timed_report(run, every, args)
        clear(run)
        model, meta = runs.load_run(run, rt.device)
        calibrate(run, model, meta, rt, workers=0)  # what the end of training does
        keep = {f.name for f in (run / "cache").glob("*")}
        one = min(timed_report(run, ("energy",), args, keep) for _ in range(2))
        all_ = min(timed_report(run, every, args, keep) for _ in range(2))
    sizes = "5,000 train, 1,000 test, 3 x 1,000 OOD" if args.limit is None else f"the first {args.limit} of each split"
    print(f"machine: {_common.machine(rt)}; {args.arch} width {args.width}; backdrops ({sizes}), best of 2")
    print(f"report energy only {one:.1f} s; report with {len(every)} scorers ({', '.join(every)}) {all_:.1f} s")
    print(f"fully cold run (training split extracted too): {cold_one:.1f} s vs {cold_all:.1f} s, "
          f"ratio {cold_all / cold_one:.2f}")
    print(f"report_scaling ratio: {all_ / one:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
