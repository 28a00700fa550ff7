"""What a sweep folder is: a folder recognised by its study, never by the names of the files in it.

A new sweep records its study in `<sweep>/study.json` — `{"study": "lbfood-sweep", "storage": null}`
(null: the SQLite file `study.db` beside it) or the `--storage` URL it was started with — before anything
else is written into the folder. A folder is a sweep's if that record names the study, or (a sweep made
before the record existed) if its `study.db` holds the study. Everything else that is not empty is
refused: a run folder (its `.lock` is not a sweep's), your own `sweep.json`, `trials/` or `README.txt`.
A sweep continued with another `--storage` than it recorded is refused too: its `trials/` folders belong
to the study it recorded, and a second study would retrain every trial into them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from lbfood.engine import runs
from lbfood.engine.errors import ConfigError
from lbfood.engine.io import atomic_write_json

STUDY_NAME = "lbfood-sweep"
RECORD = "study.json"  # the record of the study, written first
DEFAULT_DB = "study.db"  # the default storage, beside the record


def default_storage(out: str | Path) -> str:
    """The storage of a sweep started without --storage: SQLite in the sweep folder."""
    return f"sqlite:///{(Path(out) / DEFAULT_DB).resolve()}"


def recorded_storage(out: Path) -> tuple[bool, str | None]:
    """(is `out` a sweep folder, its recorded --storage: None for the default `study.db`)."""
    record = out / RECORD
    if record.is_file() and not record.is_symlink():
        try:
            doc: Any = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False, None
        ok = isinstance(doc, dict) and doc.get("study") == STUDY_NAME and isinstance(doc.get("storage"), str | None)
        return (True, doc["storage"]) if ok else (False, None)
    return _holds_study(out / DEFAULT_DB), None


def _holds_study(db: Path) -> bool:
    """Is `db` an SQLite file holding the sweep's Optuna study? Opened read-only: nothing is created."""
    if not db.is_file() or db.is_symlink():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as con:
            return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (STUDY_NAME,)).fetchone() is not None
    except sqlite3.Error:
        return False


def check(out: Path, storage: str | None) -> bool:
    """Refuse an --out that is a file, a folder that is not a sweep's, or a sweep recorded with another
    storage; True if `out` is new (missing or empty): nothing of a sweep is there yet."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a folder for the sweep (a new one, or a sweep's to continue it)")
    if not out.is_dir() or not any(out.iterdir()):
        return True
    sweep, have = recorded_storage(out)
    if not sweep:
        what = "a run folder" if runs.is_run(out) else f"not a sweep folder (no {RECORD} naming its study)"
        raise ConfigError(f"--out {out} already holds files and is {what}; pass a new or empty folder, or a "
                          "sweep's folder to continue it")
    if (have or default_storage(out)) != (storage or default_storage(out)):
        again = f"--storage {have}" if have else "without --storage"
        raise ConfigError(f"--out {out} is a sweep whose study is in {have or DEFAULT_DB}, not "
                          f"{storage or DEFAULT_DB}; continue it with the same command {again}, or pick a new --out")
    return False


def record(out: Path, storage: str | None) -> None:
    """Write the record of a new sweep's study (kept as it is once written; the folder's id may be in it)."""
    out.mkdir(parents=True, exist_ok=True)
    try:  # sweep/identity.py may have written the folder's id into it first
        doc: Any = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    if doc.get("study") != STUDY_NAME or "storage" not in doc:
        atomic_write_json(out / RECORD, {**doc, "study": STUDY_NAME, "storage": storage})
