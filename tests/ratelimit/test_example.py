"""The runnable example in examples/rate_limit_app.py keeps working."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.ratelimit.conftest import client

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rate_limit_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rate_limit_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_limits_claims_per_wallet() -> None:
    """Three claims per wallet pass with their body intact, the fourth gets 429."""
    app = load_example().create_app()
    async with client(app) as http:
        statuses = [
            (await http.post("/claims", json={"wallet": "0xabc"})).status_code for _ in range(4)
        ]
        other = await http.post("/claims", json={"wallet": "0xdef"})
        hello = await http.get("/")
    assert statuses == [201, 201, 201, 429]
    assert other.json() == {"claimed": True, "wallet": "0xdef"}
    assert hello.headers["ratelimit-policy"] == '"per-ip";q=60;w=60'
