"""lbfood.engine.runtime (device, precision, threads) and lbfood.engine.io (atomic, safe files)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from cli_checks import one_error_line
from hostile_checks import (
    TINY,
    invoke,
    tree,
)

from lbfood.engine import io, runtime
from lbfood.engine.errors import ConfigError, StorageError


def test_precision_rule():
    cpu = torch.device("cpu")
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    assert runtime.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        runtime.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="valid: auto, fp32, bf16, fp16"):
        runtime.resolve_precision("fp8", cpu)
    rt = runtime.make_runtime("cpu", "auto")
    assert rt.amp_dtype is None and not rt.use_scaler and rt.precision == "fp32"


def test_tf32_for_training_only_on_cuda(monkeypatch):
    """On CUDA, a training runtime allows TF32 and an evaluation runtime (fp32 on auto) turns it off
    again; the flags are process-wide, so each runtime sets them (a sweep alternates the two). The
    device is faked: this machine has no GPU, and the flags can be set without one."""
    monkeypatch.setattr(runtime, "select_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(runtime, "set_threads", lambda: None)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    seen = []
    try:
        for training in (True, False, True, False):
            rt = runtime.make_runtime("cuda", "auto", training=training)
            seen.append((rt.precision, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved
    assert seen == [("bf16", True, True), ("fp32", False, False)] * 2


def test_devices():
    assert runtime.select_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        runtime.select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            runtime.select_device("cuda")


def test_threads_respect_the_user(monkeypatch):
    n = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        runtime.set_threads()
        assert torch.get_num_threads() == 2  # the user chose: left alone
        monkeypatch.delenv("OMP_NUM_THREADS")
        runtime.set_threads()
        assert torch.get_num_threads() == min(len(os.sched_getaffinity(0)), 16)
    finally:
        torch.set_num_threads(n)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    io.atomic_write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_tensors_and_metadata_round_trip(tmp_path):
    t = {"w": torch.arange(6.0).reshape(2, 3).t()}  # not contiguous
    io.save_tensors(tmp_path / "t.safetensors", t, metadata={"format": "x"})
    assert torch.equal(io.load_tensors(tmp_path / "t.safetensors")["w"], t["w"])
    assert io.read_metadata(tmp_path / "t.safetensors") == {"format": "x"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    assert io.read_metadata(tmp_path / "bad.safetensors") is None


def test_atomic_writes_refuse_what_a_rename_would_destroy(tmp_path):
    """A folder, a FIFO (or a device) at the target is refused and left as it was; so is a path under a file."""


    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "f").write_text("x")
    for target, needle in ((tmp_path / "d", "it is a folder"), (tmp_path / "fifo", "not a regular file"),
                           (tmp_path / "f" / "x.json", "is a file, not a folder")):
        with pytest.raises(StorageError, match=needle):
            io.atomic_write_bytes(target, b"data")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and (tmp_path / "f").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f", "fifo"]


# ---- hostile input (formerly tests/test_hostile.py) ----


def test_device_meta_is_one_line(run, tmp_path):
    before = tree(tmp_path)
    one_error_line(invoke("report", "--method", "energy", "--device", "meta", "-q"), "--device meta", "cpu, cuda or mps")
    one_error_line(invoke("pretrain", *TINY[:-3], "--device", "meta", "--out", tmp_path / "new"), "--device meta")
    one_error_line(invoke("score", run, "--device", "meta"), "--device meta")
    assert tree(tmp_path) == before


def test_select_device_refuses_meta_and_a_missing_gpu_index(monkeypatch):
    import torch

    from lbfood.engine.runtime import select_device

    with pytest.raises(ConfigError, match="--device meta: lbfood computes on cpu, cuda or mps"):
        select_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        select_device("cuda:2")
    assert select_device("cuda:1") == torch.device("cuda", 1)
