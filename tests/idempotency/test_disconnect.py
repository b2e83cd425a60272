"""A client that leaves does not release its key: the handler runs once, a retry replays it.

Driven through raw ASGI so each test decides when the client leaves: from then on the
server's ``receive`` answers ``http.disconnect`` and its ``send`` raises `OSError`, as
uvicorn, hypercorn and Starlette's servers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bastion import IdempotencyMiddleware, IdempotencySettings
from bastion.idempotency._capture import ResponseCapture
from bastion.stores import Claim, MemoryStore
from bastion.testing import FakeClock
from bastion.typing import ASGIApp, Message
from tests.asgi import http_scope
from tests.idempotency.apps import (
    ENDLESS_CHUNK,
    STREAM_CHUNKS,
    Backend,
    StreamRuns,
    disconnect_app,
    starlette_app,
)
from tests.stores.conftest import STORES

pytestmark = pytest.mark.anyio

FILE = bytes(range(256)) * 8
SPECS = ["2.3", "2.4"]
"""2.3: Starlette watches ``receive`` for the disconnect; 2.4: it relies on ``send`` raising."""


class Connection:
    """One request as a server runs it; `leave` makes its client go away."""

    def __init__(self, path: str, *, key: str = "k-1", spec: str = "2.3", **scope: Any) -> None:
        self.scope = http_scope(
            "POST", path, headers=[(b"host", b"test"), (b"idempotency-key", key.encode())]
        )
        self.scope["asgi"] = {"version": "3.0", "spec_version": spec}
        self.scope.update(scope)
        self.body_read = False
        self.left = anyio.Event()
        self.first_chunk = anyio.Event()
        self.messages: list[Message] = []
        self.refused = 0
        self.error: BaseException | None = None

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> Message:
        if not self.body_read:
            self.body_read = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.left.is_set():
            self.refused += 1
            raise OSError("the client went away")
        self.messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            self.first_chunk.set()

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.error = exc

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def request(app: ASGIApp, path: str, **options: Any) -> Connection:
    """A request whose client stays to the end."""
    connection = Connection(path, **options)
    await connection.run(app)
    return connection


@pytest.fixture(params=STORES)
async def any_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Any]:
    """Each store backend in turn."""
    async with request.param(clock) as store:
        yield store


@pytest.fixture
def runs() -> StreamRuns:
    """The streamed handlers' record of what they did."""
    return StreamRuns(resume=anyio.Event())


@pytest.fixture
def file(tmp_path: Path) -> Path:
    """A file for FileResponse to send."""
    path = tmp_path / "report.bin"
    path.write_bytes(FILE)
    return path


def guarded(runs: StreamRuns, file: Path, store: Any, **settings: Any) -> ASGIApp:
    return IdempotencyMiddleware(
        disconnect_app(runs, str(file)), store=store, settings=IdempotencySettings(**settings)
    )


@pytest.mark.parametrize("spec", SPECS)
async def test_client_leaving_mid_stream_keeps_the_key(
    any_store: Any, runs: StreamRuns, file: Path, spec: str
) -> None:
    """The stream runs to its end after the client left, is stored, and the retry replays
    it whole without running the handler again."""
    app = guarded(runs, file, any_store)
    first = Connection("/held", spec=spec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, app)
        await first.first_chunk.wait()
        first.leave()
        runs.resume.set()
    retry = await request(app, "/held", spec=spec)
    assert runs.runs == 1
    assert retry.status == 200
    assert retry.headers[b"idempotent-replayed"] == b"true"
    assert retry.body == b"".join(STREAM_CHUNKS)
    assert runs.finished
    assert first.error is None
    assert first.body == STREAM_CHUNKS[0]
    assert first.refused <= 1  # nothing more is forwarded once the server said the client left


@pytest.mark.parametrize("spec", SPECS)
async def test_endless_stream_ends_once_over_the_cap_after_the_client_left(
    runs: StreamRuns, file: Path, spec: str
) -> None:
    """A stream the client left runs on while it could be stored, then the disconnect ends
    it as soon as it outgrows the cap, and the key is free again."""
    cap = 4 * len(ENDLESS_CHUNK)
    app = guarded(runs, file, MemoryStore(), max_response_bytes=cap)
    first = Connection("/endless", spec=spec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, app)
        await first.first_chunk.wait()
        first.leave()
        runs.resume.set()
    assert not runs.ran_out
    # every chunk up to the one that overflowed, and not one more
    assert (1 + runs.produced) * len(ENDLESS_CHUNK) == cap + len(ENDLESS_CHUNK)
    assert isinstance(first.error, Exception)

    again = await request(app, "/held", spec=spec)
    assert again.status == 200
    assert again.body == b"".join(STREAM_CHUNKS)
    assert runs.runs == 2


@pytest.mark.parametrize("spec", SPECS)
async def test_stream_already_over_the_cap_ends_when_the_client_leaves(
    runs: StreamRuns, file: Path, spec: str
) -> None:
    """A response that can no longer be stored does not outlive its client: the disconnect
    ends it at once and the key is released."""
    app = guarded(runs, file, MemoryStore(), max_response_bytes=len(ENDLESS_CHUNK) - 1)
    first = Connection("/endless", spec=spec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, app)
        await first.first_chunk.wait()
        first.leave()
        runs.resume.set()
    assert not runs.ran_out
    assert runs.produced <= 1

    again = await request(app, "/held", spec=spec)
    assert again.status == 200
    assert runs.runs == 2


async def test_pathsend_file_is_stored_and_replayed(runs: StreamRuns, file: Path) -> None:
    """A FileResponse sent with http.response.pathsend reaches the server as pathsend and is
    replayed byte for byte from the store."""
    app = guarded(runs, file, MemoryStore())
    extensions = {"extensions": {"http.response.pathsend": {}}}
    first = await request(app, "/file", **extensions)
    assert first.error is None
    assert first.messages[1] == {"type": "http.response.pathsend", "path": str(file)}

    retry = await request(app, "/file", **extensions)
    assert retry.status == 200
    assert retry.headers[b"idempotent-replayed"] == b"true"
    assert retry.headers[b"content-length"] == str(len(FILE)).encode()
    assert retry.body == FILE
    assert runs.runs == 1


async def test_pathsend_file_over_the_cap_releases_the_key(runs: StreamRuns, file: Path) -> None:
    """A file larger than the cap is sent but not stored: the retry runs the handler again."""
    app = guarded(runs, file, MemoryStore(), max_response_bytes=len(FILE) - 1)
    extensions = {"extensions": {"http.response.pathsend": {}}}
    first = await request(app, "/file", **extensions)
    assert first.messages[1]["type"] == "http.response.pathsend"

    retry = await request(app, "/file", **extensions)
    assert b"idempotent-replayed" not in retry.headers
    assert retry.messages[1]["type"] == "http.response.pathsend"
    assert runs.runs == 2


class SlowReplyStore(MemoryStore):
    """A store whose claim is taken at once but whose reply waits for ``reply``: a claim
    cancelled in flight."""

    suspends = True

    def __init__(self) -> None:
        super().__init__()
        self.taken = anyio.Event()
        self.reply = anyio.Event()
        self.slow = True

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Claim:
        claim = await super().claim(key, fingerprint, token, lease_ms=lease_ms)
        if self.slow:
            self.slow = False
            self.taken.set()
            await self.reply.wait()
        return claim


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_request_cancelled_during_its_claim_leaves_the_key_free() -> None:
    """Cancelled while the claim's reply is in flight, the request runs nothing and
    releases the lease it took, so the next request with the key runs."""
    counter = Backend()
    store = SlowReplyStore()
    app = IdempotencyMiddleware(starlette_app(counter), store=store)
    first = Connection("/charge")
    async with anyio.create_task_group() as tg:
        cancelled = anyio.CancelScope()

        async def run() -> None:
            with cancelled:
                await first.run(app)

        tg.start_soon(run)
        await store.taken.wait()
        cancelled.cancel()
        store.reply.set()
    assert cancelled.cancelled_caught
    assert counter.calls["charge"] == 0

    again = await request(app, "/charge")
    assert again.status == 201
    assert counter.calls["charge"] == 1


async def test_request_cancelled_by_asyncio_during_its_claim_leaves_the_key_free() -> None:
    """asyncio's own Task.cancel pierces any shield: the request still releases the lease
    its claim may have taken."""
    counter = Backend()
    store = SlowReplyStore()
    app = IdempotencyMiddleware(starlette_app(counter), store=store)
    first = Connection("/charge")
    task = asyncio.create_task(first.run(app))
    await store.taken.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counter.calls["charge"] == 0

    again = await request(app, "/charge")
    assert again.status == 201
    assert counter.calls["charge"] == 1


async def test_pathsend_file_that_cannot_be_read_is_not_stored(tmp_path: Path) -> None:
    """A file the capture cannot read is still handed to the server, but not stored."""
    forwarded: list[Message] = []

    async def send(message: Message) -> None:
        forwarded.append(message)

    async def receive() -> Message:
        raise AssertionError("not called")

    capture = ResponseCapture(send, receive, 1_000)
    missing = {"type": "http.response.pathsend", "path": str(tmp_path / "gone.bin")}
    await capture({"type": "http.response.start", "status": 200, "headers": []})
    await capture(missing)
    assert forwarded[1] == missing
    assert capture.complete
    assert capture.overflow
