"""Shared fixtures: run folders made without training, and a small `backdrops` for fast evaluation."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
from cli_checks import clean
from hostile_checks import KILL_RUN, Killed, invoke

# `make test` runs the tests in one process per core (pytest-xdist): each worker, and the processes its
# tests start, then computes on one thread, so the workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The tests marked slow (minutes-long subprocess chains) first, in their order: with several workers
    the longest start early, so none of them is the last one left running."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
    from lbfood.engine.io import file_lock

    # One training per test session, also with several workers: the first trains into the folder that
    # the workers share (the base of their temporary folders), the others wait for it and read it.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "trained" / "run"
    with file_lock(shared / "trained.lock"):
        if not (out / "run.json").exists() or json.loads((out / "run.json").read_text())["status"] != "done":
            _train_tiny(out)
    return out


def _train_tiny(out: Path) -> None:
    import shutil

    import torch

    from lbfood.engine import pipeline
    from lbfood.engine.config import TrainConfig
    from lbfood.engine.training.setup import prepare_pretrain

    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
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


# ---- hostile-input fixtures (tests/hostile_checks.py has their helpers) ----


@pytest.fixture
def run(tmp_path, make_run, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_run(tmp_path)


@pytest.fixture
def read_only(monkeypatch):
    """read_only(folder): make `folder` and everything under it unwritable. Folders become 0555; as
    root (who writes anyway) creating a file or folder below it raises EACCES, as the kernel would."""
    changed: list[tuple[Path, int]] = []
    guarded: list[str] = []

    def below(path) -> bool:
        p = os.path.realpath(os.path.abspath(os.fsdecode(path)))
        return any(p == g or p.startswith(g + os.sep) for g in guarded)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    real_open, real_mkdir = os.open, os.mkdir

    def guarded_open(path, flags, mode=0o777, *args, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            raise denied(path)
        return real_open(path, flags, mode, *args, **kw)

    def guarded_mkdir(path, mode=0o777, *args, **kw):
        if below(path) and not os.path.lexists(path):
            raise denied(path)
        return real_mkdir(path, mode, *args, **kw)

    def make(folder: Path) -> None:
        folder = Path(folder)
        for p in (folder, *folder.rglob("*")):
            if p.is_dir() and not p.is_symlink():
                changed.append((p, stat.S_IMODE(p.stat().st_mode)))
                p.chmod(0o555)
        guarded.append(os.path.realpath(folder))
        if os.geteuid() == 0:
            monkeypatch.setattr(os, "open", guarded_open)
            monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    yield make
    for p, mode in reversed(changed):
        p.chmod(mode)


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write fails as on a full disk: the data is written, then fsync reports ENOSPC."""

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", enospc)


@pytest.fixture
def kill_at(monkeypatch):
    """kill_at("state@2"): the next command dies at that write step (lbfood.engine.killpoints)."""
    from lbfood.engine import killpoints

    def die():
        raise Killed

    monkeypatch.setattr(killpoints, "die", die)

    def arm(point: str | None) -> None:
        monkeypatch.setattr(killpoints, "_reached", {})
        if point is None:
            monkeypatch.delenv(killpoints.ENV, raising=False)
        else:
            monkeypatch.setenv(killpoints.ENV, point)

    yield arm


@pytest.fixture
def reference(tmp_path, small_backdrops, monkeypatch, kill_at):
    monkeypatch.chdir(tmp_path)
    kill_at(None)
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/ref")
    clean(r)
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / "ref"

