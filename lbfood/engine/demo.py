"""The demo's recipe: the embedded `backdrops` benchmark with a CPU-sized ResNet-18.

pretrain (CE) → fine-tune with CE + λ·L_LFF → the CE-only control (λ = 0, same length and recipe) →
one report with the three runs side by side. Only the difference between the LFF run and the control
is the method's effect; the pretrained run shows what the extra epochs alone do.

`quick=True` is a smoke run of the same four steps for a CI pipeline (under a minute on a 2-core CPU):
a narrower model, fewer epochs, and only the first QUICK_LIMIT images of every backdrops split (the
`limit` option of training and report). Its numbers say that the install works, nothing about LFF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from lbfood.engine.config import FinetuneConfig, ReportConfig, TrainConfig
from lbfood.engine.errors import ConfigError

DEMO_ARCH = "resnet18"
DEMO_WIDTH = 0.25
DEMO_PRETRAIN_EPOCHS = 6
DEMO_METHODS = ("react",)  # the paper's default score; `lbfood report --method ...` adds others
# --quick: the same steps at smoke-test size.
QUICK_WIDTH = 0.125
QUICK_PRETRAIN_EPOCHS = 2
QUICK_FINETUNE_EPOCHS = 1
QUICK_LIMIT = 256  # first images of each split (train, test, each OOD set)
# The run folders the demo writes under --out: the only things `prepare_out` may delete.
RUN_NAMES = ("pretrained", "lff", "ce-only")
PICTURES = "pictures"  # and the pictures it drew from them


def pretrain_config(out: Path, *, device: str = "auto", seed: int = 0, quick: bool = False) -> TrainConfig:
    return TrainConfig(data="backdrops", arch=DEMO_ARCH, width=QUICK_WIDTH if quick else DEMO_WIDTH,
                       epochs=QUICK_PRETRAIN_EPOCHS if quick else DEMO_PRETRAIN_EPOCHS,
                       batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4, warmup_epochs=1, device=device,
                       seed=seed, limit=QUICK_LIMIT if quick else None,
                       out=str(Path(out) / "pretrained"), workers=0)


def finetune_config(out: Path, parent: Path, *, lam: float, device: str = "auto", seed: int = 0,
                    quick: bool = False) -> FinetuneConfig:
    """The backdrops preset (δ = 1/K, μ auto, 4 epochs); `lam` = 0 gives the CE-only control.
    `quick`: one epoch at the preset's learning rate, on the first QUICK_LIMIT images."""
    name = "lff" if lam > 0 else "ce-only"
    quick_kw = dict(epochs=QUICK_FINETUNE_EPOCHS, milestones=(), limit=QUICK_LIMIT, probe_batches=2) if quick else {}
    cfg = FinetuneConfig(parent=str(parent), lam=lam, batch_size=128, device=device, seed=seed,
                         out=str(Path(out) / name), workers=0, **quick_kw)
    return cfg


def report_config(lff: Path, others: list[Path], *, device: str = "auto", quick: bool = False) -> ReportConfig:
    return ReportConfig(model=str(lff), compare=tuple(str(p) for p in others), benchmark="backdrops",
                        methods=DEMO_METHODS, device=device, workers=0, limit=QUICK_LIMIT if quick else None)


@contextlib.contextmanager
def quick_threads() -> Iterator[None]:
    """--quick runs with one intra-op thread unless OMP_NUM_THREADS says otherwise: its convolutions are
    too small to gain from a second one, and on a busy machine a second thread waits for a core
    (measured at load 11 on 2 cores: 37 s wall with one thread, 80-100 s with two; BENCHMARKS.md)."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"  # runtime.set_threads then leaves the count alone
    torch.set_num_threads(1)
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]
        torch.set_num_threads(threads)


def _is_demo_pictures(path: Path) -> bool:
    """The demo's own pictures folder: a real folder named `pictures` holding only PNG and HTML files (and
    the mark of a folder lbfood writes)."""
    if path.name != PICTURES or path.is_symlink() or not path.is_dir():
        return False
    from lbfood.engine.outputs import MARK

    return all(p.is_dir() and not p.is_symlink() or p.suffix in (".png", ".html") or p.name == MARK
               for p in path.rglob("*"))


def _is_demo_run(path: Path) -> bool:
    """A real folder named as one of the demo's runs whose run.json is an lbfood run description."""
    from lbfood.engine import runs

    if path.name not in RUN_NAMES or path.is_symlink() or not path.is_dir():
        return False
    return runs.is_run(path, described=True)


def prepare_out(out: Path) -> list[Path]:
    """Make `out` ready for a demo: remove the runs an earlier demo left there and return them.

    Anything else in `out` (a file, another folder, a link, a run folder without its run.json) is
    the user's: then nothing is touched and ConfigError says so."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return []
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the demo's runs")
    entries = sorted(out.iterdir())
    foreign = [p.name for p in entries if not (_is_demo_run(p) or _is_demo_pictures(p))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f", … ({len(foreign)} in all)" if len(foreign) > 3 else "")
        raise ConfigError(f"--out {out} holds {shown}, which is not an lbfood demo run; nothing was deleted: "
                          "pick another (new or empty) folder")
    for p in entries:
        shutil.rmtree(p)
    return entries


# The demo's sample images for `lbfood explain`: (dataset, how many of its first test images).
SAMPLES = (("backdrops", 2), ("backdrops-scenes", 1), ("backdrops-novel", 1), ("backdrops-noise", 1))


def write_samples(folder: Path) -> list[Path]:
    """The first test images of backdrops and of each of its OOD splits, as PNG files in `folder`."""
    import io

    from PIL import Image

    from lbfood.engine.data import LoadOptions, get
    from lbfood.engine.io import atomic_write_bytes

    paths = []
    for name, n in SAMPLES:
        images = get(name).load(LoadOptions(root=Path(folder)), "test").images
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(images[i].numpy()).save(buf, format="png")
            paths.append(Path(folder) / f"{name}-{i}.png")
            atomic_write_bytes(paths[-1], buf.getvalue())
    return paths


def far_case(run_dir: Path, *, device: str = "auto", seed: int = 0) -> dict[str, tuple[int, int, int]]:
    """The demo's closing example of `lbfood score`'s far-OOD gate: five images of uniform pixel noise and
    three blank frames (black, white, mid-grey), nothing like backdrops, scored by `run_dir` with the react
    score alone (`--no-far-gate`) and with the gate: {case: (images, ID by the score alone, ID with the gate)}."""
    import tempfile

    import numpy as np
    from PIL import Image

    from lbfood.engine.config import ScoreConfig
    from lbfood.engine.evaluation.score import score_images

    rng = np.random.default_rng(seed)
    cases = {"uniform noise": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)],
             "blank frames": [np.full((32, 32, 3), v, np.uint8) for v in (0, 255, 128)]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, arrays in cases.items():
            folder = Path(tmp) / case.replace(" ", "-")
            folder.mkdir()
            for i, a in enumerate(arrays):
                Image.fromarray(a).save(folder / f"{i}.png")
            ids = [sum(r.verdict == "ID" for r in score_images(ScoreConfig(paths=(str(folder),), model=str(run_dir),
                                                                           device=device, far_gate=gate)))
                   for gate in (False, True)]
            out[case] = (len(arrays), *ids)
    return out
