"""The files a user names for `score`: files, folders and globs, expanded in order, each real file once."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from lbfood.engine.data.walk import Key, glob_files, identity, special_kind, walk_files


def expand_paths(paths: Sequence[str]) -> list[tuple[str, str | None]]:
    """(file, error) pairs for files, folders (every non-hidden regular file, recursively, links
    followed once) and globs, in the order given; a file reached twice (the same path, or another link
    to it) is listed once. A path that names nothing, or names a pipe or device, becomes an error entry."""
    out: dict[str, str | None] = {}
    seen: set[Key] = set()

    def add(f: Path) -> None:
        key = identity(f)
        if key not in seen:
            seen.add(key)
            out.setdefault(str(f), None)

    for p in paths:
        path = Path(p).expanduser()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            out.setdefault(p, f"cannot read ({e.strerror})")
            continue
        if st is None:
            if glob.has_magic(p):
                matches = glob_files(os.path.expanduser(p))
                if not matches:
                    out.setdefault(p, "no file matches this pattern")
                for f in matches:
                    add(f)
            else:
                out.setdefault(p, "broken symbolic link" if path.is_symlink() else "file not found")
            continue
        kind = special_kind(st)
        if kind is None:
            add(path)
        elif kind == "a folder":
            files = walk_files(path)
            if not files:
                out.setdefault(str(path), "empty folder: no files to score")
            for f in files:
                add(f)
        else:
            out.setdefault(str(path), f"not a regular file ({kind}); pass image files, folders or globs")
    return list(out.items())
