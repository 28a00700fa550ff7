"""`lbfood score FOLDER --out FILE.jsonl [--shard I/N]` on generated images: images/s and peak memory.

Writes --images PNG files (32×32, random content) into a temporary folder, makes an untrained run
(the work does not depend on the weights), then times the command as a user runs it (a fresh process,
`--method energy --threshold 0`, so no fit or calibration): once unsharded, then --shards processes at
once (each `--shard I/N`, as N machines or GPUs would), then one shard of a quarter of the images to
show that memory does not grow with the number of images. Prints images/s, the ratio of the sharded
to the unsharded rate, and each process's peak resident memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_run(root: Path, width: float) -> Path:
    from lbfood.engine import models, runs
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.data import get as get_dataset
    from lbfood.engine.data.backdrops import CLASSES
    from lbfood.engine.training.setup import new_meta

    meta = new_meta("pretrain", TrainConfig(width=width), get_dataset("backdrops"), CLASSES, 32)
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir(parents=True)
    runs.save_model(run, models.build("resnet18", num_classes=len(CLASSES), width=width))
    runs.write(run, meta.replace(status="done", epochs_done=1))
    return run


def make_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for k in range(n):
        sub = folder / f"{k // 1000:04d}"  # 1,000 files a folder, as a large collection would be laid out
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(sub / f"{k:07d}.png")


def score(images: Path, run: Path, out: Path, shards: int, batch: int) -> tuple[float, list[float], list[float]]:
    """Seconds for `shards` processes at once (each one shard, start-up included), each one's images/s
    as the command reports it (from its first image to its last line written), and peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-c", "import resource, sys\nfrom lbfood.cli import main\nsys.argv = ['lbfood', *sys.argv[1:]]\n"
           "try:\n    main()\nfinally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           "score", str(images), "--model", str(run), "--method", "energy", "--threshold", "0", "--device", "cpu",
           "--batch-size", str(batch)]
    t = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--out", str(out.with_suffix(f".{i}.jsonl")), "--shard", f"{i}/{shards}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(shards)]
    rss, rates = [], []
    for p in procs:
        out_text, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"score failed:\n{err[-2000:]}")
        rss.append(int(err.rsplit("MAXRSS", 1)[1].split()[0]) / 1024)
        rates.append(float(out_text.rsplit(" images/s)", 1)[0].rsplit("(", 1)[1].replace(",", "")))
    return time.perf_counter() - t, rates, rss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_images(root / "images", args.images)
        print(f"{args.images:,} images generated in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs, "
              f"resnet18 width {args.width}, batch {args.batch_size}")
        run = make_run(root, args.width)
        one, rate1, rss1 = score(root / "images", run, root / "one", 1, args.batch_size)
        many, raten, rssn = score(root / "images", run, root / "many", args.shards, args.batch_size)
        lines = sum(1 for i in range(args.shards) for _ in open(root / f"many.{i}.jsonl"))
        assert lines == args.images, (lines, args.images)
        (root / "quarter").mkdir()
        for d in sorted((root / "images").iterdir())[:max(1, len(list((root / "images").iterdir())) // 4)]:
            d.rename(root / "quarter" / d.name)
        _, _, rssq = score(root / "quarter", run, root / "q", 1, args.batch_size)
    print(f"1 process: {rate1[0]:,.0f} images/s while scoring; {args.images / one:,.0f} images/s with start-up "
          f"({one:.1f} s); peak RSS {rss1[0]:.0f} MiB")
    print(f"{args.shards} shards at once: {sum(raten):,.0f} images/s while scoring (sum of {', '.join(f'{r:,.0f}' for r in raten)}); "
          f"{args.images / many:,.0f} images/s with start-up ({many:.1f} s); peak RSS {max(rssn):.0f} MiB each")
    print(f"sharded/unsharded scoring rate: {sum(raten) / rate1[0]:.2f}; wall time: {one / many:.2f}")
    print(f"peak RSS, all images / a quarter of them (one process): {rss1[0] / rssq[0]:.2f} "
          f"(resource.getrusage ru_maxrss; {resource.getpagesize()} B pages)")


if __name__ == "__main__":
    main()
