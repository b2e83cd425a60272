"""`bastion.openapi.describe` and `bastion.fastapi.document`: the schema says what the
middleware do, on exactly the operations they cover, checked against the middleware."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import JSONResponse

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.fastapi import document
from bastion.openapi import PROBLEM_SCHEMA, coverage, describe
from bastion.ratelimit import costs
from bastion.stores import MemoryStore
from bastion.testing import FakeClock

pytestmark = pytest.mark.anyio

IDEMPOTENCY = IdempotencySettings(
    require_key=("/pay", "/orders/*"),
    exclude=("/public", "/admin/*"),
)
RATE_LIMIT = RateLimitSettings(
    tiers=(
        Tier(name="pay", limit=5, window=60, routes=("/pay",), methods=frozenset({"POST"})),
        Tier(name="items", limit=5, window=60, routes=("/items/{n:int}",)),
        Tier(name="dry", limit=1, window=60, routes=("/notes",), shadow=True),
    )
)


def make_app(
    clock: FakeClock | None = None,
    gate: dict[str, anyio.Event] | None = None,
    *,
    documented: bool = True,
) -> FastAPI:
    """An app with routes in and out of each middleware's selectors."""
    store = MemoryStore(clock=clock or FakeClock())
    app = FastAPI(title="shop", version="1")
    gate = gate if gate is not None else {}

    @app.post("/pay", status_code=201)
    async def pay(body: dict[str, int]) -> JSONResponse:
        if "entered" in gate:
            gate["entered"].set()
            await gate["release"].wait()
        return JSONResponse({"paid": sum(body.values())}, status_code=201)

    @app.post("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"order": order_id}

    @app.post("/notes")
    async def note(text: str = "") -> dict[str, str]:
        return {"note": text}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.post("/public")
    async def public() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/admin/reset")
    async def reset() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(IdempotencyMiddleware, store=store, settings=IDEMPOTENCY)
    app.add_middleware(RateLimitMiddleware, store=store, settings=RATE_LIMIT)
    if documented:
        document(app, idempotency=IDEMPOTENCY, rate_limit=RATE_LIMIT)
    return app


def _operation(schema: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    operation: dict[str, Any] = schema["paths"][path][method]
    return operation


def _key_parameter(operation: dict[str, Any]) -> dict[str, Any] | None:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
            found: dict[str, Any] = parameter
            return found
    return None


def test_documents_each_operation_as_its_middleware_cover_it() -> None:
    """Required keys, optional keys, limited routes and untouched routes each get what the
    middleware do there and nothing more."""
    schema = make_app().openapi()
    pay = _operation(schema, "/pay", "post")
    assert _key_parameter(pay) is not None
    assert _key_parameter(pay)["required"] is True  # type: ignore[index]
    assert {"400", "409", "413", "422", "429", "503"} <= set(pay["responses"])
    assert set(pay["responses"]["429"]["headers"]) >= {"Retry-After", "RateLimit"}
    assert "Idempotent-Replayed" in pay["responses"]["201"]["headers"]
    assert "RateLimit-Policy" in pay["responses"]["201"]["headers"]

    order = _operation(schema, "/orders/{order_id}", "post")
    assert _key_parameter(order)["required"] is True  # type: ignore[index]
    assert "429" not in order["responses"]

    note = _operation(schema, "/notes", "post")  # optional key; its only tier is in shadow
    assert _key_parameter(note)["required"] is False  # type: ignore[index]
    assert "429" not in note["responses"]
    assert "RateLimit" not in note["responses"]["200"]["headers"]

    item = _operation(schema, "/items/{item_id}", "get")
    assert _key_parameter(item) is None
    assert set(item["responses"]) == {"200", "422", "429"}
    assert "RateLimit" in item["responses"]["200"]["headers"]

    for path in ("/public", "/admin/reset"):
        untouched = _operation(schema, path, "post")
        assert _key_parameter(untouched) is None
        assert set(untouched["responses"]) == {"200"}
        assert "headers" not in untouched["responses"]["200"]

    assert schema["components"]["schemas"]["BastionProblem"] == PROBLEM_SCHEMA
    assert {"RateLimit", "RateLimit-Policy", "Retry-After", "Idempotent-Replayed"} <= set(
        schema["components"]["headers"]
    )


async def test_the_schema_agrees_with_what_the_middleware_do() -> None:
    """For every documented operation, a keyless request is refused with 400 exactly where the
    key is documented as required, a keyed retry is replayed exactly where the key is
    documented, and RateLimit fields come exactly where they are documented."""
    app = make_app()
    schema = app.openapi()
    concrete = {"/orders/{order_id}": "/orders/7", "/items/{item_id}": "/items/3"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path, item in schema["paths"].items():
            for method, operation in item.items():
                url = concrete.get(path, path)
                body = {"json": {"a": 1}} if path == "/pay" else {}
                parameter = _key_parameter(operation)
                keyless = await client.request(method, url, **body)
                assert (keyless.status_code == 400) == bool(parameter and parameter["required"])
                headers = {"Idempotency-Key": f"k-{method}-{path}"}
                first = await client.request(method, url, headers=headers, **body)
                again = await client.request(method, url, headers=headers, **body)
                replayed = again.headers.get("idempotent-replayed") == "true"
                assert replayed == (parameter is not None), (method, path)
                documented = operation["responses"][str(first.status_code)].get("headers", {})
                assert ("RateLimit" in first.headers) == ("RateLimit" in documented), path


def test_describe_is_idempotent_and_keeps_the_apps_own_problem_schemas() -> None:
    """A second call changes nothing, and an app's own problem schema for a status stays
    beside bastion's."""
    own = {"type": "object", "properties": {"code": {"type": "string"}}}
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/pay": {
                "post": {
                    "responses": {
                        "200": {"description": "ok"},
                        "409": {
                            "description": "taken",
                            "content": {"application/problem+json": {"schema": own}},
                        },
                    }
                }
            }
        },
    }
    describe(schema, idempotency=IDEMPOTENCY, rate_limit=RATE_LIMIT)
    import copy

    once = copy.deepcopy(schema)
    describe(schema, idempotency=IDEMPOTENCY, rate_limit=RATE_LIMIT)
    assert schema == once
    conflict = schema["paths"]["/pay"]["post"]["responses"]["409"]
    assert conflict["description"] == "taken"
    assert conflict["content"]["application/problem+json"]["schema"] == {
        "anyOf": [own, {"$ref": "#/components/schemas/BastionProblem"}]
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param(RateLimitSettings(tiers=RATE_LIMIT.tiers, shadow=True), set(), id="shadow"),
        pytest.param(
            RateLimitSettings(tiers=RATE_LIMIT.tiers, fail_open=False), {"429", "503"}, id="closed"
        ),
        pytest.param(
            RateLimitSettings(
                tiers=(Tier(name="bytes", limit=10_000, window=60, cost=costs.content_length()),)
            ),
            {"400", "413", "429"},
            id="computed-cost",
        ),
    ],
)
def test_rate_limit_answers_follow_the_settings(
    settings: RateLimitSettings, expected: set[str]
) -> None:
    """Shadow mode documents nothing, failing closed adds the 503, a computed cost its 400
    and 413."""
    found = coverage("get", "/items/{item_id}", rate_limit=settings)
    schema: dict[str, Any] = {
        "paths": {"/items/{item_id}": {"get": {"responses": {"200": {"description": "ok"}}}}}
    }
    describe(schema, rate_limit=settings)
    responses = schema["paths"]["/items/{item_id}"]["get"]["responses"]
    assert set(responses) - {"200"} == expected
    assert found.covered == bool(expected)


def test_path_parameters_are_tried_with_values_of_their_type() -> None:
    """A tier on ``/items/{n:int}`` covers an integer parameter and a string one (some of
    whose values are integers), and a key required by ``/orders/1*`` is documented but not
    required, since other order ids pass without one."""
    integer = [{"in": "path", "name": "item_id", "schema": {"type": "integer"}}]
    text = [{"in": "path", "name": "item_id", "schema": {"type": "string"}}]
    for parameters in (integer, text):
        found = coverage("GET", "/items/{item_id}", rate_limit=RATE_LIMIT, parameters=parameters)
        assert [t.name for t in found.tiers] == ["items"]
    partly = IdempotencySettings(require_key=("/orders/1*",))
    found = coverage("POST", "/orders/{order_id}", idempotency=partly, parameters=text)
    assert found.idempotent
    assert not found.key_required
    assert not coverage("GET", "/orders/{order_id}", idempotency=partly).idempotent


def test_document_describes_a_rebuilt_schema_again() -> None:
    """Clearing FastAPI's cached schema rebuilds it, and the rebuilt one is described too,
    including routes added after ``document`` was called."""
    app = make_app()
    app.openapi()

    @app.post("/pay/later")
    async def later() -> dict[str, bool]:
        return {"ok": True}

    app.openapi_schema = None
    schema = app.openapi()
    assert _key_parameter(_operation(schema, "/pay/later", "post")) is not None
    assert app.openapi() is schema
