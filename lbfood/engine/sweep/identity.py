"""What identifies a sweep's study: the options it was started with (a continued sweep must repeat them)
and its one sweep folder, where every worker writes its trials and the selection reads them.

A new study records `--out`'s id (a random hex string, also written to `<out>/study.json`) with the host
and path that made it; a worker whose `--out` does not hold that id (another folder, or a machine that
does not mount the shared one) is refused before it writes anything. The folder may be mounted at
different paths on different machines: trial folders are recorded relative to it.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from typing import Any

from lbfood.engine.errors import ConfigError
from lbfood.engine.sweep import space
from lbfood.engine.sweep.folder import RECORD
from lbfood.engine.sweep.space import FACTORS, SweepConfig
from lbfood.engine.sweep.storage import Storage


def signature(sc: SweepConfig) -> dict[str, Any]:
    """What must not change when the same sweep is continued (device, workers and test sets may)."""
    from lbfood import __version__

    recipe = {k: v for k, v in sc.recipe.to_dict().items() if k not in ("device", "precision", "workers", "out")}
    return {"lbfood": __version__, "recipe": recipe, "mode": sc.mode,
            **{space.FIELDS[f]: list(space.values(sc, f)) for f in FACTORS}, "trials": sc.trials,
            "methods": list(sc.methods),
            "objective": sc.objective, "max_acc_drop": sc.max_acc_drop, "holdout": sc.holdout,
            "val_ood": sc.val_ood, "pseudo": list(sc.pseudo)}


_FLAGS = {"lbfood": "lbfood version", "lam": "--lambda", "methods": "--method", "parent": "--from"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """"--flag (VALUE here, VALUE in the study)" for each differing option, the recipe's fields one by one."""
    out = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if k == "recipe" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{_flag(f)} ({b.get(f)} here, {a.get(f)} in the study)" for f in sorted(set(a) | set(b))
                    if a.get(f) != b.get(f)]
        elif a != b:
            out.append(f"{_flag(k)} ({b} here, {a} in the study)")
    return out


FOLDER_ID = RECORD  # the sweep folder's record of its study (sweep/folder.py) also holds the folder's id


def bind_folder(study, sc: SweepConfig, st: Storage) -> None:
    """The study's one sweep folder: a new study records --out's id; a continued one must find it in --out
    (every worker writes its trials there, and the selection reads them)."""
    from lbfood.engine.io import atomic_write_json

    out = Path(sc.out)
    rec = study.user_attrs.get("folder")
    try:  # the record `sweep/folder.py` wrote first: it holds (or gains) the folder's id
        doc = json.loads((out / FOLDER_ID).read_text())
    except (OSError, ValueError):
        doc = {}
    record = doc if isinstance(doc, dict) else {}
    here = {"host": socket.gethostname(), "path": str(out.resolve())}
    if rec is None:
        folder = {"id": uuid.uuid4().hex, **here}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / FOLDER_ID, {**record, "id": folder["id"]})
        study.set_user_attr("folder", folder)
        return
    mine = record.get("id")
    if mine is None and {k: rec.get(k) for k in here} == here:  # the same folder on the same machine, whose
        atomic_write_json(out / FOLDER_ID, {**record, "id": rec["id"]})  # record was rewritten: it regains it
        return
    if mine != rec["id"]:
        raise ConfigError(f"--out {sc.out} is not the sweep folder of the study in {st.shown} (made at {rec['path']} on "
                          f"{rec['host']}): every worker writes its trials there, so put it on a file system all "
                          "machines mount and pass its path as --out")
