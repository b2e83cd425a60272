"""`RateLimitMiddleware`: selection, all-or-nothing decisions, answers, failures, concurrency."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from bastion import ConfigurationError, RateLimitMiddleware, RateLimitSettings, StoreError, Tier
from bastion.ratelimit import keys
from bastion.ratelimit._middleware import QUOTA_EXCEEDED
from bastion.stores import MemoryStore
from tests.conftest import FakeClock
from tests.ratelimit.conftest import (
    CountingStore,
    RecordingObserver,
    broken_store,
    call,
    client,
    echo_app,
    fields,
    limited,
)

pytestmark = pytest.mark.anyio


async def test_allows_up_to_the_limit_then_429() -> None:
    """The limit-th request passes, the next gets 429 quota-exceeded problem+json."""
    app = limited(Tier(name="burst", limit=3, window=60))
    async with client(app) as http:
        statuses = [(await http.get("/")).status_code for _ in range(3)]
        denied = await http.get("/")
    assert statuses == [200, 200, 200]
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    problem = denied.json()
    assert problem["type"] == QUOTA_EXCEEDED
    assert problem["status"] == 429
    assert problem["violated-policies"] == ["burst"]


async def test_allowed_response_carries_draft_fields() -> None:
    """An allowed response has RateLimit-Policy and RateLimit for every applicable tier."""
    app = limited(
        Tier(name="burst", limit=100, window=60, algorithm="fixed_window"),
        Tier(name="daily", limit=5000, window=86400, algorithm="fixed_window"),
    )
    async with client(app) as http:
        response = await http.get("/")
    assert response.headers["ratelimit-policy"] == '"burst";q=100;w=60, "daily";q=5000;w=86400'
    burst, daily = response.headers["ratelimit"].split(", ")
    assert burst.startswith('"burst";r=99;t=')
    assert daily.startswith('"daily";r=4999;t=')
    assert "x-ratelimit-limit" not in response.headers


async def test_most_restrictive_tier_comes_first() -> None:
    """The RateLimit item closest to exhaustion leads; the policy keeps declaration order."""
    app = limited(Tier(name="roomy", limit=100, window=60), Tier(name="tight", limit=2, window=60))
    async with client(app) as http:
        response = await http.get("/")
    assert response.headers["ratelimit"].startswith('"tight";r=1;')
    assert response.headers["ratelimit-policy"].startswith('"roomy";')


async def test_legacy_headers_describe_the_most_restrictive_tier() -> None:
    """With legacy_headers, X-RateLimit-* describe the tier closest to exhaustion."""
    app = limited(
        Tier(name="roomy", limit=100, window=60, algorithm="fixed_window"),
        Tier(name="tight", limit=2, window=10, algorithm="fixed_window"),
        legacy_headers=True,
    )
    async with client(app) as http:
        response = await http.get("/")
    assert response.headers["x-ratelimit-limit"] == "2"
    assert response.headers["x-ratelimit-remaining"] == "1"
    assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 10


async def test_headers_can_be_switched_off() -> None:
    """With headers=False neither allowed nor denied responses carry RateLimit fields."""
    app = limited(Tier(name="one", limit=1, window=60), headers=False)
    async with client(app) as http:
        allowed, denied = await http.get("/"), await http.get("/")
    assert "ratelimit" not in allowed.headers
    assert denied.status_code == 429
    assert "ratelimit" not in denied.headers
    assert "retry-after" in denied.headers


async def test_handler_headers_are_kept() -> None:
    """The fields are added to the handler's own headers, never replacing them."""
    app = limited(Tier(name="burst", limit=5, window=60))
    status, headers, _ = await call(app)
    assert status == 200
    assert fields(headers)["content-type"] == "application/json"
    assert "ratelimit" in fields(headers)


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "gcra"])
async def test_retry_after_is_whole_seconds_never_before_t(algorithm: str) -> None:
    """Retry-After is an integer of seconds no smaller than any denying tier's t."""
    app = limited(
        Tier(name="fast", limit=2, window=7, algorithm=algorithm),  # type: ignore[arg-type]
        Tier(name="slow", limit=2, window=3600, algorithm=algorithm),  # type: ignore[arg-type]
    )
    async with client(app) as http:
        for _ in range(2):
            await http.get("/")
        denied = await http.get("/")
    assert denied.status_code == 429
    retry_after = int(denied.headers["retry-after"])
    items = denied.headers["ratelimit"].split(", ")
    waits = [int(item.rsplit(";t=", 1)[1]) for item in items]
    assert retry_after >= max(waits) >= 1
    assert sorted(denied.json()["violated-policies"]) == ["fast", "slow"]


async def test_retry_after_is_enough(clock: FakeClock) -> None:
    """A client that waits Retry-After seconds is let through again."""
    app = limited(Tier(name="burst", limit=2, window=60), store=MemoryStore(clock=clock))
    async with client(app) as http:
        for _ in range(2):
            await http.get("/")
        denied = await http.get("/")
        clock.advance(int(denied.headers["retry-after"]))
        assert (await http.get("/")).status_code == 200


async def test_denied_request_charges_no_tier() -> None:
    """When one tier denies, the tiers that allowed it are not charged (all-or-nothing)."""
    store = MemoryStore()
    app = limited(
        Tier(name="roomy", limit=10, window=60, algorithm="fixed_window"),
        Tier(name="wallet", limit=1, window=60, key=keys.header("x-wallet")),
        store=store,
    )
    async with client(app) as http:
        assert (await http.get("/", headers={"x-wallet": "a"})).status_code == 200
        for _ in range(5):
            assert (await http.get("/", headers={"x-wallet": "a"})).status_code == 429
        response = await http.get("/", headers={"x-wallet": "b"})
    assert response.status_code == 200
    assert '"roomy";r=8;' in response.headers["ratelimit"]


async def test_one_store_call_decides_every_tier() -> None:
    """Every applicable tier is decided in a single store call, keyed by tier and key."""
    store = CountingStore()
    app = limited(
        Tier(name="ip", limit=10, window=60),
        Tier(name="wallet", limit=10, window=60, key=keys.json_field("wallet")),
        Tier(name="elsewhere", limit=10, window=60, routes=("/other",)),
        store=store,
    )
    async with client(app, peer="10.1.2.3") as http:
        await http.post("/claim", json={"wallet": "0xabc"})
    assert len(store.calls) == 1
    assert [hit.key for hit in store.calls[0]] == ["ip:addr:10.1.2.3", "wallet:json:wallet=0xabc"]


async def test_concurrent_requests_on_one_key_let_exactly_the_limit_through() -> None:
    """200 simultaneous requests against a limit of 50 on one key: exactly 50 are allowed."""
    app = limited(Tier(name="hot", limit=50, window=60, algorithm="gcra"))
    statuses: list[int] = []
    async with client(app) as http:

        async def one() -> None:
            statuses.append((await http.get("/")).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


async def test_routes_and_methods_select_tiers() -> None:
    """A tier applies only on its routes (exact or templates) and methods, a trailing slash
    being the same path."""
    store = CountingStore()
    app = limited(
        Tier(name="users", limit=9, window=60, routes=("/users/{id:int}",), methods="POST"),
        Tier(name="files", limit=9, window=60, routes=("/files/{path:path}", "/exact")),
        store=store,
    )
    for method, path in [
        ("POST", "/users/42"),
        ("GET", "/users/42"),
        ("POST", "/users/abc"),
        ("GET", "/files/a/b/c.txt"),
        ("DELETE", "/exact"),
        ("GET", "/exact/"),
        ("GET", "/"),
    ]:
        assert (await call(app, method=method, path=path))[0] == 200
    tiers = [[hit.key.split(":", 1)[0] for hit in hits] for hits in store.calls]
    assert tiers == [["users"], ["files"], ["files"], ["files"]]


async def test_unmatched_requests_pass_through_untouched() -> None:
    """A request no tier applies to reaches the app with no fields and no store call."""
    store = CountingStore()
    app = limited(Tier(name="api", limit=1, window=60, routes=("/api/{rest:path}",)), store=store)
    for _ in range(3):
        status, headers, _ = await call(app, path="/health")
        assert status == 200
        assert "ratelimit" not in fields(headers)
    assert store.calls == []


async def test_tier_without_a_key_does_not_apply() -> None:
    """A key chain ending in None (explicit fallback=None) skips the tier for that request."""
    store = CountingStore()
    app = limited(
        Tier(name="apikey", limit=1, window=60, key=keys.header("x-api-key", fallback=None)),
        store=store,
    )
    for _ in range(3):
        assert (await call(app))[0] == 200
    assert store.calls == []
    assert (await call(app, headers=[(b"x-api-key", b"k")]))[0] == 200
    assert (await call(app, headers=[(b"x-api-key", b"k")]))[0] == 429


async def test_cost_spends_several_units() -> None:
    """A tier's cost is what each request spends from its quota."""
    app = limited(Tier(name="heavy", limit=10, window=60, cost=4, algorithm="fixed_window"))
    statuses = [(await call(app))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_non_http_scopes_pass_straight_through() -> None:
    """Lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RateLimitMiddleware(
        app,
        store=MemoryStore(),
        settings=RateLimitSettings(tiers=(Tier(name="t", limit=1, window=1),)),
    )
    for kind in ("lifespan", "websocket", "lifespan"):
        await middleware({"type": kind}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket", "lifespan"]


async def test_observer_hears_every_tier_and_the_store_call() -> None:
    """Each tier's outcome and the one store call are reported to the observer."""
    observer = RecordingObserver()
    app = limited(
        Tier(name="a", limit=5, window=60), Tier(name="b", limit=1, window=60), observer=observer
    )
    await call(app)
    await call(app)
    assert observer.decisions == [
        ("a", "allowed"),
        ("b", "allowed"),
        ("a", "allowed"),
        ("b", "limited"),
    ]
    assert observer.store_calls == [("memory", "hit", False), ("memory", "hit", False)]


async def test_store_failure_fails_open_by_default() -> None:
    """With the store down, requests pass without fields and the fault is reported."""
    observer = RecordingObserver()
    app = limited(Tier(name="a", limit=1, window=60), store=broken_store(), observer=observer)
    for _ in range(3):
        status, headers, _ = await call(app)
        assert status == 200
        assert "ratelimit" not in fields(headers)
    assert observer.decisions == [("a", "store_error")] * 3
    assert observer.store_calls == [("memory", "hit", True)] * 3


async def test_store_failure_fails_closed_when_a_tier_says_so() -> None:
    """A fail-closed tier turns a store failure into 503 problem+json with Retry-After."""
    app = limited(
        Tier(name="open", limit=1, window=60),
        Tier(name="closed", limit=1, window=60, fail_open=False),
        store=broken_store(),
        store_error_retry_after=7,
    )
    status, headers, body = await call(app)
    assert status == 503
    assert fields(headers)["retry-after"] == "7"
    assert fields(headers)["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 503


async def test_settings_fail_closed_applies_to_every_tier() -> None:
    """fail_open=False in the settings closes every tier that does not say otherwise."""
    app = limited(Tier(name="a", limit=1, window=60), store=broken_store(), fail_open=False)
    assert (await call(app))[0] == 503
    reopened = limited(
        Tier(name="a", limit=1, window=60, fail_open=True), store=broken_store(), fail_open=False
    )
    assert (await call(reopened))[0] == 200


@pytest.mark.parametrize(
    "error", [StoreError("bad reply"), RuntimeError("a store bug"), TimeoutError()]
)
async def test_any_store_exception_is_a_store_error_not_a_500(error: Exception) -> None:
    """Whatever a store raises, the request fails open or closed, never with a 500."""
    open_app = limited(Tier(name="a", limit=1, window=60), store=broken_store(error))
    closed_app = limited(
        Tier(name="a", limit=1, window=60), store=broken_store(error), fail_open=False
    )
    assert (await call(open_app))[0] == 200
    assert (await call(closed_app))[0] == 503


async def test_store_must_implement_the_protocol() -> None:
    """A store without ``hit`` is refused when the middleware is built."""

    class IdempotencyOnly:
        backend = "x"

    with pytest.raises(ConfigurationError, match="rate-limit store protocol"):
        RateLimitMiddleware(
            echo_app,
            store=IdempotencyOnly(),  # type: ignore[arg-type]
            settings=RateLimitSettings(tiers=(Tier(name="a", limit=1, window=1),)),
        )


async def test_settings_without_tiers_are_refused() -> None:
    """A middleware with no tiers would limit nothing: a start-up error, not a silent no-op."""
    with pytest.raises(ConfigurationError, match="tiers is empty"):
        RateLimitMiddleware(echo_app, store=MemoryStore(), settings=RateLimitSettings())
    with pytest.raises(ConfigurationError, match="RateLimitSettings"):
        RateLimitMiddleware(echo_app, store=MemoryStore(), settings=object())  # type: ignore[arg-type]


async def test_hit_cache_stays_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recently built hits are reused, the cache is emptied when full, and keys never mix."""
    monkeypatch.setattr("bastion.ratelimit._prepared.HIT_CACHE_SIZE", 2)
    store = CountingStore()
    app = limited(Tier(name="ip", limit=1, window=60), store=store)
    peers = [f"198.51.100.{i}" for i in range(5)]
    first = [(await call(app, peer=(peer, 1)))[0] for peer in peers]
    second = [(await call(app, peer=(peer, 1)))[0] for peer in peers]
    assert first == [200] * 5
    assert second == [429] * 5
    assert [hits[0].key for hits in store.calls] == [f"ip:addr:{peer}" for peer in peers * 2]
    assert len(app._by_method.get("GET", app._any_method).tiers[0].hits) <= 2
