"""Redis store factories and a private redis-server for the tests that need to stop one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from bastion.stores._redis import RedisStore
from tests.conftest import IN_CI, FakeClock, service_url


def unique_prefix() -> str:
    """A key prefix no other test (or other engineer's run) uses."""
    return f"bastion-test-{uuid.uuid4().hex[:12]}"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key a test wrote under its prefix, on its own short-lived client."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def fakeredis_store(clock: FakeClock, **options: Any) -> AsyncIterator[RedisStore]:
    """A RedisStore on a fresh in-process fakeredis server (Lua through lupa)."""
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), max_connections=1_000)
    store = RedisStore(client, clock=clock, **options)
    try:
        yield store
    finally:
        await client.aclose()


@asynccontextmanager
async def redis_store(clock: FakeClock, **options: Any) -> AsyncIterator[RedisStore]:
    """A RedisStore on the real server of BASTION_TEST_REDIS_URL, under a unique prefix."""
    url = service_url("BASTION_TEST_REDIS_URL")
    prefix = unique_prefix()
    store = RedisStore.from_url(url, prefix=prefix, clock=clock, **options)
    try:
        yield store
    finally:
        await store.aclose()
        await delete_prefix(url, prefix)


def free_port(*, below: int = 65536) -> int:
    """A TCP port nothing listens on right now (and, if asked, below ``below``)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port


class PrivateRedis:
    """A throw-away ``redis-server`` this test owns, so stopping it harms nobody else."""

    def __init__(self, port: int, directory: Path, *extra: str) -> None:
        self.port = port
        self.directory = directory
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            reason = "redis-server is not installed: the private-server Redis tests need it"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def private_redis(directory: Path, *extra: str) -> Iterator[PrivateRedis]:
    """Start a private redis-server on a free port; always killed afterwards."""
    # a cluster node also listens on its port + 10000 (the cluster bus)
    below = 55536 if "--cluster-enabled" in extra else 65536
    server = PrivateRedis(free_port(below=below), directory, *extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()
