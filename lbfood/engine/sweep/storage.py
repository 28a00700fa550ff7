"""Where a sweep's Optuna study lives (`--storage`), checked before anything is created, and the lock that
lets one worker at a time reconcile the plan and take a trial.

Two kinds of storage are supported: SQLite (`sqlite:///PATH`, the default `<sweep>/study.db`; workers on
one machine) and PostgreSQL (`postgresql://USER:PASSWORD@HOST:PORT/DB`; workers on several machines,
driver `psycopg` from `pip install 'lbfood[postgres]'`). The queue lock is a file lock beside an SQLite
database (`<db>.lock`; SQLite's own locking does not make Optuna's pop of a queued trial atomic) and a
PostgreSQL advisory lock on a server (held by one connection; released by the server if its worker dies).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lbfood.engine.errors import ConfigError
from lbfood.engine.io import file_lock

EXAMPLES = "sqlite:///PATH/study.db (one machine) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_ADVISORY_KEY = zlib.crc32(b"lbfood-sweep")  # one queue lock per database


@dataclass(frozen=True)
class Storage:
    url: str  # what SQLAlchemy connects to (the PostgreSQL driver filled in)
    shown: str  # the URL with its password hidden: for messages and sweep.json
    dialect: str  # sqlite | postgresql
    database: str | None = None  # SQLite: the database file


def resolve(url: str | None, out: Path) -> Storage:
    """The storage of `--storage URL` (None: `<out>/study.db`); refuses a URL that cannot hold a shared
    study (malformed, in-memory, a folder, a missing folder, another database, a driver not installed)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url is None:
        db = (out / "study.db").resolve()
        return Storage(f"sqlite:///{db}", f"sqlite:///{db}", "sqlite", str(db))
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"--storage {url!r} is not a database URL; pass {EXAMPLES}") from None
    shown = u.render_as_string(hide_password=True)
    backend = u.get_backend_name()
    if backend == "sqlite":
        db = u.database
        if not db or db == ":memory:" or "memory" in str(u.query.get("mode", "")):
            raise ConfigError(f"--storage {shown}: an in-memory database lives and dies with one process, so workers "
                              f"cannot share it and the sweep cannot continue; name a file, e.g. sqlite:///{out}/study.db")
        p = Path(db)
        if p.is_dir():
            raise ConfigError(f"--storage {shown} names a folder; name a database file in it, e.g. sqlite:///{p}/study.db")
        if not p.parent.is_dir():
            raise ConfigError(f"--storage {shown}: the folder {p.parent} does not exist; create it first or name a "
                              "file in an existing folder")
        return Storage(url, shown, "sqlite", str(p.resolve()))
    if backend != "postgresql":
        raise ConfigError(f"--storage {shown}: lbfood sweeps run on SQLite or PostgreSQL, not {backend}; pass {EXAMPLES}")
    if "+" not in u.drivername:  # plain postgresql://: the driver lbfood[postgres] installs, else SQLAlchemy's default
        import importlib.util

        if importlib.util.find_spec("psycopg") is not None:
            u = u.set(drivername="postgresql+psycopg")
    try:
        u.get_dialect().import_dbapi()
    except ImportError:
        raise ConfigError(f"--storage {shown}: the PostgreSQL driver ({u.get_driver_name()}) is not installed; "
                          "pip install 'lbfood[postgres]'") from None
    except Exception as e:  # an unknown driver name after '+'
        raise ConfigError(f"--storage {shown}: unknown PostgreSQL driver ({e}); use postgresql://...") from None
    return Storage(u.render_as_string(hide_password=False), shown, "postgresql")


def _engine(st: Storage):
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(st.url, poolclass=NullPool, connect_args={"connect_timeout": 10})


def reach(st: Storage) -> None:
    """Connect once (PostgreSQL): an unreachable host or a wrong password is one line naming the host and
    the cause, before anything is created."""
    if st.dialect != "postgresql":
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    try:
        with _engine(st).connect():
            pass
    except DBAPIError as e:
        u = make_url(st.url)
        first = str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e.orig).__name__
        cause = " ".join(first.rsplit(" failed: ", 1)[-1].replace("FATAL:", "").split())
        raise ConfigError(f"--storage {st.shown}: cannot use the database at {u.host or 'localhost'}:{u.port or 5432} "
                          f"({cause}); check the host, port, user, password and database name") from None


@contextlib.contextmanager
def queue_lock(st: Storage) -> Iterator[None]:
    """Exclusive: one worker of any machine at a time reconciles the plan and takes a trial."""
    if st.dialect == "sqlite":
        with file_lock(st.database + ".lock"):
            yield
        return
    import sqlalchemy

    with _engine(st).connect() as conn:  # closing the connection releases the lock, whatever happens
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
            conn.commit()
