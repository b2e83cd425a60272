"""The embedded service driven by hypothesis: a started app in a blocking portal, and raw
ASGI requests, so generated header bytes reach the middleware exactly as written (an HTTP
client would refuse or normalise many of them first)."""

from __future__ import annotations

import collections
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from reference_service.app import create_app
from reference_service.settings import ProgramSeed, ServiceSettings

ADMIN = "fuzz-admin-token-0123"
SECRET = "whsec_fuzz_secret"
BUDGET = Decimal(10) ** 9

FUZZ = settings(
    max_examples=min(settings.default.max_examples, 150),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""The loaded profile (CI's 200 or dev's 50), capped so all of it stays within seconds."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Embedded:
    """A started embedded app and a tally of every request sent and status answered."""

    app: FastAPI
    portal: BlockingPortal
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def tried(self) -> int:
        return sum(self.statuses.values())

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        client: tuple[str, int] = ("203.0.113.1", 40_000),
        query: bytes = b"",
    ) -> Answer:
        answer = self.portal.call(_asgi, self.app, method, path, headers or [], body, client, query)
        self.statuses[answer.status] += 1
        return answer

    def call(self, func: Any, *args: Any) -> Any:
        """Run an async function of the service in the app's event loop."""
        return self.portal.call(func, *args)


async def _asgi(
    app: FastAPI,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    client: tuple[str, int],
    query: bytes,
) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"svc"), *headers],
        "client": client,
        "server": ("svc", 80),
    }
    sent = False
    done = anyio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    try:
        await app(scope, receive, send)
    except Exception:
        # Starlette answers 500 and re-raises for the server to log: the answer is the 500
        if not any(m["type"] == "http.response.start" for m in messages):
            raise
    done.set()
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return Answer(start["status"], response_headers, content)


@contextmanager
def embedded(template: Path, directory: Path, **environ: str) -> Iterator[Embedded]:
    """The embedded service on a copy of the migrated template, started for the block."""
    target = directory / "fuzz.db"
    shutil.copy(template, target)
    service_settings = ServiceSettings(
        database_url=f"sqlite+aiosqlite:///{target}",
        admin_token=ADMIN,
        webhook_secret=SECRET,
        programs=(ProgramSeed("demo", BUDGET, "Demo"),),
    )
    app = create_app(
        service_settings, registry=CollectorRegistry(), run_jobs=False, environ=environ
    )
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        yield Embedded(app, portal)
