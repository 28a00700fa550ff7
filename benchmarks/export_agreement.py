"""How closely an exported detector's scores follow `lbfood score`, per method, and why large scores less.

One untrained ResNet-18 run (as in `export_speed.py`), each exportable method exported as ONNX and
TorchScript, the same `--images` backdrops test images (uint8, the run's size) through both files and
through `lbfood score`'s engine (`score_images`). Prints the max |difference| of the scores per
method and format, the largest relative one (|ONNX - score| / |score|, per image: the bound README
states is ABS + REL·|score|, `export.api.ONNX_AGREEMENT`), and the error of `lbfood score` and of the ONNX file against the same detector
computed in float64 (network and score; "exact"): a float32 network is a few 1e-6 off in its features, which large
scores (Mahalanobis, ASH) amplify, so there `lbfood score` itself is about as far from exact arithmetic
as the ONNX file is from `lbfood score`.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import _common
import numpy as np
import torch
from export_speed import make_run
from PIL import Image

from lbfood.engine.config import ScoreConfig
from lbfood.engine.data import backdrops
from lbfood.engine.evaluation import score as evaluate
from lbfood.engine.evaluation import scorers
from lbfood.engine.export import ExportConfig, exact_scores, export, exportable
from lbfood.engine.export.api import ONNX_AGREEMENT

PARAMS = {"knn": {"k": 5}, "vim": {"dim": 16}}


def main() -> None:
    p = _common.parser(__doc__)
    p.set_defaults(width=0.125)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--fit-images", type=int, default=200)
    args = p.parse_args()
    import onnxruntime as ort

    warnings.simplefilter("ignore")  # torch.jit.load's deprecation note
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, args.arch, args.width, args.fit_images)
        x = backdrops.generate("test")[0][: args.images].numpy()
        folder = root / "images"
        folder.mkdir()
        for i, a in enumerate(x):
            Image.fromarray(a).save(folder / f"{i:04d}.png")
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        print(f"{args.arch} ×{args.width:g} (untrained), fitted on {args.fit_images} training images, "
              f"{len(x)} test images; torch {torch.__version__}, onnxruntime {ort.__version__}")
        print(f"{'method':<12} {'max |score|':>11} {'score - exact':>13} {'ONNX - score':>13} {'relative':>9} "
              f"{'ONNX - exact':>13} {'TorchScript - score':>20}")
        worst = 0.0  # the largest |ONNX - score| / (ABS + REL |score|) over every method and image
        for method in exportable():
            if scorers.get(method).reads != "head":
                continue  # bghead reads the head a `--objective bg-head` fine-tune trains: this run has none
            params = PARAMS.get(method, {})
            rows = evaluate.score_images(ScoreConfig(paths=(str(folder),), model=str(run), method=method,
                                                     params=params, device="cpu", precision="fp32"))
            want = np.array([r.score for r in rows])
            got = {}
            for fmt in ("onnx", "torchscript"):
                res = export(ExportConfig(model=str(run), method=method, format=fmt, params=params, device="cpu",
                                          out=str(root / f"{method}.{fmt}")))
                if fmt == "onnx":
                    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
                    got[fmt] = sess.run(None, {"images": nchw})[1]
                else:
                    got[fmt] = torch.jit.load(res.path)(torch.from_numpy(nchw))[1].numpy()
            exact = exact_scores(ExportConfig(model=str(run), method=method, params=params, device="cpu"), nchw)
            diff = np.abs(got["onnx"] - want)
            relative = (diff / np.maximum(np.abs(want), 1e-12)).max()
            worst = max(worst, (diff / (ONNX_AGREEMENT[0] + ONNX_AGREEMENT[1] * np.abs(want))).max())
            print(f"{method:<12} {np.abs(want).max():11.4g} {np.abs(want - exact).max():13.2e} "
                  f"{diff.max():13.2e} {relative:9.2e} {np.abs(got['onnx'] - exact).max():13.2e} "
                  f"{np.abs(got['torchscript'] - want).max():20.2e}")
        print(f"largest |ONNX - score| / ({ONNX_AGREEMENT[0]:g} + {ONNX_AGREEMENT[1]:g}·|score|): {worst:.3f} "
              "(≤ 1: within the stated bound)")


if __name__ == "__main__":
    main()
