"""A throw-away PostgreSQL cluster for the tests that stop their database server.

Made with ``initdb`` in a temporary directory and run with ``pg_ctl`` on a free port, as the
``postgres`` user when the tests run as root (PostgreSQL refuses to run as root), so stopping it
harms nobody: the shared server other test runs use is never touched. Its sockets live in its
own directory and it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import IN_CI
from tests.stores.redis_support import free_port


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    on_path = shutil.which("initdb")
    if found:
        return Path(found[-1]).parent
    if on_path is not None:
        return Path(on_path).parent
    _unavailable("initdb is not installed: the private-cluster PostgreSQL tests need it")


class PrivatePostgres:
    """A PostgreSQL cluster this test owns: ``start``, ``stop`` (a crash) and ``start`` again."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.bin = _binaries()
        self.as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{tool} {args[:1]} failed: {result.stderr}\n{tail}")

    def init(self) -> None:
        if self.as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("no 'postgres' user to run a private cluster as")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        """Start on the same port every time, waiting until it accepts connections."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.directory / "server.log")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", log, "-w", "-o", options)

    def stop(self) -> None:
        """Stop at once, as a crash would: connections drop, no checkpoint is written."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")

    def kill(self) -> None:
        """Make sure nothing of the cluster survives the test, whatever state it is in."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        with suppress(subprocess.SubprocessError, pytest.fail.Exception):
            self.stop()
        if pid_file.exists():
            with suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Initialise and start a private cluster on a free port; always stopped and deleted."""
    # not pytest's tmp_path: its parents are private to root, and the server runs as postgres
    directory = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
    server = PrivatePostgres(directory, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)
