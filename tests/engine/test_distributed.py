"""Data parallelism on the CPU (gloo): N processes train, resume and report like one; a lost rank fails fast.

Every multi-process check starts real processes (`--devices 2`, or two `python -m lbfood` with torchrun's
environment variables), so this file costs a few process start-ups; the models are width 0.125 and the
data 128 images.
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lbfood.engine import distributed, runs
from lbfood.engine.config import TrainConfig
from lbfood.engine.distributed import DistInfo
from lbfood.engine.errors import ConfigError, DistributedError
from lbfood.engine.events import Finished
from lbfood.engine.runtime import make_runtime
from lbfood.engine.training import loop as train
from lbfood.engine.training import setup
from lbfood.engine.training.finetune import LFFHook
from lbfood.engine.training.objectives import BgEnergyHook, BgHeadHook, RelLFFHook

TINY = ["--limit", "128", "--width", "0.125", "--batch-size", "64", "--device", "cpu", "--workers", "0", "-q"]
SMALL = dict(data="backdrops", arch="resnet18", width=0.125, batch_size=64, limit=128, device="cpu", workers=0)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path), **extra)
    return env


def _ranks(args, cwd, n=2, timeout=120, **extra) -> list[subprocess.CompletedProcess]:
    """`python -m lbfood ARGS` as n ranks with the variables torchrun sets (no agent: a dead rank is not
    cleaned up after, so the survivors' own error handling is what the test sees)."""
    port = _port()
    procs = [subprocess.Popen([sys.executable, "-m", "lbfood", *map(str, args)], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n),
                                       RANK=str(r), LOCAL_RANK=str(r), **extra)) for r in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _images(folder, n, tint=None, seed=0):
    """n PNGs of 40×40 px: uniform noise, or Gaussian around an RGB `tint`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        x = rng.integers(0, 255, (40, 40, 3)) if tint is None else rng.normal(tint, 40, (40, 40, 3))
        Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _tiny_imagefolder(root, train=20, test=11) -> str:
    """`imagefolder:ROOT` with three tinted classes: cheaper to load in every process than `backdrops`."""
    for i, (c, tint) in enumerate(zip("abc", ([200, 60, 60], [60, 200, 60], [60, 60, 200]), strict=True)):
        _images(root / "train" / c, train, tint, seed=i)
        _images(root / "test" / c, test, tint, seed=10 + i)
    return f"imagefolder:{root}"


class GhostBatches(nn.Module):
    """One process computing exactly what `world` DDP processes compute, by construction.

    The batch is cut into `world` slices and each goes through the model alone, so batch norm uses each
    slice's own statistics, as on its rank; the CE of the whole batch is the mean of the slices' CEs
    (equal slices), so its gradient is DDP's average of per-rank gradients. BN running statistics are kept
    from slice 0 only: DDP broadcasts rank 0's buffers before each forward and rank 0's are saved.
    `.module` makes `runs.unwrap` save the plain model.
    """

    def __init__(self, module: nn.Module, world: int):
        super().__init__()
        self.module, self.world = module, world

    def forward(self, x, with_features=False):
        if not self.training:
            return self.module(x, with_features=with_features)
        outs = []
        for i, xs in enumerate(x.chunk(self.world)):
            # Slices after the first update throw-away copies of the buffers (swapped, not copied back in
            # place: autograd keeps the ones each forward used).
            held = [(m, n, b) for m in self.module.modules() for n, b in m._buffers.items() if b is not None and i]
            for m, n, b in held:
                m._buffers[n] = b.clone()
            try:
                outs.append(self.module(xs, with_features=True))
            finally:
                for m, n, b in held:
                    m._buffers[n] = b
        logits, fmap = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return (logits, fmap) if with_features else logits


def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # make_runtime then leaves the thread count alone
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _assert_same_weights(a_dir, b_dir, rtol=1e-5, atol=1e-6):
    a, b = (runs.load_tensors(d / "model.safetensors") for d in (a_dir, b_dir))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def test_two_processes_train_like_one_and_resume_with_one(tmp_path, monkeypatch):
    """`--devices 2` (torchrun's agent, gloo) writes one run whose weights equal one process's over the
    same global batches.

    BN makes the comparison with a plain single-process run inexact by design (each rank normalises its
    own 32 images), and SyncBatchNorm needs CUDA, so the reference is `GhostBatches`: one process that
    computes the per-rank slices separately, which is what DDP computes. The 2-process run is then resumed
    by one process for a second epoch, next to the reference resumed the same way: the saved state does
    not depend on the number of processes. Everything runs on one thread per process: with another thread
    count the convolutions sum in another order, and two SGD steps through width-0.125 BN layers amplify
    that rounding to visible differences.
    """
    monkeypatch.chdir(tmp_path)
    _one_thread(monkeypatch)
    r = subprocess.run([sys.executable, "-m", "lbfood", "pretrain", "--devices", "2", "--epochs", "1",
                        "--out", "ddp", *TINY], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done in") == 1  # rank 1 prints nothing
    assert {p.name for p in (tmp_path / "ddp").iterdir()} >= {
        "metrics.jsonl", "model.safetensors", "run.json", "train_state.safetensors"}
    model, meta = runs.load_run(tmp_path / "ddp")
    assert meta.status == "done" and meta.epochs_done == 1

    s = setup.prepare_pretrain(TrainConfig(**SMALL, epochs=1, out=str(tmp_path / "ref")))
    s.model = GhostBatches(s.model, 2)
    assert isinstance(list(train.fit(s))[-1], Finished)
    _assert_same_weights(tmp_path / "ddp", tmp_path / "ref")

    for name in ("ddp", "ref"):
        s = setup.prepare_pretrain(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / name)), resume=True)
        assert isinstance(list(train.fit(s))[-1], Finished)
    _assert_same_weights(tmp_path / "ddp", tmp_path / "ref")
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_killed_rank_makes_the_other_fail_fast(tmp_path):
    """Rank 1 exits hard after its first step (the test hook `step:rank1`); rank 0 must stop with a
    one-line error, exit code 3, well within the timeout, and leave no half-made run folder."""
    data = _tiny_imagefolder(tmp_path / "id", train=44)
    t0 = time.time()
    r0, r1 = _ranks(["pretrain", "--data", data, "--epochs", "1", "--out", "run", *TINY], tmp_path, timeout=90,
                    LBFOOD_DIST_TIMEOUT="20", LBFOOD_TEST_KILL_AT="step:rank1")
    assert r1.returncode == 137
    assert r0.returncode == 3, r0.stderr
    assert "rank 0 lost the other processes" in r0.stderr and "Traceback" not in r0.stderr
    assert time.time() - t0 < 80
    assert not (tmp_path / "run").exists()


def test_report_with_two_processes_equals_one(tmp_path, make_run, monkeypatch):
    """`report` under torchrun: each rank extracts half of every split (37 OOD images: unequal halves),
    the rows are gathered in order, and FPR95/AUROC/accuracy equal one process's. ReAct fits on the
    gathered training features (rank 0 stores it), ODIN's own pass is sharded and gathered too."""
    import json

    from lbfood.engine.config import ReportConfig
    from lbfood.engine.evaluation import report as evaluate

    _one_thread(monkeypatch)
    data = _tiny_imagefolder(tmp_path / "id")
    ood = _images(tmp_path / "ood", 37)
    run = make_run(tmp_path, data=data, classes=("a", "b", "c"))
    methods = "msp,energy,react,odin"
    ranks = _ranks(["report", "--model", run, "--ood", f"folder:{ood}", "--method", methods, "--device", "cpu",
                    "--output", "two.json", "-q"], tmp_path)
    for r in ranks:
        assert r.returncode == 0, r.stderr
    assert "wrote two.json" in ranks[0].stdout and ranks[1].stdout == ""
    assert len(list((run / "cache").iterdir())) == 3 and len(list((run / "scorers").iterdir())) == 1
    two = json.loads((tmp_path / "two.json").read_text())["runs"][0]
    cached = {p.name: runs.load_tensors(p) for p in (run / "cache").iterdir()}

    for sub in ("cache", "scorers"):  # one process starts from scratch too
        for p in (run / sub).iterdir():
            p.unlink()
    one = evaluate.report(ReportConfig(model=str(run), ood=(f"folder:{ood}",), methods=tuple(methods.split(",")),
                                       device="cpu")).runs[0]
    # The gathered rows are in the original order. One process extracts the training split with FeatureNorm's
    # jigsaw norms too (another cache file name; their puzzles depend on the sharding, so two ranks do not):
    # files are matched by dataset and split, and the tensors both hold are compared.
    single = {p.name.rsplit("-", 1)[0]: runs.load_tensors(p) for p in (run / "cache").iterdir()}
    assert len(single) == len(cached) == 3
    for name, tensors in cached.items():  # by the key's last part ("id.train.32px", "+.jigsaw" for one process)
        part = name.rsplit("-", 1)[0].rsplit("_", 1)[1]
        (other,) = [v for k, v in single.items() if k.rsplit("_", 1)[1].startswith(part)]
        assert set(tensors) <= set(other), name
        for k, v in tensors.items():
            torch.testing.assert_close(v, other[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k, n=name: f"{n} {k}: {m}")
    assert two["id_accuracy"] == one.id_accuracy
    for m in one.metrics:
        for k, v in one.metrics[m][f"folder:{ood}"].items():
            assert abs(two["metrics"][m][f"folder:{ood}"][k] - v) < 1e-6, (m, k)


# ---- L_LFF under DDP ------------------------------------------------------------------------------


class Tiny(nn.Module):
    """A feature map (B, 4, 6, 6) and a linear head, like the zoo's models; no BN, so slices are exact."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def forward(self, x, with_features=False):
        f = self.forward_features(x)
        logits = self.head(f.mean(dim=(2, 3)))
        return (logits, f) if with_features else logits


def _lff_case(objective="lff"):
    torch.manual_seed(0)
    model = Tiny()
    if objective == "bg-head":
        model.bg_head = nn.Linear(4, 1)
    return model, torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])


def _hook(objective, model, delta, dist=None):
    """Each objective with margins that keep every hinge active, so every term has a gradient."""
    if objective == "lff":
        return LFFHook(model, delta, 0.0, 1.0, dist=dist)
    if objective == "lff-rel":
        return RelLFFHook(model, delta, 0.25, 1.0, dist=dist)
    if objective == "bg-energy":
        return BgEnergyHook(model, delta, -10.0, 10.0, 1.0, dist=dist)
    return BgHeadHook(model, delta, 1.0, dist=dist)


def _lff_step(model, hook, x, y):
    model.zero_grad()
    logits, fmap = model(x, with_features=True)
    loss, stats = hook(x, y, logits, fmap)
    (loss + 0.0 * logits.sum()).backward()  # touch the head so DDP reduces every gradient
    return loss.detach(), stats, {k: p.grad.clone() for k, p in runs.unwrap(model).named_parameters()}


def _lff_worker(rank, port, deltas, out, objective):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.init_from_env("cpu", timeout=60)
    model, x, y = _lff_case(objective)
    ddp = nn.parallel.DistributedDataParallel(model)
    part = slice(2 * rank, 2 * rank + 2)
    results = {}
    for i, delta in enumerate(deltas):
        loss, stats, grads = _lff_step(ddp, _hook(objective, ddp, delta, info), x[part], y[part])
        summed = torch.stack([loss, stats["bg"]])
        distributed.all_reduce_sum(summed, info)
        results.update({f"{i}.loss": summed[0] / 2, f"{i}.bg": stats["bg"], f"{i}.count": summed[1]})
        results.update({f"{i}.grad.{k}": g for k, g in grads.items()})
    runs.save_tensors(out / f"rank{rank}.safetensors", results)
    distributed.destroy()


@pytest.mark.parametrize("objective", ["lff", "lff-rel", "bg-energy", "bg-head"])
def test_lff_global_mean_under_ddp_equals_one_process(tmp_path, objective):
    """Two ranks with unequal numbers of background locations (including 1 vs 0: a global count below the
    number of ranks) give the single-process objective over the whole batch: the same logged value and,
    after DDP's gradient averaging, the same gradients (L_LFF and each background objective of issue 23)."""
    model, x, y = _lff_case(objective)
    with torch.no_grad():
        from lbfood.engine.training.losses import location_logits

        p = location_logits(model.forward_features(x), model.head).softmax(1)
        p_true = p.gather(1, y.view(-1, 1, 1, 1).expand(-1, 1, 6, 6)).squeeze(1)  # (4, 6, 6)
    ordered = p_true.flatten().sort().values
    # δ just above the smallest p_true: one background location in all; and above the 30 smallest.
    deltas = [float(ordered[0] + ordered[1]) / 2, float(ordered[29] + ordered[30]) / 2]
    ref = []
    for d in deltas:
        loss, stats, grads = _lff_step(model, _hook(objective, model, d), x, y)
        ref.append((loss, stats["bg"], grads))
    assert ref[0][1] == 1 and ref[1][1] == 30

    # fork: the workers need no fresh interpreter (each sets one thread first, as DataLoader workers do)
    torch.multiprocessing.start_processes(_lff_worker, args=(_port(), deltas, tmp_path, objective), nprocs=2,
                                          start_method="fork")
    ranks = [runs.load_tensors(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    for i, (loss, bg, grads) in enumerate(ref):
        counts = [int(t[f"{i}.bg"]) for t in ranks]
        assert sum(counts) == bg and counts[0] != counts[1]
        for t in ranks:
            torch.testing.assert_close(t[f"{i}.loss"], loss)  # the logged value: Σ ranks / W
            for k, g in grads.items():
                torch.testing.assert_close(t[f"{i}.grad.{k}"], g, msg=lambda m, k=k, i=i: f"δ #{i} {k}: {m}")


# ---- set-up and input checks (one process) --------------------------------------------------------


def test_rank_device_and_shards(monkeypatch):
    assert distributed.rank_device("cpu", DistInfo(1, 2, 1)) == "cpu"
    assert distributed.rank_device("cuda:1", DistInfo()) == "cuda:1"  # one process: as given
    with pytest.raises(ConfigError, match="data-parallel"):
        distributed.rank_device("mps", DistInfo(0, 2, 0))
    assert [distributed.shard(10, DistInfo(r, 3)) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]
    rows = torch.arange(5.0)
    assert torch.equal(distributed.gather_rows(rows, 5, DistInfo()), rows)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK"):
        distributed.from_env()
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0")
    with pytest.raises(ConfigError, match="LBFOOD_DIST_TIMEOUT"):
        distributed.timeout_s()


def test_parallel_checks():
    rt = make_runtime("cpu", "fp32")
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        setup.check_parallel(TrainConfig(batch_size=64), rt, DistInfo(0, 3))
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        setup.check_parallel(TrainConfig(batch_size=64, sync_bn=True), rt, DistInfo(0, 2))
    setup.check_parallel(TrainConfig(batch_size=64, sync_bn=True), rt, DistInfo())  # one process: ignored


def test_devices_under_torchrun_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="under torchrun"):
        distributed.launch_local(2, ["pretrain"], cpu=True)


def test_lost_peer_turns_collective_failures_into_one_line():
    two = DistInfo(0, 2)
    gloo = "[/w/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv"
    with pytest.raises(DistributedError, match=r"^rank 0 lost the other processes.*\(Timed out waiting 20000ms"):
        with distributed.lost_peer(two):
            raise RuntimeError(gloo)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # a bug, not a lost process
        with distributed.lost_peer(two):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="Timed out"):  # one process: nothing to lose
        with distributed.lost_peer(DistInfo()):
            raise RuntimeError(gloo)


MAIN_FIRST = """
import sys, time
from pathlib import Path
import torch.distributed as td
from lbfood.engine.distributed import from_env, main_first
info = from_env()
td.init_process_group("gloo")
folder = Path(sys.argv[1])
with main_first(info, when=sys.argv[2] == "1"):
    if info.is_main:
        time.sleep(1.0)  # a slow download
    (folder / f"{info.rank}").write_text(" ".join(sorted(p.name for p in folder.iterdir())))
td.barrier()
td.destroy_process_group()
"""


@pytest.mark.parametrize("when", [True, False])
def test_main_first_lets_rank_0_finish_before_the_others_start(tmp_path, when):
    """What --download relies on under torchrun: rank 0 fetches into the shared folder, the others read it
    after (with `when` False, as without --download, they do not wait: rank 1 writes first)."""
    port = _port()
    procs = [subprocess.Popen([sys.executable, "-c", MAIN_FIRST, str(tmp_path), "1" if when else "0"], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(r),
                                       LOCAL_RANK=str(r))) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    # What each rank saw in the folder when it wrote: with main_first rank 0 was alone, rank 1 came after.
    assert ((tmp_path / "0").read_text(), (tmp_path / "1").read_text()) == (("", "0") if when else ("1", ""))
