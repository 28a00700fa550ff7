"""Helpers of the hostile-input tests (what a careless or hostile user does, on tiny data): the CLI
in-process, one-line refusals, file trees and deadlines; their fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import struct
import zlib
from pathlib import Path

import fakedata as fd
from cli_checks import clean
from typer.testing import CliRunner

from lbfood.cli import app

runner = CliRunner()


CPU = ("--device", "cpu", "-q")


TINY = ("--arch", "resnet18", "--width", "0.125", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "-q")


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def last_error_line(r, *needles: str) -> str:
    """A training command that stopped: its progress lines, then one error line (and nothing after it)."""
    clean(r)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert [ln.startswith("error:") for ln in lines].count(True) == 1 and lines[-1].startswith("error:"), r.output
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def squeezed(text: str) -> str:
    """`text` without any whitespace: Rich wraps long lines (and paths) at the terminal width."""
    return "".join(text.split())


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (links not followed): kind and mode, and the size, mtime and bytes of files
    (a folder's own mtime is left out: it only says that an entry came and went)."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            out[str(p.relative_to(root))] = (kind, mode, st.st_size, st.st_mtime_ns, p.read_bytes())
        else:
            out[str(p.relative_to(root))] = (kind, mode, os.readlink(p) if p.is_symlink() else None)
    return out


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than `seconds`."""

    def boom(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w×h RGB pixels but holds almost no data: opening it costs nothing, decoding
    it would allocate w·h·3 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def score_rows(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.strip().splitlines()]


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob(".*.tmp"))


def _looping_folder(root: Path) -> Path:
    """root/f: 3 images, two links to itself, a link cycle through a subfolder, and a link to a sibling
    g/ that holds the same files again (one by symbolic link, one by hard link)."""
    f = root / "f"
    fd.write_flat_folder(f, n=3, size=(20, 20))
    (f / "self").symlink_to(".")
    (f / "again").symlink_to(".")
    (f / "sub").mkdir()
    (f / "sub" / "up").symlink_to("..")
    (root / "g").mkdir()
    (root / "g" / "a.png").symlink_to("../f/img_000.png")
    os.link(f / "img_001.png", root / "g" / "b.png")
    (f / "twin").symlink_to("../g")
    (f / ".hidden").mkdir()
    fd.write_flat_folder(f / ".hidden", n=1)
    return f


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


KILL_RUN = ("--arch", "resnet18", "--width", "0.125", "--epochs", "2", "--batch-size", "16", "--limit", "32",
            "--seed", "3", "--device", "cpu", "-q")


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in lbfood handles it."""


def tensors(run_dir: Path) -> dict:
    from lbfood.engine.io import load_tensors

    return {"model": load_tensors(run_dir / "model.safetensors"),
            "state": {k: v for k, v in load_tensors(run_dir / "train_state.safetensors").items()}}


def assert_same_run(a: Path, b: Path) -> None:
    """Bit for bit: weights, optimizer buffers and RNG; epochs, metrics lines, threshold and status."""
    import torch

    ta, tb = tensors(a), tensors(b)
    for part in ("model", "state"):
        assert ta[part].keys() == tb[part].keys()
        for k in ta[part]:
            assert torch.equal(ta[part][k], tb[part][k]), (part, k)
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    assert (ma["status"], ma["epochs_done"], ma["threshold"]["value"]) == \
           (mb["status"], mb["epochs_done"], mb["threshold"]["value"]) == ("done", 2, mb["threshold"]["value"])
    la, lb = ([json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()] for p in (a, b))
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb] == [1, 2]
    assert [r["test_acc"] for r in la] == [r["test_acc"] for r in lb]


# Every write step of a 2-epoch run: inside the first step of each epoch, after the train state (the
# commit), after model.safetensors, after the metrics line, after run.json, after "trained", after the
# threshold is computed, after runs/latest. (Inside epoch 1, before any commit: the subprocess test below.)
POINTS = ["state@1", "model@1", "metrics@1", "meta@1", "step@2", "state@2", "model@2", "metrics@2", "meta@2",
          "trained", "calibrated", "latest"]

