"""A real PostgreSQL server for the tests, started with `initdb` + `pg_ctl` in a temporary folder on a
loopback port (Debian's `postgresql` package; `.ci/run` installs it). Run as root (CI), the server runs as
the unprivileged `postgres` user, since PostgreSQL refuses to run as root. Password authentication is on
(scram-sha-256), so that a wrong password is refused as on a real cluster."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, PASSWORD = "lbfood", "s3cret-pw"


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH), None if not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """start() → a running server; url(db) → its SQLAlchemy URL; stop() shuts it down and removes its files."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        # As root, the server's user must reach its folder: /tmp, not a TMPDIR under root's home.
        self.root = Path(tempfile.mkdtemp(prefix="lbfood-pg-", dir="/tmp" if self.as_root else None))
        self.port = free_port()

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")

    def start(self) -> Server:
        (self.root / "pw").write_text(PASSWORD + "\n")
        if self.as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "pw", "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-U", USER, "--pwfile", str(self.root / "pw"),
                  "--auth", "scram-sha-256", "-E", "UTF8", "--no-sync")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c max_connections=300")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", opts, "-w", "start")
        return self

    def url(self, db: str = "postgres", password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{db}"

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
