"""Tiers, route templates, the presets and `RateLimitSettings`."""

from __future__ import annotations

from typing import Any

import pytest

import bastion
from bastion import ConfigurationError, RateLimitSettings, Tier
from bastion.ratelimit import keys, presets
from bastion.ratelimit._tiers import compile_routes
from tests.ratelimit.conftest import CountingStore, client, limited

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("route", "matches", "misses"),
    [
        ("/exact", ["/exact", "/exact/", "//exact", "/exact//"], ["/exactly", "/", "/x/exact"]),
        ("/slash/", ["/slash", "/slash/"], ["/slash/x"]),
        ("/", ["/", "//"], ["/x"]),
        ("/users/{id}", ["/users/1", "/users/abc"], ["/users/", "/users/1/x"]),
        ("/users/{id:int}/posts", ["/users/12/posts"], ["/users/x/posts", "/users/1.5/posts"]),
        ("/files/{path:path}", ["/files/", "/files", "/files/a/b.txt", "/files//a/"], ["/file/a"]),
        ("/a/{p:path}/b", ["/a/x/y/b", "/a//b", "/a/b"], ["/a/x/c"]),
        ("/u/{id}/", ["/u/1", "/u/1/", "//u//1//"], ["/u/", "/u/1/x"]),
        ("/p/{v:float}", ["/p/1", "/p/1.25"], ["/p/1.", "/p/x"]),
        (
            "/o/{id:uuid}",
            ["/o/123e4567-e89b-12d3-a456-426614174000"],
            ["/o/123e4567", "/o/zzze4567-e89b-12d3-a456-426614174000"],
        ),
        ("/a.b/{x}", ["/a.b/1"], ["/aXb/1"]),
    ],
)
def test_routes_match_paths_as_routers_see_them(
    route: str, matches: list[str], misses: list[str]
) -> None:
    """Templates compile to anchored regexes with Starlette's convertors, dots literal; paths
    and routes match with repeated slashes collapsed and no trailing slash."""
    matcher = compile_routes([route])
    assert all(matcher(path) for path in matches)
    assert not any(matcher(path) for path in misses)


def test_no_routes_match_everything() -> None:
    """A tier without routes applies to every path."""
    assert compile_routes([])("/anything/at/all")


@pytest.mark.parametrize(
    "route", ["no-slash", "/users/{id:bogus}", "/users/{id", "/users/id}", "/u/{}"]
)
def test_malformed_routes_are_refused(route: str) -> None:
    """A route that cannot be compiled fails when the tier is built."""
    with pytest.raises(ConfigurationError):
        Tier(name="t", limit=1, window=1, routes=(route,))


@pytest.mark.parametrize(
    "options",
    [
        {"name": ""},
        {"name": 'quo"te'},
        {"name": "has space"},
        {"name": "colon:name"},
        {"name": "x" * 65},
        {"limit": 0},
        {"limit": True},
        {"limit": 1.5},
        {"window": 0},
        {"cost": 0},
        {"cost": 11},
        {"algorithm": "leaky"},
    ],
)
def test_tier_validation(options: dict[str, Any]) -> None:
    """Names must be valid policy names (sf-string safe); numbers positive integers."""
    values = {"name": "ok", "limit": 10, "window": 60, **options}
    with pytest.raises(ConfigurationError):
        Tier(**values)


def test_tier_normalises_methods_and_single_route() -> None:
    """Methods are upper-cased; a lone route or method string is one item, not characters."""
    tier = Tier(name="t", limit=1, window=1, routes="/a", methods="post")  # type: ignore[arg-type]
    assert tier.routes == ("/a",)
    assert tier.methods == frozenset({"POST"})
    assert Tier(name="t", limit=1, window=1, methods=["get", "Head"]).methods == {"GET", "HEAD"}  # type: ignore[arg-type]


def test_presets_follow_the_original_plan() -> None:
    """register 5/h per address, claim 60/h per wallet, webhook 100/min per event, health 600."""
    register, claim, webhook, health = presets(environ={})
    assert (register.name, register.limit, register.window) == ("register", 5, 3600)
    assert register.key is keys.CLIENT_ADDRESS
    assert (claim.limit, claim.window, claim.key.needs_body) == (60, 3600, True)
    assert claim.routes == ("/api/claim/prepare", "/api/claim/record")
    assert (webhook.limit, webhook.window, webhook.routes) == (100, 60, ("/api/commerce/webhook",))
    assert (health.limit, health.window) == (600, 60)
    assert health.methods == {"GET", "HEAD"}


def test_presets_read_their_environment_variables() -> None:
    """RL_REGISTER_PER_HOUR and friends override each preset's limit."""
    environ = {
        "RL_REGISTER_PER_HOUR": "7",
        "RL_CLAIM_PER_HOUR": " 61 ",
        "RL_WEBHOOK_PER_MIN": "101",
        "RL_HEALTH_PER_MIN": "",
    }
    assert [tier.limit for tier in presets(environ)] == [7, 61, 101, 600]


def test_presets_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the presets read os.environ."""
    monkeypatch.setenv("RL_CLAIM_PER_HOUR", "3")
    assert Tier.claim().limit == 3


@pytest.mark.parametrize("value", ["many", "0", "-5", "1.5"])
def test_bad_preset_variable_names_itself(value: str) -> None:
    """An unusable value fails at start-up and names the variable."""
    with pytest.raises(ConfigurationError, match="RL_WEBHOOK_PER_MIN"):
        Tier.webhook(environ={"RL_WEBHOOK_PER_MIN": value})


def test_preset_fields_can_be_overridden() -> None:
    """Any field of a preset can be replaced in the same one-liner."""
    tier = Tier.register(environ={}, routes=("/signup",), algorithm="gcra", fail_open=False)
    assert (tier.routes, tier.algorithm, tier.fail_open, tier.limit) == (
        ("/signup",),
        "gcra",
        False,
        5,
    )


async def test_presets_protect_the_reference_routes() -> None:
    """With the four presets, each reference route is limited by its own tier and key."""
    store = CountingStore()
    app = limited(*presets(environ={}), store=store)
    async with client(app, peer="198.51.100.4") as http:
        await http.post("/api/register", json={"wallet": "w1"})
        await http.post("/api/claim/prepare", json={"wallet": "w1"})
        await http.post("/api/claim/record?wallet=w2", content=b"not json")
        await http.post("/api/commerce/webhook", json={"event": {"id": "evt_9"}})
        await http.get("/healthz")
        await http.post("/healthz")
    assert [hit.key for hits in store.calls for hit in hits] == [
        "register:addr:198.51.100.4",
        "claim:wallet:w1",
        "claim:wallet:w2",
        "webhook:json:event.id=evt_9",
        "health:addr:198.51.100.4",
    ]


def test_settings_from_environment() -> None:
    """Every scalar setting loads from BASTION_RATELIMIT_*; tiers come from code."""
    settings = RateLimitSettings.from_env(
        {
            "BASTION_RATELIMIT_FAIL_OPEN": "false",
            "BASTION_RATELIMIT_LEGACY_HEADERS": "yes",
            "BASTION_RATELIMIT_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "BASTION_RATELIMIT_PROXY_HEADER": "Forwarded",
            "BASTION_RATELIMIT_MAX_BODY_BYTES": "1024",
        },
        tiers=presets(environ={}),
    )
    assert settings.fail_open is False
    assert settings.legacy_headers is True
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    assert settings.proxy_header == "forwarded"
    assert settings.max_body_bytes == 1024
    assert len(settings.tiers) == 4
    with pytest.raises(ConfigurationError, match="BASTION_RATELIMIT_TIERS"):
        RateLimitSettings.from_env({"BASTION_RATELIMIT_TIERS": "register"})


@pytest.mark.parametrize(
    "options",
    [
        {"tiers": (Tier(name="a", limit=1, window=1), Tier(name="a", limit=2, window=2))},
        {"tiers": ("a",)},
        {"trusted_proxies": ("10.0.0.0/33",)},
        {"proxy_header": "x-real-ip"},
        {"ipv6_prefix_length": -1},
        {"max_body_bytes": -1},
        {"store_error_retry_after": -1},
    ],
)
def test_settings_validation(options: dict[str, Any]) -> None:
    """Duplicate tier names and unusable proxy or size settings fail at start-up."""
    with pytest.raises(ConfigurationError):
        RateLimitSettings(**options)


def test_public_api_exports_the_rate_limiter() -> None:
    """RateLimitMiddleware, RateLimitSettings and Tier are public; __all__ stays sorted."""
    for name in ("RateLimitMiddleware", "RateLimitSettings", "Tier"):
        assert name in bastion.__all__
        assert getattr(bastion, name) is not None
    assert bastion.__all__ == sorted(bastion.__all__)
    from bastion import ratelimit

    assert ratelimit.RateLimitMiddleware is bastion.RateLimitMiddleware
    with pytest.raises(AttributeError):
        ratelimit.nothing  # noqa: B018
