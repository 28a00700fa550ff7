"""Shared fixtures: run folders made without training, and a small `backdrops` for fast evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def make_run():
    """A factory: make_run(tmp_path, arch=..., width=..., data=..., kind=...) -> run folder.

    Builds the model with a fixed seed (no training), saves it with `runs.save_model` and writes
    run.json with the keys `setup.new_meta` writes, status "done"; `runs/latest` points at it.
    `mean`/`std` override the dataset's normalisation (to check that evaluation uses the run's).
    """

    def _make(tmp_path: Path, arch: str = "resnet18", width: float = 0.125, data: str = "backdrops",
              kind: str = "pretrain", *, seed: int = 0, classes=None, mean=None, std=None,
              name: str | None = None, data_root: str | None = None) -> Path:
        import torch

        from lbfood.engine import models, runs
        from lbfood.engine.config import TrainConfig
        from lbfood.engine.data import get
        from lbfood.engine.training.setup import new_meta

        if classes is None:
            if data == "backdrops":
                from lbfood.engine.data.backdrops import CLASSES as classes
            elif data == "cifar10":
                from fakedata import CIFAR10_CLASSES as classes
            else:
                raise ValueError(f"make_run: pass classes= for {data}")
        spec = get(data)
        cfg = TrainConfig(data=data, arch=arch, width=width, epochs=1, seed=seed, data_root=data_root,
                          device="cpu")
        meta = new_meta(kind, cfg, spec, classes, models.input_size(arch)).replace(status="done", epochs_done=1)
        if mean is not None:
            meta = meta.replace(mean=list(mean))
        if std is not None:
            meta = meta.replace(std=list(std))
        torch.manual_seed(seed)
        model = models.build(arch, num_classes=len(classes), width=width)
        run_dir = Path(tmp_path) / "runs" / (name or f"{kind}-{data}-{arch}-s{seed}")
        run_dir.mkdir(parents=True)
        runs.save_model(run_dir, model)
        runs.write(run_dir, meta)
        runs.point_latest(run_dir, run_dir.parent)
        return run_dir

    return _make


@pytest.fixture
def small_backdrops(monkeypatch):
    """`backdrops` with 200 train, 100 test and 100 images per OOD split (the generator's cache is
    cleared before and after, so other tests see the full-size splits)."""
    import torch

    from lbfood.engine.data import backdrops

    backdrops._cached.cache_clear()
    for split, n in {"train": 200, "test": 100, "scenes": 100, "novel": 100, "noise": 100}.items():
        monkeypatch.setitem(backdrops.SPLITS, split, n)
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # make_runtime then leaves the thread count alone
    torch.set_num_threads(1)  # two shared cores: one thread per test process is fastest
    yield backdrops.SPLITS
    torch.set_num_threads(threads)
    backdrops._cached.cache_clear()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/pgserver.py). Skipped, with the reason, only outside
    CI when the server binaries or the psycopg driver are missing; in CI (CI=true) that is a failure."""
    import importlib.util
    import os

    import pgserver

    bindir = pgserver.binaries()
    missing = [what for what, ok in (("the PostgreSQL server (apt-get install postgresql)", bindir is not None),
                                     ("psycopg (pip install 'lbfood[postgres]')",
                                      importlib.util.find_spec("psycopg") is not None)) if not ok]
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {' and '.join(missing)} is missing")
        pytest.skip(f"PostgreSQL tests need {' and '.join(missing)}")
    server = pgserver.Server(bindir).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's PostgreSQL server: its URL (with the password)."""
    import re

    return postgres_server.create_db(re.sub(r"\W", "_", request.node.name)[:50].lower())
# The tiny *trained* run: a ResNet-18 ×0.125 pretrained on the first TRAINED_LIMIT backdrops images
# (and calibrated, far-OOD gate included), once per test session; tests that change it copy it first.
TRAINED_LIMIT, TRAINED_EPOCHS = 2000, 5


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A run folder trained (CE, TRAINED_EPOCHS epochs on TRAINED_LIMIT images, CPU) and calibrated as
    `lbfood pretrain` does: run.json has its threshold and far-OOD gate. Treat it as read-only: copy it
    (`shutil.copytree`) to change it."""
    import torch

    from lbfood.engine import pipeline
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.training.setup import prepare_pretrain

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig(data="backdrops", arch="resnet18", width=0.125, epochs=TRAINED_EPOCHS, batch_size=64,
                      lr=0.1, nesterov=True, warmup_epochs=1, limit=TRAINED_LIMIT, device="cpu", workers=0, seed=0, out=str(out))
    threads, cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    os.chdir(out.parent)  # calibration points runs/latest (under the current folder) at the run
    try:
        for _ in pipeline.train(prepare_pretrain(cfg)):
            pass
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return out
