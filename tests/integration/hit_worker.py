"""One process of the store-level rate-limit proof: ``python -m tests.integration.hit_worker``.

Arguments: store URL, store options (JSON, for `from_url`), bucket key, number of concurrent
hits, and the fixed "now" (seconds) all workers share, so every hit lands in the same window
whatever the wall clock does. The worker connects, prints ``ready``, waits for a line on stdin
(the start signal, so that all processes fire together), fires its hits concurrently and
prints how many were allowed as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

from bastion.stores import RateLimitHit, from_url

LIMIT = 60
WINDOW_MS = 60_000


async def main(url: str, options: str, key: str, hits: int, now: float) -> None:
    store = from_url(url, clock=lambda: now, **json.loads(options))
    try:
        await store.ping()
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        allowed: list[bool] = []

        async def one() -> None:
            decision = (await store.hit([RateLimitHit(key, "fixed_window", LIMIT, WINDOW_MS)]))[0]
            allowed.append(decision.allowed)

        async with anyio.create_task_group() as tg:
            for _ in range(hits):
                tg.start_soon(one)
        print(
            json.dumps({"allowed": allowed.count(True), "hits": len(allowed), "pid": os.getpid()})
        )
    finally:
        await store.aclose()


if __name__ == "__main__":
    url, options, key, hits, now = sys.argv[1:]
    anyio.run(main, url, options, key, int(hits), float(now))
