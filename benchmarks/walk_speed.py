"""Listing a folder of images: lbfood's walker (each real folder and file once, links followed safely)
against the plain `os.walk(followlinks=True)` listing it replaced (issue 16), on a generated tree.

Prints both times and the ratio walker / os.walk (the cost of stat-ing each entry to know its identity).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from lbfood.engine.data.images import is_image_name, list_images


def os_walk_listing(folder: Path) -> list[Path]:
    """What `list_images` did before: follows every link, no identity checks (loops forever on a cycle)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if is_image_name(f))
    return sorted(found, key=str)


def best_of(fn, folder: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(folder)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--files", type=int, default=20000, help="image files in the tree")
    p.add_argument("--folders", type=int, default=100, help="class folders they are spread over")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.files):
            d = root / f"class_{i % args.folders:03d}"
            d.mkdir(exist_ok=True)
            (d / f"img_{i:06d}.jpg").touch()
        assert list_images(root) == os_walk_listing(root)
        old = best_of(os_walk_listing, root, args.repeats)
        new = best_of(list_images, root, args.repeats)
    print(f"{args.files} files in {args.folders} folders (median of {args.repeats}, warm cache): "
          f"os.walk {old * 1000:.0f} ms, lbfood walker {new * 1000:.0f} ms, ratio {new / old:.2f}")


if __name__ == "__main__":
    main()
