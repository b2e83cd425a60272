"""`metrics_app`: the ASGI app that serves the Prometheus exposition, mountable at ``/metrics``.

It speaks the classic text format unless the scraper asks for OpenMetrics in ``Accept`` (only
OpenMetrics carries exemplars), and gzips when asked to. In prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR`` set) it aggregates every worker's files, so any worker can
answer the scrape for all of them.

``metrics_app`` is built on first import, not when bastion is imported: without
prometheus_client, ``from bastion import metrics_app`` raises `MissingExtraError` naming
``bastion[prometheus]`` at start-up, instead of a scrape answering 500.
"""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from bastion._asgi import header, send_problem
from bastion.metrics._prometheus import client, multiprocess_mode
from bastion.typing import Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MetricsApp", "metrics_app"]


class MetricsApp:
    """Serves one registry's metrics to ``GET`` (and ``HEAD``) requests.

    Without a ``registry`` it serves prometheus_client's default registry or, in multiprocess
    mode, a registry that aggregates all workers' files. A registry passed explicitly is served
    as it is, in either mode.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            client()  # fail here, naming the extra, rather than on the first scrape
        self._registry = registry

    def registry(self) -> CollectorRegistry:
        """The registry a scrape reads, chosen on first use so importing bastion stays cheap."""
        if self._registry is None:
            prom = client()
            if multiprocess_mode():
                from prometheus_client import multiprocess

                registry = prom.CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
                self._registry = registry
            else:
                self._registry = prom.REGISTRY
        return self._registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own, e.g. `uvicorn bastion:metrics_app`
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_problem(
                send,
                405,
                "method-not-allowed",
                "Method not allowed",
                "The metrics endpoint only answers GET and HEAD.",
                headers=[(b"allow", b"GET, HEAD")],
            )
            return
        body, headers = await anyio.to_thread.run_sync(self._render, scope)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _render(self, scope: Scope) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """Encode the registry as the scraper asked; run in a thread, as it reads every metric."""
        from prometheus_client.exposition import choose_encoder

        accept = (header(scope, b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry())
        headers = [(b"content-type", content_type.encode("latin-1"))]
        if b"gzip" in (header(scope, b"accept-encoding") or b""):
            body = gzip.compress(body, compresslevel=6)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"vary", b"accept, accept-encoding"))
        return body, headers


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Any = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


if TYPE_CHECKING:
    metrics_app: MetricsApp
    """Serves the default registry (or every worker's, in multiprocess mode); mount it at
    ``/metrics``. Build a `MetricsApp` for a registry of your own."""


def __getattr__(name: str) -> MetricsApp:
    if name == "metrics_app":
        app: MetricsApp = globals().setdefault("metrics_app", MetricsApp())
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
