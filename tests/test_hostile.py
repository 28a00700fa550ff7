"""Hostile input (issue 16): what a careless or hostile user does, through the command line, on tiny data.

One section per numbered case of the issue. Each test asserts the exit code, the one-line message,
that no traceback escaped, and that nothing outside the intended output changed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import stat
import struct
import warnings
import zlib
from pathlib import Path

import fakedata as fd
import pytest
from cli_checks import clean, one_error_line
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import data
from lbfood.engine.data import LoadOptions
from lbfood.engine.data.images import MAX_PIXELS, decode
from lbfood.engine.data.walk import glob_files, walk_files
from lbfood.engine.errors import ConfigError, DataError, StorageError
from lbfood.engine.io import atomic_write_bytes

runner = CliRunner()
CPU = ("--device", "cpu", "-q")
TINY = ("--arch", "resnet18", "--width", "0.125", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "-q")


# ---- helpers --------------------------------------------------------------------------------------


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


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob(".*.tmp"))


# ---- 9. read-only folders, full disks, --device ---------------------------------------------------


def test_report_on_a_read_only_run_finishes_with_a_note(run, tmp_path, read_only):
    read_only(run)
    before = tree(tmp_path)
    r = invoke("report", "--method", "react", "--ood", "backdrops-noise", "--output", tmp_path / "r.json", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert f"could not save to {run}/cache (permission denied)" in " ".join(r.output.split())
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["extractions"] == 3 and res["fits"] == 1  # test, noise, train; nothing came from a cache
    assert math.isfinite(res["runs"][0]["metrics"]["react"]["backdrops-noise"]["auroc"])
    after = tree(tmp_path)
    assert after.pop("r.json") and after == before
    with pytest.raises(StorageError, match=f"cannot write {run}/cache/f: permission denied; make {run} writable"):
        atomic_write_bytes(run / "cache" / "f", b"")  # the advice names the folder that refused


def test_well_formed_but_wrong_scorer_and_cache_files_are_recomputed(run, tmp_path):
    """A scorer or cache file that reads fine but cannot belong to this model (another model's shapes,
    non-finite statistics) is refitted or re-extracted, as a damaged one is: same numbers, no traceback."""
    import torch

    from lbfood.engine.io import load_tensors, read_metadata, save_tensors

    args = ("report", "--method", "react,mahalanobis", "--ood", "backdrops-noise", *CPU)
    clean(invoke(*args, "--output", tmp_path / "a.json"))
    before = json.loads((tmp_path / "a.json").read_text())

    def rewrite(path, change):
        meta, tensors = read_metadata(path), load_tensors(path)
        change(tensors)
        save_tensors(path, tensors, metadata=meta)

    (react,) = run.glob("scorers/react*.safetensors")
    (maha,) = run.glob("scorers/mahalanobis*.safetensors")
    rewrite(react, lambda d: d.update(weight=torch.ones(3, 7)))  # another model's head
    rewrite(maha, lambda d: d["precision"].fill_(float("nan")))
    (cache,) = run.glob("cache/*backdrops-noise*.safetensors")
    rewrite(cache, lambda d: d.update(features=d["features"][:, :7].contiguous()))
    r = invoke(*args, "--output", tmp_path / "b.json")
    clean(r)
    assert r.exit_code == 0, r.output
    after = json.loads((tmp_path / "b.json").read_text())
    assert after["fits"] == 2 and after["extractions"] == 1  # both scorers refitted, the noise split re-extracted
    assert after["runs"][0]["metrics"] == before["runs"][0]["metrics"]


def test_score_on_a_read_only_run_uses_the_threshold_without_storing_it(run, tmp_path, read_only):
    fd.write_flat_folder(tmp_path / "imgs", n=2)
    read_only(run)
    before = tree(tmp_path)
    r = invoke("score", tmp_path / "imgs", "--method", "energy", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0, r.output
    rows = score_rows(r)
    assert [Path(x["file"]).name for x in rows] == ["img_000.png", "img_001.png"]
    assert all(x["error"] is None and math.isfinite(x["threshold"]) for x in rows)
    assert "note: could not save to" in r.stderr and "permission denied" in r.stderr
    assert tree(tmp_path) == before


def test_report_output_in_a_read_only_folder_is_one_line(run, tmp_path, read_only):
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", "--output", tmp_path / "ro" / "r.md", *CPU)
    one_error_line(r, f"cannot write {tmp_path / 'ro' / 'r.md'}: permission denied", f"make {tmp_path / 'ro'} writable")
    assert list((tmp_path / "ro").iterdir()) == []
    # A folder still to be made under it: the advice names the folder that exists and refused.
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", "--output", tmp_path / "ro" / "a" / "r.md",
               *CPU)
    one_error_line(r, "permission denied", f"make {tmp_path / 'ro'} writable")


def test_a_done_run_without_weights_says_to_put_them_back(run, tmp_path):
    (run / "model.safetensors").unlink()
    one_error_line(invoke("report", "--model", run, *CPU), "has no model.safetensors (status: done)",
                   "put model.safetensors back, or re-run the training")


def test_pretrain_into_a_read_only_folder_is_one_line(tmp_path, small_backdrops, monkeypatch, read_only):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")
    before = tree(tmp_path)
    r = invoke("pretrain", *TINY, "--limit", "8", "--out", tmp_path / "ro" / "run")
    one_error_line(r, f"cannot use {tmp_path / 'ro' / 'run'}: permission denied", f"make {tmp_path / 'ro'} writable")
    assert tree(tmp_path) == before


def test_full_disk_report_notes_cache_and_refuses_output(run, tmp_path, full_disk):
    before = tree(tmp_path)
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert "(no space left on the device (or over quota))" in " ".join(r.output.split())
    assert "backdrops-noise" in r.output  # the table was printed
    # the cache folder may now exist (mkdir needs no space), but holds no file and no temp file
    assert temp_files(tmp_path) == [] and list((run / "cache").iterdir()) == []
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", "--output", tmp_path / "r.md", *CPU)
    one_error_line(r, f"cannot write {tmp_path / 'r.md'}: no space left on the device", "free some space")
    assert not (tmp_path / "r.md").exists() and temp_files(tmp_path) == []
    (run / "cache").rmdir()
    assert tree(tmp_path) == before


def test_full_disk_keeps_the_old_file(tmp_path, full_disk):
    target = tmp_path / "keep.json"
    target.write_bytes(b"old")
    with pytest.raises(StorageError, match="no space left") as e:
        atomic_write_bytes(target, b"new contents")
    assert e.value.path == str(target) and e.value.exit_code == 2
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


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


# ---- 10. folders with symbolic links to themselves ------------------------------------------------


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


def test_walk_lists_each_real_file_once(tmp_path):
    f = _looping_folder(tmp_path)
    os.mkfifo(f / "pipe.png")
    names = ["f/img_000.png", "f/img_001.png", "f/img_002.png"]
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    with deadline(20):
        assert rel(walk_files(f)) == names
        assert rel(walk_files(tmp_path)) == names  # the direct path wins over g/'s links
        assert rel(glob_files(f"{f}/**/*.png")) == names
        assert rel(glob_files(f"{tmp_path}/*/**")) == names
        assert rel(walk_files(f, recursive=False)) == names


def test_score_a_folder_with_self_links_once_per_image(run, tmp_path):
    f = _looping_folder(tmp_path)
    before = tree(tmp_path)
    with deadline(60):
        r = invoke("score", f, f"{f}/**/*.png", f / "self" / "img_002.png", "--method", "energy",
                   "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")  # nothing to fit: no write
    clean(r)
    assert r.exit_code == 0, r.output
    assert [x["file"] for x in score_rows(r)] == [str(f / f"img_00{i}.png") for i in range(3)]
    assert tree(tmp_path) == before


def test_report_ood_folder_with_self_links(run, tmp_path):
    f = _looping_folder(tmp_path)
    with deadline(60):
        r = invoke("report", "--method", "energy", "--ood", f"folder:{f}", "--output", tmp_path / "r.json", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["num_images"][f"folder:{f}"] == 3


def test_imagefolder_self_links_load_each_image_once(tmp_path):
    root = tmp_path / "d"
    fd.write_image_folder(root / "train", ["a", "b"], 4)
    fd.write_image_folder(root / "test", ["a", "b"], 2)
    for c in ("a", "b"):
        (root / "train" / c / "self").symlink_to(".")
        (root / "test" / c / "loop").symlink_to("..")
    (root / "train" / "loop").symlink_to(".")  # not a class: a link back up the tree
    opts = LoadOptions(root=tmp_path)
    with deadline(20):
        tr = data.get(f"imagefolder:{root}").load(opts, "train")
        te = data.get(f"imagefolder:{root}").load(opts, "test")
    assert tr.classes == ("a", "b") and tr.labels.tolist() == [0] * 4 + [1] * 4
    assert te.labels.tolist() == [0, 0, 1, 1]
    # the same as a pool with --val-split: 12 files in all, each in exactly one split
    pool = tmp_path / "pool"
    fd.write_image_folder(pool, ["a", "b"], 6)
    (pool / "loop").symlink_to(".")
    (pool / "a" / "self").symlink_to(".")
    opts = LoadOptions(root=tmp_path, val_split=0.5)
    tr = data.get(f"imagefolder:{pool}").load(opts, "train")
    te = data.get(f"imagefolder:{pool}").load(opts, "test")
    assert tr.classes == ("a", "b") and len(tr) == 6 and len(te) == 6


def test_imagefolder_link_from_train_into_test_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "d"
    fd.write_image_folder(root / "train", ["a", "b"], 3)
    fd.write_image_folder(root / "test", ["a", "b"], 1)
    (root / "train" / "a" / "peek").symlink_to("../../test/a")
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{root}", *TINY, "--out", tmp_path / "out")
    one_error_line(r, f"{root}/train/a/peek/img_000.png and {root}/test/a/img_000.png are the same file",
                   "both the train and the test split", "remove the link")
    assert tree(tmp_path) == before
    # a sibling class holding links to another class's files: one image, two labels
    (root / "train" / "a" / "peek").unlink()
    (root / "train" / "b" / "copy.png").symlink_to("../a/img_000.png")
    r = invoke("pretrain", "--data", f"imagefolder:{root}", *TINY, "--out", tmp_path / "out")
    one_error_line(r, "are the same file", "in two classes")
    assert not (tmp_path / "out").exists()


# ---- 12. messages that say what is actually wrong -------------------------------------------------


@pytest.mark.parametrize("val_split", ["2", "-0.1", "1", "nan"])
def test_val_split_outside_0_1_is_one_line(tmp_path, monkeypatch, val_split):
    monkeypatch.chdir(tmp_path)
    fd.write_flat_folder(tmp_path / "flat", n=4)
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'flat'}", *TINY, "--val-split", val_split,
               "--out", tmp_path / "out")
    one_error_line(r, "--val-split must be a share between 0 and 1", f"got {float(val_split)}")
    assert tree(tmp_path) == before


def test_imagefolder_empty_or_flat_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    fd.write_flat_folder(tmp_path / "flat", n=4)
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'empty'}", *TINY)
    line = one_error_line(r, f"{tmp_path / 'empty'} is empty; expected")
    assert "has class folders" not in line and "--val-split (e.g." not in line
    for extra in ((), ("--val-split", "0.5")):
        r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'flat'}", *TINY, *extra)
        line = one_error_line(r, f"no class folders in {tmp_path / 'flat'}: its 4 image(s) lie directly in it",
                              "put each class in its own folder")
        assert "has class folders" not in line
    assert tree(tmp_path) == before


def test_score_dev_null_and_a_fifo_say_what_they_are(run, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "imgs").mkdir()
    fd.write_flat_folder(tmp_path / "imgs", n=1)
    os.mkfifo(tmp_path / "imgs" / "pipe.png")  # in a folder: not a file, skipped
    before = tree(tmp_path)
    with deadline(60):
        r = invoke("score", "/dev/null", tmp_path / "pipe.png", tmp_path / "imgs", f"{tmp_path}/imgs/*.png",
                   "--method", "energy", "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 1, r.output
    rows = score_rows(r)
    assert [(x["file"], x["error"]) for x in rows[:2]] == [
        ("/dev/null", "not a regular file (a character device); pass image files, folders or globs"),
        (str(tmp_path / "pipe.png"), "not a regular file (a named pipe); pass image files, folders or globs")]
    assert [x["file"] for x in rows[2:]] == [str(tmp_path / "imgs" / "img_000.png")] and rows[2]["error"] is None
    assert "file not found" not in r.output
    assert tree(tmp_path) == before


def test_decode_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    with deadline(10), pytest.raises(DataError, match=r"p\.png: not a regular file \(a named pipe\)"):
        decode(tmp_path / "p.png")
    with pytest.raises(DataError, match=r"d: not a regular file \(a folder\)"):
        (tmp_path / "d").mkdir()
        decode(tmp_path / "d")
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    with pytest.raises(DataError, match=r"dangling\.png: broken symbolic link"):
        decode(tmp_path / "dangling.png")


# ---- 13. file modes and image size ----------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_written_files_follow_the_umask(run, tmp_path):
    for mask, want in ((0o022, 0o644), (0o027, 0o640), (0o077, 0o600)):
        with umask(mask):
            atomic_write_bytes(tmp_path / f"w{mask:o}" / "f.bin", b"x")
        assert stat.S_IMODE((tmp_path / f"w{mask:o}" / "f.bin").stat().st_mode) == want
    assert stat.S_IMODE((run / "run.json").stat().st_mode) == 0o644  # made under the usual umask 022
    with umask(0o027):
        r = invoke("report", "--method", "react", "--ood", "backdrops-noise", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    written = [p for p in (*run.joinpath("cache").iterdir(), *run.joinpath("scorers").iterdir())]
    assert len(written) == 4  # features of test, noise and train; the fitted react
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o640}


def test_huge_image_is_refused_before_decoding(run, tmp_path):
    png_header(tmp_path / "huge.png", 12000, 12000)
    fd.write_flat_folder(tmp_path, n=1)
    before = tree(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke("score", tmp_path / "huge.png", tmp_path / "img_000.png", "--method", "energy",
                   "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 1, r.output
    huge, ok = score_rows(r)
    assert huge["error"] == ("image is 12000×12000 (144 megapixels), more than the 64 megapixels lbfood "
                             "decodes; shrink it, or raise the limit with LBFOOD_MAX_PIXELS=144000000")
    assert ok["error"] is None and MAX_PIXELS == 64_000_000
    assert "DecompressionBomb" not in r.output
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]
    assert tree(tmp_path) == before


def test_max_pixels_from_the_environment(run, tmp_path, monkeypatch):
    fd.write_flat_folder(tmp_path, n=1, size=(20, 20))
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "399")
    r = invoke("score", tmp_path / "img_000.png", "--method", "energy", "--threshold", "0", "--json",
               "--device", "cpu")
    clean(r)
    assert r.exit_code == 1 and "raise the limit with LBFOOD_MAX_PIXELS=400" in score_rows(r)[0]["error"]
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "400")
    assert decode(tmp_path / "img_000.png").shape == (20, 20, 3)
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "lots")
    r = invoke("score", tmp_path / "img_000.png", "--method", "energy", "--threshold", "0", "--device", "cpu")
    one_error_line(r, "LBFOOD_MAX_PIXELS must be a positive whole number of pixels, got 'lots'")
    with pytest.raises(ConfigError):
        decode(tmp_path / "img_000.png")


# ---- 16.3-5. kill at any moment: every state a crash leaves resumes to the uninterrupted run --------

KILL_RUN = ("--arch", "resnet18", "--width", "0.125", "--epochs", "2", "--batch-size", "16", "--limit", "32",
            "--seed", "3", "--device", "cpu", "-q")


class Killed(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in lbfood handles it."""


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


@pytest.fixture
def reference(tmp_path, small_backdrops, monkeypatch, kill_at):
    monkeypatch.chdir(tmp_path)
    kill_at(None)
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/ref")
    clean(r)
    assert r.exit_code == 0, r.output
    return tmp_path / "runs" / "ref"


# Every write step of a 2-epoch run: inside the first step of each epoch, after the train state (the
# commit), after model.safetensors, after the metrics line, after run.json, after "trained", after the
# threshold is computed, after runs/latest. (Inside epoch 1, before any commit: the subprocess test below.)
POINTS = ["state@1", "model@1", "metrics@1", "meta@1", "step@2", "state@2", "model@2", "metrics@2", "meta@2",
          "trained", "calibrated", "latest"]


@pytest.mark.parametrize("point", POINTS)
def test_killed_run_resumes_bit_for_bit(reference, tmp_path, kill_at, point):
    kill_at(point)
    with pytest.raises(Killed):
        invoke("pretrain", *KILL_RUN, "--out", "runs/k")
    run = tmp_path / "runs" / "k"
    assert json.loads((run / "run.json").read_text())["status"] != "done"
    if point != "latest":
        assert os.readlink(tmp_path / "runs" / "latest") == "ref"
    kill_at(None)
    r = invoke("pretrain", "--resume", "--out", run, "--epochs", "2", "--device", "cpu", "-q")
    clean(r)
    assert r.exit_code == 0, r.output
    if point in ("trained", "calibrated", "latest", "meta@2", "metrics@2", "model@2", "state@2"):
        assert squeezed("has trained all 2 epochs but was not calibrated; calibrating it now") in squeezed(r.output)
    assert_same_run(run, reference)
    assert os.readlink(tmp_path / "runs" / "latest") == "k"
    assert not temp_files(run)


def test_killed_in_the_first_epoch_advice_leads_to_a_finished_run(reference, tmp_path):
    """A real hard exit (os._exit, as SIGKILL, in a child process) in the first step: run.json but no epoch.
    `--resume` says to start afresh, and starting afresh into the same folder works (no circle): the same
    run as uninterrupted."""
    import subprocess
    import sys

    from lbfood.engine import killpoints

    boot = ("import sys; from lbfood.engine.data import backdrops; "
            "backdrops.SPLITS.update(train=200, test=100, scenes=100, novel=100, noise=100); "
            "from lbfood.cli import app; sys.argv[0] = 'lbfood'; app()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}

    def lbfood(*args, kill=None):
        e = {**env, killpoints.ENV: kill} if kill else env
        return subprocess.run([sys.executable, "-c", boot, *map(str, args)], env=e, capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)

    p = lbfood("pretrain", *KILL_RUN, "--out", "runs/k", kill="step@1")
    assert p.returncode == 137
    run = tmp_path / "runs" / "k"
    assert sorted(e.name for e in run.iterdir()) == [".lock", "run.json"]
    # the folder is now as SIGKILL left it; following the advice needs no separate process
    r = invoke("pretrain", "--resume", "--out", "runs/k", "--epochs", "2", "--device", "cpu", "-q")
    one_error_line(r, "error: runs/k holds no finished epoch (it stopped during its first), so there is nothing "
                      "to resume: run the same command without --resume, with --out runs/k (its files are replaced)")
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/k")
    clean(r)
    assert r.exit_code == 0, r.output
    assert_same_run(run, reference)


def test_a_folder_with_finished_epochs_is_not_started_over(reference, tmp_path):
    before = tree(reference)
    one_error_line(invoke("pretrain", *KILL_RUN, "--out", reference),
                   f"--out {reference} holds a run with finished epochs; continue it with --resume")
    assert tree(reference) == before


def test_resume_checks_weights_and_state_agree(reference, tmp_path):
    """model.safetensors one epoch behind its train state (killed between the two writes): resume rebuilds
    the weights from the train state, so no epoch is trained twice."""
    from lbfood.engine import checkpoint, runs
    from lbfood.engine.io import load_tensors, save_tensors

    state = load_tensors(reference / "train_state.safetensors")
    stale = {k: v * 0 for k, v in load_tensors(reference / "model.safetensors").items()}
    save_tensors(reference / "model.safetensors", stale, metadata={"epoch": "1"})
    runs.update(reference, epochs_done=1)
    assert checkpoint.recover(reference) == 2
    fixed = load_tensors(reference / "model.safetensors")
    assert all(fixed[k].equal(state["model." + k]) for k in fixed)
    assert runs.read(reference).epochs_done == 2


# ---- 16.6. two writers on one run folder ----------------------------------------------------------


def test_second_writer_fails_at_once(reference, tmp_path):
    from lbfood.engine import checkpoint

    with checkpoint.lock(tmp_path / "runs" / "busy"):  # a first `pretrain --out runs/busy` still training
        before = tree(tmp_path / "runs")
        one_error_line(invoke("pretrain", *KILL_RUN, "--out", "runs/busy"),
                       "runs/busy is being written by another lbfood command; wait for it to finish")
        assert tree(tmp_path / "runs") == before
    with checkpoint.lock(reference):
        before = tree(reference)
        one_error_line(invoke("pretrain", "--resume", "--out", reference, "--epochs", "3", "--device", "cpu"),
                       "is being written by another lbfood command")
        assert tree(reference) == before


# ---- 16.7. evaluating an unfinished run -----------------------------------------------------------


@pytest.mark.parametrize("status", ["running", "interrupted", "trained"])
def test_score_report_and_export_say_the_run_is_unfinished(run, tmp_path, status):
    from lbfood.engine import runs

    runs.update(run, status=status, config={**runs.read(run).config, "epochs": 4})
    img = tmp_path / "a.png"
    fd.write_png(img, fd.pattern(0, 32, 32))
    note = (f"run {run} is unfinished (status {status}, 1 of 4 epochs): these numbers are its epoch-1 weights; "
            f"finish it with `lbfood pretrain --resume --out {run}`")
    r = invoke("score", img, "--model", run, "--device", "cpu", "--json")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.stderr), r.output
    assert "threshold" not in runs.read(run).to_dict() and not runs.read(run).thresholds  # γ of moving weights
    r = invoke("report", "--model", run, "--ood", "backdrops-noise", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.output), r.output
    r = invoke("export", "--model", run, "--method", "energy", "--threshold", "1", "--out", tmp_path / "d.pt",
               "--format", "torchscript", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0 and squeezed(note) in squeezed(r.output), r.output


# ---- 16.8 and 14.8. bad numbers, a diverging loss, accuracy at chance ------------------------------


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--momentum", "nan"),
                                        ("--gamma", "nan"), ("--weight-decay", "-1"), ("--jitter", "nan"),
                                        ("--width", "nan"), ("--warmup-epochs", "-1")])
def test_pretrain_refuses_bad_numbers(tmp_path, small_backdrops, monkeypatch, flag, value):
    monkeypatch.chdir(tmp_path)
    args = [a for a in TINY if a not in ("--width", "0.125")] if flag == "--width" else list(TINY)
    one_error_line(invoke("pretrain", *args, flag, value, "--out", "r"), flag)
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag,value", [("--lambda", "inf"), ("--lambda", "nan"), ("--mu", "nan"),
                                        ("--mu", "inf"), ("--lr", "nan")])
def test_finetune_refuses_bad_numbers(run, tmp_path, flag, value):
    one_error_line(invoke("finetune", "--from", run, flag, value, "--device", "cpu", "--limit", "8",
                          "--out", "f"), flag)
    assert not (tmp_path / "f").exists()


def test_diverging_loss_stops_with_the_fix(tmp_path, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("pretrain", *TINY, "--limit", "32", "--lr", "1e6", "--out", "runs/d")
    line = last_error_line(r, "training diverged: ", "at epoch 1, step ", "the learning rate (--lr 1e+06) is likely too "
                          "high: try --lr 100000 or a linear warm-up (--warmup-epochs 5) (in a new run)")
    assert "ce is nan" in line or "ce is inf" in line
    assert not (tmp_path / "runs" / "d").exists() and not (tmp_path / "runs" / "latest").exists()


def test_at_chance_after_three_epochs_stops_or_warns(tmp_path, small_backdrops, monkeypatch):
    from lbfood.engine.training import guards

    monkeypatch.setattr(guards, "CHANCE_MIN_STEPS", 6)  # 3 epochs of 2 steps: judged at epoch 3
    monkeypatch.chdir(tmp_path)
    args = ("--arch", "resnet18", "--width", "0.125", "--epochs", "3", "--batch-size", "16", "--limit", "32",
            "--lr", "1e-9", "--device", "cpu", "-q")
    r = invoke("pretrain", *args, "--out", "runs/c")
    last_error_line(r, "test accuracy is 9.4% after 3 epochs (6 steps), still at chance (10.0% for 10 classes): "
                   "the model is not learning", "try --lr 1e-10 or a linear warm-up (--warmup-epochs 5)",
                   "(--no-stop-at-chance trains on)")
    meta = json.loads((tmp_path / "runs" / "c" / "run.json").read_text())
    assert (meta["status"], meta["epochs_done"]) == ("stopped", 3)
    assert not (tmp_path / "runs" / "latest").exists()
    r = invoke("pretrain", *args, "--out", "runs/w", "--no-stop-at-chance")
    clean(r)
    assert r.exit_code == 0 and "still at chance" in r.output
    assert json.loads((tmp_path / "runs" / "w" / "run.json").read_text())["status"] == "done"


def test_chance_rule_and_default_warmup():
    from lbfood.engine.config import CHANCE_MIN_STEPS, TrainConfig
    from lbfood.engine.training import guards

    assert CHANCE_MIN_STEPS == 200
    assert [guards.chance_epoch(n, 1000) for n in (1, 3, 10, 15, 16, 100)] == [3, 3, 3, 3, 4, 20]
    # Few steps an epoch: judged only once 200 steps are done (8 steps an epoch: after 25 epochs, not 3).
    assert guards.chance_epoch(3, 8) == 25 and guards.chance_epoch(100, 8) == 25 and guards.chance_epoch(100, 1) == 200
    cfg = TrainConfig(epochs=10, lr=0.1)
    assert guards.at_chance(0.14, 10, cfg, 3, 100, 32) is not None  # 1.5 / 10 = 0.15
    assert guards.at_chance(0.15, 10, cfg, 3, 100, 32) is None
    assert guards.at_chance(0.10, 10, cfg, 2, 100, 32) is None and guards.at_chance(0.10, 10, cfg, 4, 100, 32) is None
    assert guards.at_chance(0.10, 10, cfg, 3, 8, 32) is None  # 24 steps: too early to judge
    assert "--init" in guards.at_chance(0.1, 10, cfg, 3, 100, 224)
    assert "--init" not in guards.at_chance(0.1, 10, cfg, 3, 100, 32)
    assert guards.at_chance(0.1, 10, cfg, 3, 100, 32, "validation").startswith(
        "validation accuracy is 10.0% after 3 epochs (300 steps)")
    assert TrainConfig(epochs=20).resolve(224).warmup_epochs == 5
    assert TrainConfig(epochs=3).resolve(224).warmup_epochs == 2
    assert TrainConfig(epochs=20).resolve(32).warmup_epochs == 0
    assert TrainConfig(epochs=20, warmup_epochs=0).resolve(224).warmup_epochs == 0


def test_one_class_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        fd.write_image_folder(tmp_path / "one" / split, ["cat"], n_per_class=4)
    one_error_line(invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'one'}", *TINY, "--out", "r"),
                   "has 1 class (cat); a classifier needs at least 2 classes")


# ---- 16.9 (run.json). a damaged run description: one line in report, score and finetune ------------


@pytest.mark.parametrize("change,needle", [
    ({"classes": 7}, "classes must be a non-empty list of class names, got 7"),
    ({"width": "abc"}, "width must be a finite number > 0, got 'abc'"),
    ({"width": float("nan")}, "width must be a finite number > 0, got nan"),
    ({"input_size": None}, "lacks input_size"), ({"mean": None}, "lacks mean"), ({"std": None}, "lacks std"),
    ({"data": None}, "lacks data")])
def test_damaged_run_json_is_one_line(run, tmp_path, change, needle):
    meta = json.loads((run / "run.json").read_text())
    for k, v in change.items():
        if v is None:
            del meta[k]
        else:
            meta[k] = v
    (run / "run.json").write_text(json.dumps(meta))  # json writes NaN for nan, as an editor might
    img = tmp_path / "a.png"
    fd.write_png(img, fd.pattern(0, 32, 32))
    before = tree(tmp_path)
    for args in (("report", "--model", run), ("score", img, "--model", run),
                 ("finetune", "--from", run, "--out", tmp_path / "f")):
        one_error_line(invoke(*args, "--device", "cpu"), f"{run / 'run.json'}", needle, "re-run the training")
    assert tree(tmp_path) == before


# ---- 16.11. flags that --resume ignores ------------------------------------------------------------


def test_resume_names_the_flags_it_ignores(reference, tmp_path):
    assert json.loads((reference / "run.json").read_text())["config"]["warmup_epochs"] == 0  # resolved, recorded
    r = invoke("pretrain", "--resume", "--out", reference, "--epochs", "2", "--lr", "0.5", "--batch-size", "64",
               "--seed", "99", "--device", "cpu", "-q")
    clean(r)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert lines[0] == ("warning: --resume continues the run with the settings in its run.json; ignored: --batch-size, "
                        "--lr, --seed (only --epochs, --device, --precision and --workers change on resume)")
    assert r.exit_code == 2 and lines[1].startswith("error: ") and "already finished 2 epoch(s)" in lines[1]
    r = invoke("pretrain", "--resume", "--out", reference, "--epochs", "2", "--device", "cpu", "-q")
    assert "warning" not in r.output


def test_finetune_killed_in_calibration_is_finished_by_resume(reference, tmp_path, kill_at):
    """Cases 4 and 11 for `finetune`: killed after its last epoch, `--resume` calibrates it (no training),
    names the flag it ignores, and the run equals the uninterrupted one."""
    ft = ("--from", reference, "--epochs", "2", "--batch-size", "16", "--limit", "32", "--mu", "1", "--device", "cpu",
          "-q")
    r = invoke("finetune", *ft, "--out", "runs/fref")
    clean(r)
    assert r.exit_code == 0, r.output
    kill_at("calibrated")
    with pytest.raises(Killed):
        invoke("finetune", *ft, "--out", "runs/fk")
    kill_at(None)
    assert json.loads((tmp_path / "runs" / "fk" / "run.json").read_text())["status"] == "trained"
    r = invoke("finetune", "--resume", "--out", "runs/fk", "--lr", "0.5", "--device", "cpu", "-q")
    clean(r)
    assert r.exit_code == 0, r.output
    assert squeezed("ignored: --lr (only --epochs") in squeezed(r.output)
    assert squeezed("calibrating it now") in squeezed(r.output) and "epoch   1" not in r.output
    assert_same_run(tmp_path / "runs" / "fk", tmp_path / "runs" / "fref")
    assert os.readlink(tmp_path / "runs" / "latest") == "fk"


def test_starting_over_never_removes_what_is_not_an_abandoned_run(tmp_path, small_backdrops, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, text in (("run.json", '{"name": "my own run.json"}'), ("metrics.jsonl", "{}\n"),
                       (".notes.tmp", "mine")):
        (tmp_path / name.replace(".", "_")).mkdir()
        (tmp_path / name.replace(".", "_") / name).write_text(text)
        before = tree(tmp_path)
        one_error_line(invoke("pretrain", *TINY, "--limit", "8", "--out", name.replace(".", "_")),
                       "already exists and is not empty; pick a new folder")
        assert tree(tmp_path) == before


def test_ctrl_c_during_calibration_says_resume_and_resume_finishes(reference, tmp_path, kill_at, monkeypatch):
    from lbfood.engine import killpoints

    def ctrl_c():
        raise KeyboardInterrupt

    kill_at("calibrated")
    monkeypatch.setattr(killpoints, "die", ctrl_c)
    r = invoke("pretrain", *KILL_RUN, "--out", "runs/c")
    clean(r)
    assert r.exit_code == 130 and squeezed("interrupted after 2 epoch(s); continue with --resume --out runs/c") \
        in squeezed(r.output), r.output
    assert json.loads((tmp_path / "runs" / "c" / "run.json").read_text())["status"] == "trained"
    kill_at(None)
    r = invoke("pretrain", "--resume", "--out", "runs/c", "--epochs", "2", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert_same_run(tmp_path / "runs" / "c", reference)
