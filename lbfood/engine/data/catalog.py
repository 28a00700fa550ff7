"""What data is where: one row per registered dataset, for the `lbfood datasets` command."""

from __future__ import annotations

from pathlib import Path

from lbfood.engine.data import specs
from lbfood.engine.data.base import LoadOptions
from lbfood.engine.errors import LbfoodError


def describe(root: Path) -> list[dict]:
    """Rows {name, role, found, count, path, obtain}, sorted by name, for every registered dataset.

    `found` is True for generated datasets and for file-based ones with at least one image on disk;
    `count` is the number of images found (None when the data is missing), `path` the expected location.
    """
    opts = LoadOptions(root=Path(root))
    rows = []
    for spec in specs():
        try:
            count = spec.count(opts)
        except (LbfoodError, OSError):
            count = None
        rows.append({
            "name": spec.name,
            "role": spec.role,
            "found": bool(spec.generated or count),
            "count": count,
            "path": str(spec.path(opts)),
            "obtain": spec.obtain,
        })
    return rows
