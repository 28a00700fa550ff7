"""The one way lbfood walks folders: every real directory once, every real file once.

Symbolic links are followed (a dataset may link its images in from elsewhere), but a directory is
entered once per (device, inode), and never one that holds the starting folder (a link back up the
tree is a cycle, and would walk the starting folder's siblings), so a link to itself or a link cycle
ends the walk instead of repeating it forever; and a file is listed once however many links and hard
links lead to it.
Hidden entries (names starting with ".", e.g. macOS `._name.jpg` resource forks) are skipped, and so
is everything that is not a regular file (named pipes, devices, sockets, broken links).
When a file or folder is reachable both directly and through a link, the direct path is the one
listed; among several paths of one kind, the first in sort order. Results are sorted by path.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

Key = tuple[int, int] | str


def identity(path: str | os.PathLike, st: os.stat_result | None = None) -> Key:
    """What makes a file or folder itself: (device, inode) after following links. File systems that
    report inode 0 (some network and FUSE mounts) fall back to the resolved real path."""
    st = st or os.stat(path)
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


def special_kind(st: os.stat_result) -> str | None:
    """None for a regular file, else what it is instead ("a folder", "a named pipe", ...)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"


def _entries(folder: Path) -> Iterator[tuple[Path, bool, os.stat_result]]:
    """(path, is a symbolic link, stat after following links) of `folder`'s non-hidden entries, sorted
    by name; unreadable folders and broken links give nothing (as os.walk ignores them)."""
    try:
        with os.scandir(folder) as it:
            names = sorted((e.name, e.is_symlink()) for e in it if not e.name.startswith("."))
    except OSError:
        return
    for name, is_link in names:
        path = folder / name
        try:
            yield path, is_link, os.stat(path)
        except OSError:
            continue


def walk_keyed(folder: str | os.PathLike, *, recursive: bool = True,
               keep: Callable[[str], bool] | None = None) -> dict[Key, Path]:
    """identity -> path of each regular file under `folder` whose name passes `keep` (see the module).

    Plain entries are classified from the directory listing itself (type and inode, no stat call);
    only links and folders are stat-ed, so the walk costs little more than os.walk.
    """
    root = Path(folder)
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return {}
        seen = _above(root)
    except OSError:
        return {}
    best: dict[Key, tuple[bool, str]] = {}
    direct, linked = [str(root)], []  # folders reached without a link are all walked before linked ones
    while direct or linked:
        here = direct.pop() if direct else linked.pop(0)
        try:
            st = os.stat(here)
            key = identity(here, st)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(here) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError:
            continue  # unreadable or gone: skipped, as os.walk does
        via_link = []
        for e in entries:
            try:
                if e.is_symlink():
                    target = os.stat(e.path)
                    if stat.S_ISDIR(target.st_mode):
                        if recursive:
                            via_link.append(e.path)
                        continue
                    if not stat.S_ISREG(target.st_mode) or (keep is not None and not keep(e.name)):
                        continue
                    fkey, rank = identity(e.path, target), (True, e.path)
                elif e.is_dir(follow_symlinks=False):
                    if recursive:
                        direct.append(e.path)
                    continue
                elif e.is_file(follow_symlinks=False) and (keep is None or keep(e.name)):
                    # a plain entry lives on its folder's device (a mount point is a folder)
                    fkey, rank = ((st.st_dev, e.inode()) if e.inode() else os.path.realpath(e.path)), (False, e.path)
                else:
                    continue
            except OSError:
                continue  # a broken link, or an entry that vanished
            if fkey not in best or rank < best[fkey]:
                best[fkey] = rank
        linked.extend(sorted(via_link))  # which link reaches a folder first decides the paths shown
    return {k: Path(path) for k, (_, path) in best.items()}


def _above(folder: Path) -> set[Key]:
    """The identities of the folders that hold `folder` (its real parents), never to be entered."""
    return {identity(p) for p in folder.resolve().parents}


def walk_files(folder: str | os.PathLike, *, recursive: bool = True,
               keep: Callable[[str], bool] | None = None) -> list[Path]:
    """The regular files under `folder` (see the module), sorted by path."""
    return sorted(walk_keyed(folder, recursive=recursive, keep=keep).values(), key=str)


def subfolders(folder: str | os.PathLike) -> list[Path]:
    """`folder`'s non-hidden subfolders (links followed), sorted by name; each real folder once, and
    never one that is `folder` itself or contains it (a link back up the tree is a cycle, not a child)."""
    return sorted(_subfolders(folder)[0], key=lambda p: p.name)


def aliased_subfolders(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(link, the subfolder it reaches) for each subfolder of `folder` that `subfolders` leaves out
    because another entry already is that folder (`train/kitty -> cat`); up-tree links are not listed."""
    return _subfolders(folder)[1]


def _subfolders(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, Path]]]:
    folder = Path(folder)
    try:
        up = {identity(folder), *_above(folder)}
    except OSError:
        return [], []
    # direct subfolders claim their identity before links to them
    dirs = sorted((is_link, path, identity(path, st)) for path, is_link, st in _entries(folder)
                  if stat.S_ISDIR(st.st_mode))
    out, aliases, owner = [], [], {}
    for _, path, key in dirs:
        if key in up:
            continue
        if key in owner:
            aliases.append((path, owner[key]))
            continue
        owner[key] = path
        out.append(path)
    return out, aliases


def _match(parts: Sequence[str], names: Sequence[str]) -> bool:
    """Whether path components `names` match pattern components `parts` (`**` = any number of folders)."""
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_match(parts[1:], names[i:]) for i in range(len(names) + 1))
    return bool(names) and fnmatch.fnmatchcase(names[0], parts[0]) and _match(parts[1:], names[1:])


def glob_files(pattern: str) -> list[Path]:
    """The regular files a glob names, sorted, each real file once: a match that is a folder stands
    for every file under it. `**` (any number of folders) walks with `walk_keyed`, so it cannot loop."""
    parts = Path(pattern).parts
    if "**" not in parts:
        found: dict[Key, Path] = {}
        for m in sorted(glob.glob(pattern)):
            mp = Path(m)
            if mp.is_dir():
                for k, f in walk_keyed(mp).items():
                    found.setdefault(k, f)
            elif mp.is_file():
                found.setdefault(identity(mp), mp)
        return sorted(found.values(), key=str)
    cut = parts.index("**")
    head, rest = parts[:cut], parts[cut:]
    heads = [Path(*head)] if head else [Path(".")]
    if head and glob.has_magic(str(Path(*head))):
        heads = [Path(m) for m in sorted(glob.glob(str(Path(*head))))]
    found = {}
    for base in heads:
        for k, f in walk_keyed(base).items():
            names = f.relative_to(base).parts
            # a file matches, or lies under a folder that matches
            if any(_match(rest, names[:i]) for i in range(len(names), 0, -1)):
                found.setdefault(k, f)
    return sorted(found.values(), key=str)
