"""The training loop and run folders: pretrain writes a loadable run, resume is exact, Ctrl-C is safe."""

import json

import pytest
import torch

from lbfood.engine import pipeline, runs
from lbfood.engine.config import TrainConfig
from lbfood.engine.events import EpochEnd, Finished, Interrupted, Progress
from lbfood.engine.training import loop as train
from lbfood.engine.training.setup import prepare_pretrain

SMALL = dict(data="backdrops", arch="resnet18", width=0.125, batch_size=64, limit=192, device="cpu", workers=0,
             log_every=1)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _run(cfg, **kw):
    s = prepare_pretrain(cfg, **kw)
    events = list(pipeline.train(s))
    return s, events


def test_pretrain_writes_a_reloadable_run(tmp_path):
    cfg = TrainConfig(**SMALL, epochs=1, out=str(tmp_path / "r"))
    s, events = _run(cfg)
    assert isinstance(events[-1], Finished)
    run = tmp_path / "r"
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "run.json", "train_state.safetensors",
                                               "metrics.jsonl"}
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "done" and meta["arch"] == "resnet18" and meta["width"] == 0.125
    assert len(meta["classes"]) == 10 and meta["input_size"] == 32 and len(meta["mean"]) == 3
    assert meta["config"]["epochs"] == 1 and meta["lbfood"] and meta["torch"] == torch.__version__
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and {"ce", "train_acc", "test_acc", "images_per_s"} <= set(json.loads(lines[0]))
    model, meta2 = runs.load_run(run)
    x = torch.randn(4, 3, 32, 32)
    trained = runs.unwrap(s.model).eval().to(memory_format=torch.contiguous_format)
    assert torch.equal(model(x), trained(x))
    assert (tmp_path / "runs" / "latest").resolve() == run.resolve()


def _ctrl_c_at(cfg, event_type):
    """Run `fit` and deliver Ctrl-C at the first event of `event_type` (as while the CLI renders it)."""
    gen = train.fit(prepare_pretrain(cfg))
    for ev in gen:
        if isinstance(ev, event_type):
            return gen.throw(KeyboardInterrupt)
    raise AssertionError(f"no {event_type.__name__} event")


def _weights(path):
    return runs.load_tensors(path / "model.safetensors")


def test_resume_after_interrupt_equals_straight_run(tmp_path):
    # Straight: 2 epochs with a cosine schedule.
    _run(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / "straight")))
    # Interrupted after the first epoch (Ctrl-C arrives while the CLI renders), then resumed.
    last = _ctrl_c_at(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / "cut")), EpochEnd)
    assert isinstance(last, Interrupted) and last.epochs_done == 1
    meta = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["epochs_done"] == 1
    _run(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / "cut")), resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2


def test_interrupt_before_first_epoch_leaves_nothing(tmp_path):
    last = _ctrl_c_at(TrainConfig(**SMALL, epochs=1, out=str(tmp_path / "r")), Progress)
    assert isinstance(last, Interrupted) and last.run_dir is None
    assert not (tmp_path / "r").exists()


def test_lr_schedules():
    cfg = TrainConfig(epochs=4, lr=0.1, schedule="multistep", milestones=(2, 3))
    assert [train.lr_at(cfg, e, 0, 10) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cfg = TrainConfig(epochs=2, lr=0.1)
    assert train.lr_at(cfg, 0, 0, 10) == pytest.approx(0.1)
    assert train.lr_at(cfg, 1, 0, 10) == pytest.approx(0.05)
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_epochs=1)
    assert train.lr_at(cfg, 0, 4, 10) == pytest.approx(0.05)


def test_finetune_from_an_unfinished_parent_says_so(tmp_path, make_run, small_backdrops):
    """A crashed parent (status running) is a note, not a refusal: its last saved epoch is a fair start,
    and the child records which run it came from. Was: no word at all."""
    from lbfood.engine.config import FinetuneConfig
    from lbfood.engine.training.finetune import prepare_finetune

    parent = make_run(tmp_path)
    runs.update(parent, status="running", config={**runs.read(parent).config, "epochs": 4})
    s = prepare_finetune(FinetuneConfig(parent=str(parent), epochs=1, batch_size=16, limit=32, mu=1.0, device="cpu",
                                        workers=0, out=str(tmp_path / "ft")))
    warnings = [n.message for n in s.notes if n.level == "warning"]
    assert (f"parent run {parent} is unfinished (status running, 1 of 4 epochs): fine-tuning starts from its "
            f"epoch-1 weights; finish it with `lbfood pretrain --resume --out {parent}`") in warnings
    runs.update(parent, status="done")
    s = prepare_finetune(FinetuneConfig(parent=str(parent), epochs=1, batch_size=16, limit=32, mu=1.0, device="cpu",
                                        workers=0, out=str(tmp_path / "ft")))
    assert not any("parent run" in n.message for n in s.notes)
    assert not (tmp_path / "ft").exists()  # preparing writes nothing


def test_full_disk_after_an_epoch_advises_resume_and_resume_finishes(tmp_path, monkeypatch):
    """Was: "free some space and run it again", and the same command again says "continue with --resume".
    The disk fills while the second epoch is committed: the advice is --resume, which finishes the run."""
    import errno
    import os

    from lbfood.engine.errors import StorageError

    real_fsync, commits = os.fsync, []

    def fsync(fd):
        if "train_state" in os.readlink(f"/proc/self/fd/{fd}"):
            commits.append(fd)
            if len(commits) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = TrainConfig(**SMALL, epochs=2, out="r")
    with pytest.raises(StorageError) as e:
        _run(cfg)
    assert str(e.value) == ("cannot write r/train_state.safetensors: no space left on the device (or over quota); "
                            "free some space, then continue the run with `lbfood pretrain --resume --out r`")
    assert runs.read("r").epochs_done == 1 and not list(tmp_path.joinpath("r").glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    s, events = _run(cfg, resume=True)
    assert isinstance(events[-1], Finished) and runs.read("r").status == "done" and runs.read("r").epochs_done == 2
