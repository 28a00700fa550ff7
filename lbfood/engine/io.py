"""Safe, atomic file writes: a temp file in the same folder, fsync, then rename.

A crash or Ctrl-C mid-write leaves the old file (or nothing), never a half-written one.
Files get the permissions the user's umask gives new files (0644 under the usual umask 022), as
`open()` would; a write that fails (no permission, read-only file system, full disk) removes its temp
file, leaves the old file as it was, and raises StorageError naming the file and what to do.
Tensors are stored as safetensors; loading never unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lbfood.engine.errors import StorageError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
FULL_DISK = "no space left on the device (or over quota)"  # a StorageError's `reason` for those
# The errors that come from the user's folders and disks, not from lbfood.
STORAGE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, *_FULL)


def storage_error(path: str | os.PathLike, e: OSError, verb: str = "write") -> StorageError:
    """An OSError from writing (or, with `verb`, otherwise using) `path` as a one-line StorageError
    that says what to do."""
    path = Path(path)
    # the folder that refused: the parent of what failed (the file, its temp file, or a folder to create)
    folder = Path(e.filename).parent if isinstance(e.filename, str) and e.filename else path.parent
    folder = next((p for p in (folder, *folder.parents) if p.exists()), folder)  # one that exists
    if e.errno in (errno.EACCES, errno.EPERM):
        reason, todo = "permission denied", f"make {folder} writable, or choose another folder"
    elif e.errno == errno.EROFS:
        reason, todo = "read-only file system", "choose a folder on a writable disk"
    elif e.errno == errno.ENOTDIR:  # `--out notes.txt/run`
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), folder)
        reason, todo = f"{blocker} is a file, not a folder", "pass another path"
    elif e.errno in _FULL:
        reason, todo = FULL_DISK, "free some space and run it again"
    else:
        reason, todo = e.strerror or str(e), f"check {folder} and run it again"
    return StorageError(f"cannot {verb} {path}: {reason}; {todo}", path=str(path), reason=reason)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temp file beside `path`. Created with mode 0o666 and no chmod, so the kernel applies
    the umask (and any default ACL) exactly as for any new file; mkstemp would force 0600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(path.parent))


LOCK_FILE = ".lock"  # the lock file of a folder lbfood writes (a run's, a sweep's)


def folder_lock(folder: str | os.PathLike, *, busy: str | None = None):
    """Hold an exclusive lock on FOLDER/.lock (the folder is created if missing); see `file_lock`."""
    return file_lock(Path(folder) / LOCK_FILE, busy=busy)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive `flock` on the file `path` (created, with its folder, if missing) for the block.

    With `busy` (a message), a second holder fails at once with a RunError saying it; without, it waits its
    turn. The kernel releases the lock when the process dies, so a killed holder never leaves it held."""
    from lbfood.engine.errors import RunError

    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except (FileExistsError, NotADirectoryError):  # a file stands where the folder (or one above it) should be
        parent = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        raise StorageError(f"cannot use {folder}: {parent} is a file, not a folder; pass another path",
                           path=str(folder), reason="parent is a file") from None
    except OSError as e:
        raise storage_error(folder, e, verb="use") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
    except BlockingIOError:
        os.close(fd)
        raise RunError(busy) from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def is_locked(path: str | os.PathLike) -> bool:
    """Does a live process hold the lock on the file `path` (`file_lock`)? False if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False  # no lock file: nobody ever wrote it, or it was removed
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if it was taken


def check_target(path: str | os.PathLike) -> None:
    """Raise StorageError if `path` cannot take a file written by `atomic_write_bytes`: a folder, a device,
    a FIFO or a socket is there (a rename would replace it with a file), or a file stands where a folder
    of its path should be. Commands call it before any work; the write checks again."""
    path = Path(path)
    if path.is_dir():
        raise StorageError(f"cannot write {path}: it is a folder; pass a file name (e.g. {path / 'out'}...)",
                           path=str(path), reason="is a folder")
    if path.exists() and not path.is_file():
        raise StorageError(f"cannot write {path}: it is not a regular file (a device, FIFO or socket); pass "
                           "another path", path=str(path), reason="not a regular file")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise StorageError(f"cannot write {path}: {parent} is a file, not a folder; pass another path",
                           path=str(path), reason="parent is a file")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename, so a reader never sees half a file."""
    path = Path(path)
    check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise storage_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder became unwritable: the original error is the one to report
        if isinstance(e, OSError):
            raise storage_error(path, e) from None
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a dict of tensors as safetensors, atomically (tensors are made contiguous CPU copies)."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=metadata))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle involved)."""
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def read_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """A safetensors file's string metadata (header only); None for a damaged or foreign file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - a damaged or foreign file is a cache miss, not an error
        return None


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a line is written in one call, so a crash never leaves half a line)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
    except OSError as e:
        raise storage_error(path, e) from None
