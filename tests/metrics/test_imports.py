"""Optional extras stay optional: importing bastion pulls in none of them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import bastion
from bastion import ConfigurationError, MetricsMiddleware, MetricsSettings, OTelObserver
from bastion.metrics._otel import trace_exemplar
from bastion.typing import Receive, Scope, Send

OPTIONAL = ("prometheus_client", "opentelemetry", "redis", "sqlalchemy")


def test_import_bastion_without_any_extra() -> None:
    """With every optional package blocked, bastion and its metrics names still import."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # any import of it now raises ImportError
        import bastion
        from bastion import MetricsApp, MetricsMiddleware, PrometheusObserver, OTelObserver
        loaded = [m for m in sys.modules if m.split(".")[0] in {OPTIONAL!r}
                  and sys.modules[m] is not None]
        assert not loaded, loaded
        try:
            MetricsMiddleware(lambda scope, receive, send: None)
        except bastion.ConfigurationError as exc:
            assert "bastion[prometheus]" in str(exc), exc
        else:
            raise AssertionError("built without prometheus_client")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_bastion_loads_no_extra_eagerly() -> None:
    """A plain ``import bastion`` in a fresh interpreter imports none of the extras."""
    script = (
        "import sys, bastion; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_missing_otel_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for OpenTelemetry without opentelemetry-api fails at start-up, naming the extra."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"bastion\[otel\]"):
        OTelObserver()
    with pytest.raises(ConfigurationError, match=r"bastion\[otel\]"):
        MetricsMiddleware(_app, settings=MetricsSettings(prometheus=False, otel=True))


def test_exemplars_are_skipped_without_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, Prometheus metrics work and exemplars are simply off."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert trace_exemplar() is None


def test_public_names_are_sorted_and_exported() -> None:
    """The metrics API is part of bastion's sorted ``__all__``."""
    assert bastion.__all__ == sorted(bastion.__all__)
    for name in (
        "MetricsApp",
        "MetricsMiddleware",
        "MetricsSettings",
        "OTelObserver",
        "PrometheusObserver",
        "metrics_app",
    ):
        assert name in bastion.__all__
        assert getattr(bastion, name) is not None


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    return None
