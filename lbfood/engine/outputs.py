"""Where lbfood may write what a user asked for (a report, a detector, pictures): the one pre-check of an
output path, made before any work, and the mark of the folders lbfood writes pictures into.

The rule (STYLE.md 18): lbfood never replaces a file it did not write.
- An output *file* (`report --output`, `export --out`) may be new, or an existing regular file that the
  command recognises as its own earlier output (`ours`: a report lbfood wrote, a detector lbfood
  exported); a symlink, a folder, a device, a path under a file, a path inside a run folder (lbfood owns
  those) or a folder that cannot be written is refused.
- An output *folder* (`explain --out`, `report --plots`, `lbfood pictures`) may be new, empty, or one that
  lbfood marked as its own (`.lbfood-output`, written when lbfood first writes there); a folder holding
  anything else is refused, so a user's `index.html` or PNGs are never replaced.
Each refusal is one ConfigError/StorageError line naming the path and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lbfood.engine.errors import ConfigError
from lbfood.engine.io import atomic_write_bytes, check_target, storage_error

MARK = ".lbfood-output"  # in every folder of pictures lbfood writes: lbfood may replace the files in it
_MARK_TEXT = b"lbfood writes this folder (pictures, index.html); it replaces them when run again here\n"


def check_file(path: str | os.PathLike, option: str, *, ours: Callable[[Path], bool] | None = None,
               what: str = "the output") -> Path:
    """Refuse, before any work, an output file lbfood must not write (see the module docstring); returns the
    absolute path. `ours(path)` says whether an existing file is lbfood's own earlier output."""
    target = Path(path).expanduser().absolute()
    _not_in_run(target, option, path, what)
    if target.is_symlink():
        raise ConfigError(f"{option} {path} is a symbolic link; lbfood does not write through links: pass the "
                          "file it points to, or another name")
    check_target(target)  # a folder, a device or FIFO, a path under a file
    if target.exists() and not (ours is not None and ours(target)):
        raise ConfigError(f"{option} {path} already exists and lbfood did not write it; remove it or pass "
                          "another name (lbfood replaces only its own earlier output)")
    _writable(next((p for p in (target.parent, *target.parent.parents) if p.exists()), target.parent), target)
    return target


def check_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder lbfood must not write into (see the module docstring)."""
    p = Path(path).expanduser()
    target = p.absolute()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file, not a folder; pass a folder")
    if p.is_symlink():
        raise ConfigError(f"{option} {p} is a symbolic link; pass the folder it points to, or a new folder")
    _not_in_run(target, option, path, "the pictures")
    probe = next((q for q in (p, *p.parents) if q.exists()), p)
    if not probe.is_dir():
        raise ConfigError(f"{option} {p}: {probe} is a file, not a folder; pass another folder")
    if p.is_dir() and any(p.iterdir()) and not (p / MARK).is_file():
        raise ConfigError(f"{option} {p} already holds files that lbfood did not write; pass a new or empty "
                          "folder (lbfood writes only into folders it made)")
    _writable(probe, target)
    return p


def claim_dir(path: str | os.PathLike) -> Path:
    """Create the folder if needed and mark it as lbfood's (call once `check_dir` passed, before writing)."""
    p = Path(path)
    if not (p / MARK).is_file():
        atomic_write_bytes(p / MARK, _MARK_TEXT)
    return p


def _not_in_run(target: Path, option: str, given, what: str) -> None:
    from lbfood.engine import runs

    if (folder := runs.enclosing_run(target)) is not None or runs.is_run(target):
        raise ConfigError(f"{option} {given} is inside the run folder {folder or target}; lbfood owns that "
                          f"folder: write {what} elsewhere")


def _writable(folder: Path, target: Path) -> None:
    """Write and remove one flushed byte in `folder`: a read-only or full disk shows now, not after the work."""
    probe = folder / f".lbfood-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as e:
        e.filename = str(target)  # the message names the output, and its folder as the one to fix
        raise storage_error(target, e) from None
