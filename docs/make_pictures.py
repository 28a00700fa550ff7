"""Regenerate the README's pictures from a finished `lbfood demo`: `make pictures` runs this.

    python docs/make_pictures.py RUNS [DOCS]

RUNS is the demo folder (pretrained/, ce-only/, lff/); its pictures are redrawn into RUNS/pictures
(features and fitted scorers come from the runs' caches) and two of them are copied into DOCS
(default: this folder): the Fig. 5 norm distributions and one Fig. 7 explain figure.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lbfood.output import plots

# The explain figure shown in the README: the second backdrops test image (a triangle), where the
# norms of all three runs are compared on one colour scale.
EXPLAIN = "002-backdrops-1.png"
COPIES = {"norms.png": "fig5-norms.png", f"explain/{EXPLAIN}": "fig7-explain.png"}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    runs = Path(argv[1])
    docs = Path(argv[2]) if len(argv) == 3 else Path(__file__).resolve().parent
    out = runs / "pictures"
    plots.check_out_dir(out)
    plots.demo_pictures([runs / "pretrained", runs / "ce-only", runs / "lff"], out)
    for src, dst in COPIES.items():
        shutil.copyfile(out / src, docs / dst)
        print(f"{docs / dst} <- {out / src}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
