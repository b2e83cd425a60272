"""A Redis URL's timeouts and pool size act exactly as the keyword arguments of the same
meaning: ``?call_timeout=`` bounds a whole call and sets the socket, connect and pool timeouts
that default to it."""

from __future__ import annotations

from typing import Any

import pytest

from bastion import ConfigurationError
from bastion.stores import RedisStore

pytestmark = pytest.mark.anyio

URL = "redis://127.0.0.1:6399/3"


def settings(store: RedisStore) -> dict[str, Any]:
    """What the store's client will spend before failing, as redis-py holds it."""
    pool = store.client.connection_pool
    kwargs = pool.connection_kwargs
    return {
        "socket_timeout": kwargs["socket_timeout"],
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        "retries": kwargs["retry"].get_retries(),
        "pool_timeout": pool.timeout,
        "max_connections": pool.max_connections,
        "call_timeout": store.timeout,
    }


@pytest.mark.parametrize(
    ("query", "keywords"),
    [
        ("socket_timeout=0.5", {"socket_timeout": 0.5}),
        ("socket_connect_timeout=0.1", {"socket_connect_timeout": 0.1}),
        (
            "socket_timeout=2&socket_connect_timeout=0.1",
            {"socket_timeout": 2, "socket_connect_timeout": 0.1},
        ),
        ("timeout=3", {"pool_timeout": 3}),
        ("call_timeout=0.3", {"timeout": 0.3}),
        ("max_connections=3&socket_timeout=0.4", {"max_connections": 3, "socket_timeout": 0.4}),
    ],
)
async def test_url_options_configure_the_client_like_keywords(
    query: str, keywords: dict[str, Any]
) -> None:
    """The URL form and the keyword form build clients with the same timeouts and pool."""
    from_url = RedisStore.from_url(f"{URL}?{query}")
    from_keywords = RedisStore(url=URL, **keywords)
    try:
        assert settings(from_url) == settings(from_keywords)
    finally:
        await from_url.aclose()
        await from_keywords.aclose()


async def test_a_url_call_timeout_bounds_socket_connect_and_pool_waits() -> None:
    """``?call_timeout=0.5`` bounds the whole call, and each part of it defaults to it."""
    store = RedisStore.from_url(f"{URL}?call_timeout=0.5&prefix=p")
    try:
        assert settings(store) == {
            "socket_timeout": 0.5,
            "socket_connect_timeout": 0.5,
            "retries": 0,
            "pool_timeout": 0.5,
            "max_connections": 16,
            "call_timeout": 0.5,
        }
        assert store.prefix == "p"
    finally:
        await store.aclose()


async def test_url_options_win_over_keywords() -> None:
    """As in redis-py, a value in the URL wins over the keyword argument."""
    store = RedisStore.from_url(f"{URL}?socket_timeout=0.5", socket_timeout=2.0)
    try:
        assert settings(store)["socket_timeout"] == 0.5
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "query",
    [
        "socket_timeout=fast",
        "max_connections=1.5",
        "socket_timeout=0",
        "max_connections=0",
        "call_timeout=0",
    ],
)
def test_unusable_url_options_are_refused(query: str) -> None:
    """A URL option that is not a number, or out of range, fails when the store is built."""
    with pytest.raises(ConfigurationError):
        RedisStore.from_url(f"{URL}?{query}")
