"""The runnable example in examples/replays_and_quota_app.py keeps working as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.ratelimit.conftest import client

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replays_and_quota_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replays_and_quota_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_answers_as_its_docstring_says() -> None:
    """Three fresh payments pass, a replay is served free and linked to its original span,
    and the fourth fresh payment is 429."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = load_example().create_app(provider)
    async with client(app) as http:
        fresh = [
            await http.post("/pay", headers={"idempotency-key": k}, content=b"{}") for k in "abc"
        ]
        replay = await http.post("/pay", headers={"idempotency-key": "a"}, content=b"{}")
        fourth = await http.post("/pay", headers={"idempotency-key": "d"}, content=b"{}")
    provider.shutdown()
    assert [r.status_code for r in fresh] == [201, 201, 201]
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["ratelimit"].startswith('"replays";r=29')
    assert replay.json() == fresh[0].json()
    assert fourth.status_code == 429
    assert fourth.json()["violated-policies"] == ["payments"]
    first_span, *_, replay_span, _ = exporter.get_finished_spans()
    assert [link.context.span_id for link in replay_span.links] == [first_span.context.span_id]
