"""Short display labels for OOD sets: `--ood NAME=folder:PATH` names a set, a `folder:PATH` set is
otherwise shown by its folder's name, and the built-in sets by their own names.

Labels only change how a report is printed; results stay keyed by the full dataset name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

from lbfood.engine.errors import ConfigError

_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")


def split_labels(items: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """`("scenes=folder:/data/x", "svhn")` -> `(("folder:/data/x", "svhn"), {"folder:/data/x": "scenes"})`.

    An item is `NAME=DATASET` when the text before its first "=" is a plain name (letters, digits,
    `_ . + -`); `folder:a=b` keeps its "=" as part of the path.
    """
    names: list[str] = []
    given: dict[str, str] = {}
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep or not _LABEL.match(label):
            names.append(item)
            continue
        if not rest:
            raise ConfigError(f"--ood {item}: nothing after '='; write NAME=DATASET, e.g. scenes=folder:PATH")
        if given.get(rest, label) != label:
            raise ConfigError(f"--ood {rest} is named twice ({given[rest]!r} and {label!r}); give it one name")
        given[rest] = label
        names.append(rest)
    owners: dict[str, str] = {}
    for name, label in given.items():
        if owners.setdefault(label, name) != name:
            raise ConfigError(f"--ood: the name {label!r} is given to both {owners[label]} and {name}; "
                              "use a different NAME for each")
    return tuple(names), given


def _folder_label(name: str, depth: int) -> str:
    parts = PurePath(name.removeprefix("folder:").rstrip("/\\") or "/").parts
    return "/".join(parts[-depth:]) or name


def labels_for(ood: Sequence[str], given: dict[str, str] | None = None) -> dict[str, str]:
    """A distinct short label for each OOD set: the given NAME, else the last folder of a `folder:PATH`
    (more of the path when two would read the same), else the dataset's name."""
    given = given or {}
    out = {n: given.get(n) or n for n in ood}
    folders = [n for n in ood if n.startswith("folder:") and n not in given]
    for depth in range(1, 64):
        for n in folders:
            out[n] = _folder_label(n, depth)
        seen = list(out.values())
        clashes = [n for n in folders if seen.count(out[n]) > 1]
        if not clashes:
            return _distinct(out)
        folders = clashes
    for n in folders:  # the same folder path cannot be given twice, so the full name is distinct
        out[n] = n
    return _distinct(out)


def _distinct(out: dict[str, str]) -> dict[str, str]:
    labels = list(out.values())
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise ConfigError(f"--ood: {', '.join(twice)} would label two OOD sets; name them apart with "
                          "--ood NAME=DATASET")
    return out
