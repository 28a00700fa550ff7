"""Images/s of an exported ONNX detector on onnxruntime (CPU) vs `lbfood score` on the same images.

Same run (an untrained ResNet-18 written as a run folder: speed does not depend on the weights), same
method (react, fitted on the first `--fit-images` backdrops training images, its threshold calibrated
on as many test images, both before timing), same N PNG files at the run's input size. Both sides are
timed end to end from the files, as a user runs them: `lbfood score` is the engine's `score_images`
(it loads the run, its fitted scorer and threshold, decodes, normalises, extracts, scores); the ONNX
side is `examples/deploy.py`'s loop (session creation, PIL decode, onnxruntime in batches). Both use
the same thread count and batch size; best of `--repeats`. The model alone (decoded uint8 arrays in,
no file reading) is printed as well.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image

from lbfood.engine import models, runs
from lbfood.engine.config import ScoreConfig, TrainConfig
from lbfood.engine.data import backdrops
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.images import eval_transform
from lbfood.engine.evaluation import score as evaluate
from lbfood.engine.export import ExportConfig, export
from lbfood.engine.runtime import make_runtime
from lbfood.engine.training.setup import new_meta


def make_run(root: Path, arch: str, width: float, limit: int) -> Path:
    spec = get_dataset("backdrops")
    cfg = TrainConfig(arch=arch, width=width, limit=limit)
    meta = new_meta("pretrain", cfg, spec, backdrops.CLASSES, models.input_size(arch)).replace(
        status="done", epochs_done=1)
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir(parents=True)
    runs.save_model(run, models.build(arch, num_classes=len(backdrops.CLASSES), width=width))
    runs.write(run, meta)
    return run


def deploy_loop():
    path = Path(__file__).resolve().parents[1] / "examples" / "deploy.py"
    spec = importlib.util.spec_from_file_location("deploy_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = _common.parser(__doc__)
    p.set_defaults(width=0.25, batch_size=64, device="cpu", precision="fp32")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--fit-images", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import onnxruntime as ort

    rt = make_runtime(args.device, args.precision)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, args.arch, args.width, args.fit_images)
        size = int(json.loads((run / "run.json").read_text())["input_size"])
        images = backdrops.generate("test")[0][: args.images].numpy()  # 32 px: the run's size
        folder = root / "images"
        folder.mkdir()
        for i, a in enumerate(images):
            Image.fromarray(np.asarray(eval_transform(a, size))).save(folder / f"{i:04d}.png")
        onnx_path = root / "detector.onnx"
        export(ExportConfig(model=str(run), method="react", out=str(onnx_path), device=args.device,
                            precision=args.precision))  # fits react and calibrates γ, stored in the run

        cfg = ScoreConfig(paths=(str(folder),), model=str(run), method="react", batch_size=args.batch_size,
                          device=args.device, precision=args.precision)
        rows = evaluate.score_images(cfg)  # warm-up
        lbfood_s = best(lambda: evaluate.score_images(cfg), args.repeats)

        deploy = deploy_loop()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads

        def onnx_end_to_end():
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            files = sorted(folder.glob("*.png"))
            out = []
            for i in range(0, len(files), args.batch_size):
                x = np.stack([deploy.load(f, size) for f in files[i:i + args.batch_size]]).transpose(0, 3, 1, 2)
                out.append(sess.run(None, {"images": np.ascontiguousarray(x)})[1])
            return np.concatenate(out)

        scores = onnx_end_to_end()  # warm-up, and a check that both sides agree
        diff = float(np.abs(scores - np.array([r.score for r in rows])).max())
        onnx_s = best(onnx_end_to_end, args.repeats)

        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        batches = [nchw[i:i + args.batch_size] for i in range(0, len(nchw), args.batch_size)]
        model_only = best(lambda: [sess.run(None, {"images": b}) for b in batches], args.repeats)

    n = args.images
    print(f"machine: {_common.machine(rt)}; onnxruntime {ort.__version__} with {threads} intra-op threads")
    print(f"{args.arch} ×{args.width:g}, react, {n} PNG images of {size} px, batch {args.batch_size}, "
          f"best of {args.repeats}; max |score difference| {diff:.2e}")
    print(f"lbfood score (engine score_images): {n / lbfood_s:8.1f} images/s ({lbfood_s:.3f} s)")
    print(f"ONNX on onnxruntime, from files:    {n / onnx_s:8.1f} images/s ({onnx_s:.3f} s)")
    print(f"ONNX on onnxruntime, arrays only:   {n / model_only:8.1f} images/s ({model_only:.3f} s)")
    print(f"ratio ONNX / lbfood score (from files): {lbfood_s / onnx_s:.2f}")


if __name__ == "__main__":
    main()
