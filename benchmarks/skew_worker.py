"""One app-instance process of `bench_skew.py`, on a host whose clock is off by
``BENCH_SKEW`` seconds.

``time.time`` is shifted before bastion is imported, so a store given ``clock=time.time``
decides on the skewed clock, as on a host whose clock drifted; a store left its default reads
the store's clock and never this one. Each stdin line is one JSON episode; the worker hammers
that episode's bucket with ``concurrency`` tasks for ``seconds`` (measured on the monotonic
clock, which the skew does not touch) and answers one JSON line of counts.
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ["BENCH_SKEW"])
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + _SKEW
time.time_ns = lambda: _real_time_ns() + round(_SKEW * 1e9)

import asyncio  # noqa: E402 - after the clock is skewed, as the docstring says
import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from bench_skew import open_store  # noqa: E402

from bastion.stores import RateLimitHit  # noqa: E402


async def episode(store: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Admitted, denied and failed decisions of ``concurrency`` tasks hitting one bucket."""
    hit = RateLimitHit(spec["key"], spec["algorithm"], spec["limit"], spec["window_ms"])
    counts = {"admitted": 0, "denied": 0, "errors": 0}
    error: list[str] = []
    end = time.monotonic() + spec["seconds"]

    async def hammer() -> None:
        while time.monotonic() < end:
            try:
                (decision,) = await store.hit([hit])
            except Exception as exc:
                counts["errors"] += 1
                error[:] = [f"{type(exc).__name__}: {exc}"]
                continue
            counts["admitted" if decision.allowed else "denied"] += 1

    await asyncio.gather(*(hammer() for _ in range(spec["concurrency"])))
    return {**counts, "error": error[0] if error else None}


async def serve() -> None:
    stores: dict[tuple[str, str, str], Any] = {}
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            spec = json.loads(line)
            where = (spec["url"], spec["prefix"], spec["clock"])
            if where not in stores:
                options = {"clock": time.time} if spec["clock"] == "caller" else {}
                stores[where] = open_store(spec["url"], spec["prefix"], **options)
            print(json.dumps(await episode(stores[where], spec)), flush=True)
    finally:
        for store in stores.values():
            await store.aclose()


if __name__ == "__main__":
    asyncio.run(serve())
