"""What `lbfood score`'s far-OOD gate (lbfood/engine/evaluation/scorers/fargate.py) rejects: the share of
ID test images (must be ≤ 0.5 %) and the share of far-OOD images it catches, per run.

Far-OOD sets, made here at the run's input size (no download): uniform noise, Gaussian noise, constant
black / white / mid-grey frames, rendered text (Pillow's default font, dark on light and light on dark),
and sklearn's 8×8 digits (`load_digits`, shipped with sklearn) upsampled, another modality. `--real
DIR` (repeatable) adds a folder of real photographs (decoded and resized as `lbfood score` does).
Each cell: the share the gate rejects / the share the paper's score alone (react at its calibrated γ,
`--no-far-gate`) calls OOD / the share `lbfood score`'s verdict (both tests) calls OOD.

    python benchmarks/far_gate.py                      # the demo's three runs under runs/demo
    python benchmarks/far_gate.py --demo /tmp/gate-demo --real photos/
    python benchmarks/far_gate.py RUN [RUN ...]
    python benchmarks/far_gate.py --tiny --images 8    # a tiny run trained here (the tests' smoke size)

A run without the gate gets it fitted on first use, as `lbfood score` does (and stored in the run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lbfood.engine import runs
from lbfood.engine.data.images import decode, eval_transform
from lbfood.engine.data.paths import expand_paths
from lbfood.engine.evaluation import features as fx
from lbfood.engine.evaluation.calibrate import fitted_gate, fitted_scorer_and_threshold
from lbfood.engine.evaluation.store import RunEval, data_root
from lbfood.engine.runtime import make_runtime

WORDS = ("the quick brown fox jumps over a lazy dog invoice total amount error warning settings login "
         "password report page figure table score image python 2024 12:30 OK cancel").split()


def uniform(n, s, rng):
    return rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)


def gaussian(n, s, rng):
    return np.clip(rng.normal(127.5, 50.0, (n, s, s, 3)), 0, 255).astype(np.uint8)


def constant(value, s):
    return np.full((1, s, s, 3), value, np.uint8)


def text(n, s, rng):
    """Lines of words in Pillow's default (scalable) font on a plain page, drawn at 4× and resized, as a
    screenshot would be; a quarter of them light text on a dark page."""
    big, out = max(4 * s, 128), []
    for _ in range(n):
        page, ink = int(rng.integers(200, 256)), int(rng.integers(0, 80))
        if rng.random() < 0.25:
            page, ink = ink, page
        im = Image.new("RGB", (big, big), (page,) * 3)
        draw = ImageDraw.Draw(im)
        size = int(rng.integers(big // 10, big // 5))
        font = ImageFont.load_default(size=size)
        y = int(rng.integers(0, size))
        while y < big:
            draw.text((int(rng.integers(-size, size)), y), " ".join(rng.choice(WORDS, 4)), fill=(ink,) * 3, font=font)
            y += int(size * 1.3)
        out.append(eval_transform(np.asarray(im), s))
    return np.stack(out)


def digits(n, s, rng):
    """sklearn's 8×8 handwritten digits (0..16) as grey RGB images, upsampled (bilinear) to s×s."""
    from sklearn.datasets import load_digits

    x = load_digits().images
    x = x[rng.choice(len(x), min(n, len(x)), replace=False)]
    return np.stack([np.repeat(np.asarray(Image.fromarray((a * 255 / 16).astype(np.uint8)).resize(
        (s, s), Image.BILINEAR))[..., None], 3, axis=2) for a in x])


def folder(path, s):
    return np.stack([eval_transform(decode(f), s) for f, err in expand_paths([str(path)]) if err is None])


def far_sets(n, s, seed, real=()):
    rng = np.random.default_rng(seed)
    sets = {"uniform noise": uniform(n, s, rng), "Gaussian noise": gaussian(n, s, rng),
            "constant black": constant(0, s), "constant white": constant(255, s), "constant mid-grey": constant(128, s),
            "rendered text": text(n, s, rng), "sklearn digits 8×8, upsampled": digits(n, s, rng)}
    for path in real:
        sets[f"real photos: {path}"] = folder(path, s)
    return sets


def features(model, meta, x, batch=256):
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
    t = (t - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    return fx.extract(model, [(b, None) for b in t.split(batch)])


def measure(run, sets, rt, notes):
    """{set: (images, share the gate rejects, share react alone rejects, share the verdict calls OOD)}, the ID
    test split first."""
    model, meta = runs.load_run(run, rt.device)
    gate, far_thr = fitted_gate(model, meta, rt, notes=notes)
    react, thr = fitted_scorer_and_threshold(model, meta, rt, "react", notes=notes)
    ev = RunEval(meta.run_dir, model, meta, rt, id_data=meta.data, data_root=data_root(meta, None), workers=0,
                 limit=meta.config.get("limit"))
    out = {}
    for name, f in (("ID test", ev.features(meta.data, "test")),
                    *((k, features(model, meta, v)) for k, v in sets.items())):
        far, low = gate.score(f) < far_thr, react.score(f) < thr
        out[name] = (len(f), far.double().mean().item(), low.double().mean().item(), (far | low).double().mean().item())
    return out


def tiny_run(root: Path) -> Path:
    """A ResNet-18 ×0.125 pretrained for 2 epochs on the first 256 backdrops images (calibrated: gate too)."""
    from lbfood.engine import pipeline
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.training.setup import prepare_pretrain

    cfg = TrainConfig(data="backdrops", arch="resnet18", width=0.125, epochs=2, batch_size=64, limit=256,
                      device="cpu", workers=0, out=str(root / "tiny"))
    cwd = os.getcwd()
    os.chdir(root)  # calibration points runs/latest (under the current folder) at the run: not the user's
    try:
        for _ in pipeline.train(prepare_pretrain(cfg)):
            pass
    finally:
        os.chdir(cwd)
    return root / "tiny"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders (default: the demo's three under --demo)")
    p.add_argument("--demo", default="runs/demo", help="a `lbfood demo --out` folder")
    p.add_argument("--images", type=int, default=500, help="images per generated far-OOD set")
    p.add_argument("--real", action="append", default=[], help="a folder of real images, measured too (repeatable)")
    p.add_argument("--tiny", action="store_true", help="measure a tiny run trained here (smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.time()
    rt = make_runtime(args.device, "fp32", training=False)
    with tempfile.TemporaryDirectory() as tmp:
        found = [Path(r) for r in args.runs] or [Path(args.demo) / n for n in ("pretrained", "ce-only", "lff")]
        if args.tiny:
            found = [tiny_run(Path(tmp))]
        missing = [str(r) for r in found if not (r / "run.json").is_file()]
        if missing:
            raise SystemExit(f"no run at {', '.join(missing)}: run `lbfood demo --out {args.demo}` first, "
                             "pass run folders, or --tiny")
        notes: list[str] = []
        size = {int(runs.read(r).input_size) for r in found}
        if len(size) != 1:
            raise SystemExit(f"runs of different input sizes {sorted(size)}: measure them separately")
        sets = far_sets(args.images, size.pop(), args.seed, args.real)
        results = {r.name: measure(r, sets, rt, notes) for r in found}
    print(f"far-OOD gate: per run, share rejected by the gate / called OOD by the react score alone / called OOD "
          f"by `lbfood score` (both); {_common.machine(rt)}, torch {torch.__version__}, {time.time() - t0:.0f} s")
    names = list(results)
    print("| set | images | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for row in next(iter(results.values())):
        n = next(iter(results.values()))[row][0]
        cells = [" / ".join(f"{v:.1%}" for v in results[r][row][1:]) for r in names]
        print(f"| {row} | {n} | " + " | ".join(cells) + " |")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
