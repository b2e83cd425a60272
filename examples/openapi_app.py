"""bastion's middleware in a FastAPI app's OpenAPI schema, with `bastion.fastapi.document`.

    python examples/openapi_app.py          # prints what the schema says about each route
    uvicorn examples.openapi_app:app        # then open http://127.0.0.1:8000/docs

``docs/openapi.md`` walks through it.
"""

from __future__ import annotations

import json

from fastapi import FastAPI

from bastion import (
    IdempotencyMiddleware,
    IdempotencySettings,
    RateLimitMiddleware,
    RateLimitSettings,
    Tier,
)
from bastion.fastapi import document
from bastion.stores import MemoryStore

idempotency = IdempotencySettings(require_key=("/payments",), exclude=("/admin/*",))
rate_limit = RateLimitSettings(
    tiers=(Tier(name="payments", limit=10, window=60, routes=("/payments",)),)
)
store = MemoryStore()

app = FastAPI(title="payments", version="1")
app.add_middleware(IdempotencyMiddleware, store=store, settings=idempotency)
app.add_middleware(RateLimitMiddleware, store=store, settings=rate_limit)


@app.post("/payments", status_code=201)
async def pay(payment: dict[str, int]) -> dict[str, int]:
    return {"paid": payment.get("amount", 0)}


@app.post("/notes")
async def note(text: str = "") -> dict[str, str]:
    return {"note": text}


@app.post("/admin/reset")
async def reset() -> dict[str, bool]:
    return {"reset": True}


# the same settings objects the middleware were given: the schema cannot drift from them
document(app, idempotency=idempotency, rate_limit=rate_limit)


def summary() -> dict[str, dict[str, object]]:
    """Per operation: the key parameter (required or not), the answers, the response fields."""
    out: dict[str, dict[str, object]] = {}
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            key = [p["required"] for p in operation.get("parameters", []) if p["in"] == "header"]
            fields = set()
            for response in operation["responses"].values():
                fields |= set(response.get("headers", {}))
            out[f"{method.upper()} {path}"] = {
                "Idempotency-Key": ("required" if key[0] else "optional") if key else "-",
                "responses": sorted(operation["responses"]),
                "fields": sorted(fields),
            }
    return out


if __name__ == "__main__":
    print(json.dumps(summary(), indent=2))
