"""An app instance on a host whose clock is off by ``BASTION_TEST_SKEW`` seconds.

Run by `tests/stores/test_store_clock.py` as its own process: ``time.time`` is shifted before
bastion is imported, so every reader of the host's clock (a store's default included) sees the
skewed time, as on a host whose clock drifted. It answers one JSON request per stdin line, until
stdin closes: the status a `RateLimitMiddleware` over the named store gave, or for ``"op":
"claim"`` 1 or 0 as the store's `claim` of ``key`` for ``lease_ms`` acquired it or not.
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ["BASTION_TEST_SKEW"])
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + _SKEW
time.time_ns = lambda: _real_time_ns() + round(_SKEW * 1e9)

import asyncio  # noqa: E402 - after the clock is skewed, as the docstring says
import json  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from bastion import RateLimitMiddleware, RateLimitSettings, Tier  # noqa: E402
from tests.ratelimit.conftest import client, echo_app  # noqa: E402


def _store(spec: dict[str, Any]) -> Any:
    # "host" passes the host's (skewed) clock; "store" leaves the store its default
    options: dict[str, Any] = {"clock": time.time} if spec["clock"] == "host" else {}
    if spec["backend"] == "redis":
        from bastion.stores import RedisStore

        return RedisStore.from_url(spec["url"], prefix=spec["prefix"], **options)
    from bastion.stores.sql import SQLStore

    return SQLStore(url=spec["url"], table_prefix=spec["prefix"], **options)


async def serve() -> None:
    stores: dict[tuple[str, ...], Any] = {}
    apps: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            spec = json.loads(line)
            where = (spec["backend"], spec["url"], spec["prefix"], spec["clock"])
            if where not in stores:
                stores[where] = _store(spec)
            if spec.get("op") == "claim":
                token = uuid.uuid4().hex
                claim = await stores[where].claim(
                    spec["key"], "fingerprint", token, lease_ms=spec["lease_ms"]
                )
                print(int(claim.acquired), flush=True)
                continue
            if spec["tier"] not in apps:
                tier = Tier(
                    name=spec["tier"],
                    limit=spec["limit"],
                    window=spec["window"],
                    algorithm=spec["algorithm"],
                )
                settings = RateLimitSettings(tiers=(tier,))
                apps[spec["tier"]] = client(
                    RateLimitMiddleware(echo_app, store=stores[where], settings=settings)
                )
            response = await apps[spec["tier"]].get("/")
            print(response.status_code, flush=True)
    finally:
        for each in apps.values():
            await each.aclose()
        for store in stores.values():
            await store.aclose()


if __name__ == "__main__":
    asyncio.run(serve())
