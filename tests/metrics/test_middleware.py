"""MetricsMiddleware: what each request records, under concurrency and hostile paths."""

from __future__ import annotations

import random
import string
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import ConfigurationError, MetricsMiddleware, MetricsSettings
from bastion.metrics import UNMATCHED_LABEL
from bastion.typing import Message, Receive, Scope, Send
from tests.asgi import http_scope
from tests.metrics.conftest import client, label_values, value

pytestmark = pytest.mark.anyio

REQUESTS = "bastion_http_requests_total"
DURATION = "bastion_http_request_duration_seconds"
IN_FLIGHT = "bastion_http_requests_in_flight"


async def echo(request: Request) -> Response:
    return Response(await request.body(), status_code=201)


async def user(request: Request) -> Response:
    return PlainTextResponse(f"user {request.path_params['uid']}")


def starlette_app(*extra: Route) -> Starlette:
    return Starlette(
        routes=[
            Route("/users/{uid}", user),
            Route("/echo", echo, methods=["POST"]),
            *extra,
        ]
    )


async def test_counts_duration_and_sizes_by_route_template(registry: CollectorRegistry) -> None:
    """A request is counted under its method, route template and status, with its body sizes."""
    app = MetricsMiddleware(starlette_app(), registry=registry)
    async with client(app) as c:
        assert (await c.get("/users/42")).status_code == 200
        assert (await c.get("/users/7")).status_code == 200
        assert (await c.post("/echo", content=b"x" * 1234)).status_code == 201

    labels = {"method": "GET", "route": "/users/{uid}"}
    assert value(registry, REQUESTS, status="200", **labels) == 2
    assert value(registry, f"{DURATION}_count", **labels) == 2
    assert value(registry, f"{DURATION}_sum", **labels) > 0
    sent = len("user 42") + len("user 7")
    assert value(registry, "bastion_http_response_size_bytes_sum", **labels) == sent
    post = {"method": "POST", "route": "/echo"}
    assert value(registry, REQUESTS, status="201", **post) == 1
    assert value(registry, "bastion_http_request_size_bytes_sum", **post) == 1234
    assert value(registry, "bastion_http_response_size_bytes_sum", **post) == 1234
    assert label_values(registry, "bastion_http_requests", "route") == {"/users/{uid}", "/echo"}


async def test_buckets_are_configurable(registry: CollectorRegistry) -> None:
    """Custom duration and size buckets become the histograms' ``le`` bounds."""
    settings = MetricsSettings(duration_buckets=(0.5, 2.0), size_buckets=(10.0,))
    app = MetricsMiddleware(starlette_app(), registry=registry, settings=settings)
    async with client(app) as c:
        await c.get("/users/1")
    labels = {"method": "GET", "route": "/users/{uid}"}
    assert label_values(registry, DURATION, "le") == {"0.5", "2.0", "+Inf"}
    assert value(registry, f"{DURATION}_bucket", le="0.5", **labels) == 1
    assert label_values(registry, "bastion_http_response_size_bytes", "le") == {"10.0", "+Inf"}
    assert value(registry, "bastion_http_response_size_bytes_bucket", le="10.0", **labels) == 1


async def test_in_flight_gauge_counts_running_requests(registry: CollectorRegistry) -> None:
    """The in-flight gauge includes the running request and drops back to zero after it."""
    seen: list[float] = []

    async def probe(request: Request) -> Response:
        seen.append(value(registry, IN_FLIGHT, method="GET"))
        return PlainTextResponse("ok")

    app = MetricsMiddleware(starlette_app(Route("/probe", probe)), registry=registry)
    async with client(app) as c:
        await c.get("/probe")
    assert seen == [1.0]
    assert value(registry, IN_FLIGHT, method="GET") == 0


async def test_exact_counts_under_200_concurrent_requests(registry: CollectorRegistry) -> None:
    """200 requests in flight at once are each counted exactly once, and the gauge peaks at 200."""
    release = anyio.Event()
    peak: list[float] = []
    arrived = 0

    async def slow(request: Request) -> Response:
        nonlocal arrived
        arrived += 1
        if arrived == 200:
            peak.append(value(registry, IN_FLIGHT, method="GET"))
            release.set()
        await release.wait()
        return PlainTextResponse("done")

    app = MetricsMiddleware(starlette_app(Route("/slow/{n}", slow)), registry=registry)
    async with client(app) as c, anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(c.get, f"/slow/{n}")
    labels = {"method": "GET", "route": "/slow/{n}"}
    assert peak == [200.0]
    assert value(registry, REQUESTS, status="200", **labels) == 200
    assert value(registry, f"{DURATION}_count", **labels) == 200
    assert value(registry, "bastion_http_response_size_bytes_sum", **labels) == 200 * len("done")
    assert value(registry, IN_FLIGHT, method="GET") == 0


async def _call(app: Any, method: str, path: str) -> int:
    """Drive ``app`` with a raw ASGI request and return the status it sent."""
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = http_scope(method, path)
    await app(scope, receive, send)
    return status


async def test_label_cardinality_bounded_under_10k_random_paths(
    registry: CollectorRegistry,
) -> None:
    """10k random paths and methods yield route labels from the routing table and a few others."""
    app = MetricsMiddleware(starlette_app(), registry=registry)
    rng = random.Random(5)
    methods = ["GET", "POST", "PUT", "DELETE", "BREW", "PROPFIND", "get", "X" * 40]

    def word() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "-._~%", k=12))

    for n in range(10_000):
        kind = n % 3
        path = f"/users/{word()}" if kind == 0 else f"/{word()}/{word()}" if kind == 1 else "/echo"
        await _call(app, rng.choice(methods), path)

    routes = label_values(registry, "bastion_http_requests", "route")
    assert routes == {"/users/{uid}", "/echo", UNMATCHED_LABEL}
    assert label_values(registry, "bastion_http_requests", "method") <= {
        "GET",
        "POST",
        "PUT",
        "DELETE",
        "_OTHER",
    }
    assert label_values(registry, "bastion_http_requests", "status") <= {"200", "201", "404", "405"}
    total = sum(
        s.value
        for family in registry.collect()
        if family.name == "bastion_http_requests"
        for s in family.samples
        if s.name == REQUESTS
    )
    assert total == 10_000


async def test_unknown_methods_share_one_label(registry: CollectorRegistry) -> None:
    """A method outside the HTTP registry is labelled _OTHER, so clients cannot mint labels."""
    app = MetricsMiddleware(starlette_app(), registry=registry)
    assert await _call(app, "BREW", "/users/1") == 405
    assert value(registry, REQUESTS, method="_OTHER", route="/users/{uid}", status="405") == 1
    assert value(registry, IN_FLIGHT, method="_OTHER") == 0


async def test_exception_before_response_counts_as_500(registry: CollectorRegistry) -> None:
    """An app that raises before answering is counted as the 500 the server will send."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    app = MetricsMiddleware(broken, registry=registry)
    with pytest.raises(RuntimeError, match="boom"):
        await _call(app, "GET", "/anything")
    assert value(registry, REQUESTS, method="GET", route=UNMATCHED_LABEL, status="500") == 1
    assert value(registry, IN_FLIGHT, method="GET") == 0


async def test_exception_after_response_start_keeps_sent_status(
    registry: CollectorRegistry,
) -> None:
    """An app that fails mid-body is counted under the status it had already sent."""

    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"par", "more_body": True})
        raise RuntimeError("connection dropped")

    app = MetricsMiddleware(half, registry=registry)
    with pytest.raises(RuntimeError):
        await _call(app, "GET", "/stream")
    labels = {"method": "GET", "route": UNMATCHED_LABEL}
    assert value(registry, REQUESTS, status="200", **labels) == 1
    assert value(registry, "bastion_http_response_size_bytes_sum", **labels) == 3


async def test_starlette_server_error_is_counted(registry: CollectorRegistry) -> None:
    """A handler exception that Starlette turns into a 500 is counted under its route."""

    async def fail(request: Request) -> Response:
        raise ValueError("bad")

    app = MetricsMiddleware(starlette_app(Route("/fail", fail)), registry=registry)
    with pytest.raises(ValueError, match="bad"):
        await _call(app, "GET", "/fail")
    assert value(registry, REQUESTS, method="GET", route="/fail", status="500") == 1


async def test_non_http_scopes_pass_through(registry: CollectorRegistry) -> None:
    """Lifespan and websocket scopes reach the app untouched and are not measured."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = MetricsMiddleware(app, registry=registry)
    for kind in ("lifespan", "websocket"):
        await middleware({"type": kind, "path": "/ws"}, _never, _discard)
    assert seen == ["lifespan", "websocket"]
    assert label_values(registry, "bastion_http_requests", "route") == set()


async def _never() -> Message:
    raise AssertionError("not called")


async def _discard(message: Message) -> None:
    return None


async def test_skip_paths_are_not_measured(registry: CollectorRegistry) -> None:
    """Paths listed in ``skip_paths`` are served but leave no sample."""
    settings = MetricsSettings(skip_paths=frozenset({"/users/skip"}))
    app = MetricsMiddleware(starlette_app(), registry=registry, settings=settings)
    assert await _call(app, "GET", "/users/skip") == 200
    assert await _call(app, "GET", "/users/kept") == 200
    assert value(registry, REQUESTS, method="GET", route="/users/{uid}", status="200") == 1


async def test_factory_running_twice_shares_metrics(registry: CollectorRegistry) -> None:
    """Building the middleware twice on one registry reuses its metrics instead of failing."""
    first = MetricsMiddleware(starlette_app(), registry=registry)
    second = MetricsMiddleware(starlette_app(), registry=registry)
    await _call(first, "GET", "/users/1")
    await _call(second, "GET", "/users/2")
    assert value(registry, REQUESTS, method="GET", route="/users/{uid}", status="200") == 2


def test_default_registry_survives_a_second_factory_run() -> None:
    """Without a registry the default one is used, and a second app does not re-register."""
    MetricsMiddleware(starlette_app())
    MetricsMiddleware(starlette_app())
    names = {family.name for family in REGISTRY.collect()}
    assert "bastion_http_requests" in names


def test_other_buckets_on_the_same_registry_are_refused(registry: CollectorRegistry) -> None:
    """One registry holds one set of buckets: a conflicting second set fails at start-up."""
    MetricsMiddleware(starlette_app(), registry=registry)
    with pytest.raises(ConfigurationError, match="other buckets"):
        MetricsMiddleware(
            starlette_app(),
            registry=registry,
            settings=MetricsSettings(duration_buckets=(1.0, 2.0)),
        )


def test_foreign_metric_with_our_name_is_a_configuration_error(
    registry: CollectorRegistry,
) -> None:
    """A metric of the same name registered by something else fails at start-up, clearly."""
    from prometheus_client import Counter

    Counter("bastion_http_requests_total", "not ours", registry=registry)
    with pytest.raises(ConfigurationError, match="cannot register"):
        MetricsMiddleware(starlette_app(), registry=registry)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prometheus": False, "otel": False}, "measures nothing"),
        ({"duration_buckets": ()}, "cannot be empty"),
        ({"duration_buckets": (1.0, 0.5)}, "strictly increasing"),
        ({"size_buckets": (1.0, float("inf"))}, "finite"),
    ],
)
def test_settings_are_validated(options: dict[str, Any], message: str) -> None:
    """Settings that cannot work are refused when built."""
    with pytest.raises(ConfigurationError, match=message):
        MetricsSettings(**options)


def test_settings_load_from_the_environment() -> None:
    """Buckets and skipped paths can be set through ``BASTION_METRICS_*`` variables."""
    settings = MetricsSettings.from_env(
        {
            "BASTION_METRICS_DURATION_BUCKETS": "0.1, 1, 10",
            "BASTION_METRICS_SKIP_PATHS": "/metrics,/healthz",
            "BASTION_METRICS_EXEMPLARS": "false",
        }
    )
    assert settings.duration_buckets == (0.1, 1.0, 10.0)
    assert settings.skip_paths == frozenset({"/metrics", "/healthz"})
    assert settings.exemplars is False


async def test_request_without_any_answer_is_status_0(registry: CollectorRegistry) -> None:
    """A request that ends with nothing sent (client gone) is counted, with status 0."""

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    app = MetricsMiddleware(silent, registry=registry)
    assert await _call(app, "POST", "/gone") == 0
    assert value(registry, REQUESTS, method="POST", route=UNMATCHED_LABEL, status="0") == 1


def test_default_buckets_are_prometheus_clients() -> None:
    """The default duration buckets are prometheus_client's (and OpenTelemetry's advisory)."""
    from prometheus_client import Histogram

    from bastion.metrics import DEFAULT_DURATION_BUCKETS

    assert (*DEFAULT_DURATION_BUCKETS, float("inf")) == Histogram.DEFAULT_BUCKETS
