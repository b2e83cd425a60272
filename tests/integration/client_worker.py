"""One client process of the HTTP rate-limit proof: ``python -m tests.integration.client_worker``.

Arguments: the server's base URL, the path to POST to, and how many concurrent requests to
send. The worker opens that many connections first (one per request, so the requests really
are concurrent and spread over the server's worker processes), prints ``ready``, waits for a
line on stdin (the start signal shared by every client process), sends one POST on each
connection at once and prints a JSON list with one summary per response.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import httpx


def _summary(response: httpx.Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    return {
        "status": response.status_code,
        "content_type": content_type,
        "retry_after": response.headers.get("retry-after"),
        "ratelimit": response.headers.get("ratelimit"),
        "pid": response.headers.get("x-worker-pid"),
        "problem": response.json() if content_type == "application/problem+json" else None,
    }


async def main(base_url: str, path: str, requests: int) -> None:
    results: list[dict[str, Any]] = []
    # one client per request: each keeps its own connection, opened before the start signal
    clients = [httpx.AsyncClient(base_url=base_url, timeout=30) for _ in range(requests)]
    try:
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(client.get, "/healthz")
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

        async def one(client: httpx.AsyncClient) -> None:
            results.append(_summary(await client.post(path, content=b"{}")))

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(one, client)
    finally:
        for client in clients:
            await client.aclose()
    print(json.dumps(results))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
