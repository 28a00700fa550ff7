"""Atomic writes (engine/io.py): full disks keep the old file, files follow the umask."""

from __future__ import annotations

import stat

import pytest
from cli_checks import clean, one_error_line
from hostile_checks import (
    CPU,
    invoke,
    umask,
)

from lbfood.engine.errors import StorageError
from lbfood.engine.io import atomic_write_bytes


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


def test_full_disk_keeps_the_old_file(tmp_path, full_disk):
    target = tmp_path / "keep.json"
    target.write_bytes(b"old")
    with pytest.raises(StorageError, match="no space left") as e:
        atomic_write_bytes(target, b"new contents")
    assert e.value.path == str(target) and e.value.exit_code == 2
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


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
