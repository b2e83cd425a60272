"""Raw ASGI test helpers, for tests that drive middleware without an HTTP client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def http_scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Iterable[tuple[bytes, bytes]] = ((b"host", b"test"),),
    query: bytes = b"",
    client: tuple[str, int] | None = ("127.0.0.1", 1234),
) -> dict[str, Any]:
    """A complete HTTP scope as a server would build it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": client,
        "server": ("test", 80),
    }
