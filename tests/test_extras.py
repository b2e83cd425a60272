"""Optional extras: `bastion[all]` holds everything, and a missing one fails at start-up,
naming the extra to install, with an error that is also an ImportError."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from bastion.exceptions import ConfigurationError, MissingExtraError
from bastion.stores.sql import SQLStore

ROOT = Path(__file__).resolve().parents[1]


def _python(script: str) -> str:
    """Run ``script`` in a fresh interpreter; its stdout, or the test fails with its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_error_is_an_import_error_and_a_configuration_error() -> None:
    """Code guarding optional imports with ``except ImportError`` catches it, as does code
    catching bastion's ConfigurationError."""
    assert issubclass(MissingExtraError, ImportError)
    assert issubclass(MissingExtraError, ConfigurationError)


def test_all_extra_installs_a_driver_for_every_sql_database() -> None:
    """``bastion[all]`` needs no guess: every extra, SQL drivers included, is part of it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    (requirement,) = extras["all"]
    included = set(requirement.split("[", 1)[1].rstrip("]").split(","))
    assert included == set(extras) - {"all"}


@pytest.mark.parametrize(
    ("url", "driver", "extra"),
    [
        ("postgresql://u@127.0.0.1/db", "asyncpg", "postgres"),
        ("sqlite+aiosqlite:///x.db", "aiosqlite", "sqlite"),
        ("mysql://u@127.0.0.1/db", "asyncmy", "mysql"),
    ],
)
def test_a_missing_sql_driver_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, url: str, driver: str, extra: str
) -> None:
    """Without its driver, building a SQLStore fails with the extra to install, not a driver."""
    monkeypatch.setitem(sys.modules, driver, None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'bastion\[{extra}\]'") as caught:
        SQLStore(url=url)
    assert caught.value.extra == extra


@pytest.mark.parametrize(
    ("blocked", "statement", "extra"),
    [
        ("redis", "from bastion.stores import RedisStore", "redis"),
        ("redis", "bastion.stores.from_url('redis://127.0.0.1')", "redis"),
        ("sqlalchemy", "from bastion.stores import SQLStore", "sql"),
        ("prometheus_client", "from bastion import metrics_app", "prometheus"),
        ("prometheus_client", "bastion.MetricsApp()", "prometheus"),
        ("prometheus_client", "bastion.MetricsMiddleware(app)", "prometheus"),
        ("prometheus_client", "bastion.PrometheusObserver()", "prometheus"),
        ("opentelemetry", "bastion.OTelObserver()", "otel"),
    ],
)
def test_a_missing_extra_fails_at_import_or_construction(
    blocked: str, statement: str, extra: str
) -> None:
    """Each feature reports its missing extra where it is imported or built, as an ImportError
    carrying the pip command, never later on a request."""
    out = _python(
        f"""
        import sys
        sys.modules[{blocked!r}] = None
        import bastion, bastion.stores
        async def app(scope, receive, send): ...
        try:
            {statement}
        except ImportError as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert out.startswith("MissingExtraError"), out
    assert f"pip install 'bastion[{extra}]'" in out


def test_metrics_middleware_works_with_only_the_otel_extra() -> None:
    """Without prometheus_client, MetricsMiddleware asked for OpenTelemetry starts and records
    a server span for each request."""
    out = _python(
        """
        import sys
        sys.modules["prometheus_client"] = None
        import anyio, httpx
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from bastion import MetricsMiddleware, MetricsSettings

        async def hello(request):
            return PlainTextResponse("hi")

        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        app = Starlette(routes=[Route("/hello/{name}", hello)])
        apps = [
            MetricsMiddleware(app, settings=MetricsSettings(otel=True), tracer_provider=provider),
            MetricsMiddleware(app, tracer_provider=provider),
        ]

        async def main():
            for wrapped in apps:
                transport = httpx.ASGITransport(app=wrapped)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    assert (await c.get("/hello/x")).status_code == 200

        anyio.run(main)
        print(sorted(span.name for span in spans.get_finished_spans()))
        """
    )
    assert out == "['GET /hello/{name}', 'GET /hello/{name}']"
