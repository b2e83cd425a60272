"""The public surface is deliberate: this test fails when it drifts.

Every public module is listed here with its exact ``__all__``; every other module lives
under a private name (``_name.py`` or inside a ``_package``). A name a public module defines
or re-exports without a leading underscore is either exported or listed in ``NOT_EXPORTED``,
so a new public-looking name is a decision someone made, not an accident.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

PUBLIC: dict[str, list[str]] = {
    "bastion": [
        "BastionError",
        "ConfigurationError",
        "IdempotencyMiddleware",
        "IdempotencySettings",
        "MetricsApp",
        "MetricsMiddleware",
        "MetricsSettings",
        "MultiObserver",
        "NullObserver",
        "OTelObserver",
        "Observer",
        "PrometheusObserver",
        "RateLimitMiddleware",
        "RateLimitSettings",
        "StoreError",
        "StoreUnavailable",
        "Tier",
        "TransactionError",
        "metrics_app",
    ],
    "bastion.exceptions": [
        "BastionError",
        "ConfigurationError",
        "MissingExtraError",
        "StoreCapacityError",
        "StoreError",
        "StoreUnavailable",
        "TransactionError",
    ],
    "bastion.typing": [
        "ASGIApp",
        "Clock",
        "Message",
        "PrincipalExtractor",
        "Receive",
        "Scope",
        "Send",
    ],
    "bastion.check": ["CHECKS", "Report", "Result", "Sleep", "Target", "run_checks"],
    "bastion.check.pytest_plugin": [
        "bastion_check",
        "bastion_client",
        "bastion_sleep",
        "bastion_target",
        "pytest_addoption",
    ],
    "bastion.fastapi": ["document"],
    "bastion.openapi": ["PROBLEM_SCHEMA", "Coverage", "coverage", "describe"],
    "bastion.observe": [
        "NULL_OBSERVER",
        "IdempotencyOutcome",
        "MultiObserver",
        "NullObserver",
        "Observer",
        "RateLimitOutcome",
        "timed",
    ],
    "bastion.testing": [
        "PRIMITIVES",
        "FakeClock",
        "FaultyStore",
        "Hang",
        "assert_conflict",
        "assert_mismatch",
        "assert_rate_limited",
        "assert_replayed",
    ],
    "bastion.idempotency": [
        "SCOPE_KEY",
        "IdempotencyContext",
        "IdempotencyMiddleware",
        "IdempotencySettings",
        "IdempotentTransaction",
        "default_principal",
        "transaction",
    ],
    "bastion.ratelimit": [
        "AddressResolver",
        "LimitOverrides",
        "RateLimitMiddleware",
        "RateLimitSettings",
        "Tier",
        "presets",
    ],
    "bastion.ratelimit.costs": [
        "Cost",
        "InvalidCost",
        "content_length",
        "custom",
        "header",
    ],
    "bastion.ratelimit.keys": [
        "CLIENT_ADDRESS",
        "MISSING",
        "KeyExtractor",
        "RequestView",
        "client_address",
        "custom",
        "first_of",
        "header",
        "json_field",
        "query_param",
    ],
    "bastion.metrics": [
        "BASTION_LABEL",
        "DEFAULT_DURATION_BUCKETS",
        "DEFAULT_SIZE_BUCKETS",
        "DEFAULT_STORE_BUCKETS",
        "UNMATCHED_LABEL",
        "MetricsApp",
        "MetricsMiddleware",
        "MetricsSettings",
        "OTelObserver",
        "PrometheusObserver",
        "metrics_app",
    ],
    "bastion.stores": [
        "CircuitBreaker",
        "Claim",
        "ClaimHitStore",
        "ConcurrencyStore",
        "IdempotencyStore",
        "MemoryStore",
        "RateLimitDecision",
        "RateLimitHit",
        "RateLimitStore",
        "RedisStore",
        "SQLStore",
        "SlotDecision",
        "SlotRequest",
        "Store",
        "TierValidatingStore",
        "TransactionalIdempotencyStore",
        "from_url",
    ],
    "bastion.stores.sql": [
        "DEFAULT_PREFIX",
        "SQLStore",
        "SQLTables",
        "build_metadata",
        "define_tables",
        "metadata",
    ],
}

NOT_EXPORTED: dict[str, set[str]] = {
    # used across bastion, documented as a helper, not part of `from ... import *`
    "bastion.exceptions": {"missing_extra"},
    "bastion.ratelimit.keys": {"MAX_PLAIN_KEY"},
    "bastion.ratelimit.costs": {"BodyNotMeasurable", "MAX_COST_DIGITS"},
    "bastion.observe": {"T"},
}
"""Public-looking names a public module binds but does not export, each kept on purpose."""


def _module_names() -> list[str]:
    names = []
    for path in sorted((SRC / "bastion").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _bound_names(module: str) -> set[str]:
    """Names the module binds at top level by definition or assignment, and for a package
    also by importing from bastion (what an ``__init__`` imports it re-exports; a plain
    module's imports, like the standard library's in any module, are not its surface)."""
    path = SRC / Path(*module.split("."))
    is_package = path.is_dir()
    path = path / "__init__.py" if is_package else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    bound: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                bound.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                bound.update(t.id for t in targets if isinstance(t, ast.Name))
            elif (
                is_package
                and isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("bastion")
            ):
                bound.update(alias.asname or alias.name for alias in node.names)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)

    visit(tree.body)
    return {name for name in bound if not name.startswith("_")}


def test_every_module_is_public_or_private_by_name() -> None:
    """A module is either listed as public here or has a private name: none is public by
    accident."""
    public_by_name = [
        name for name in _module_names() if not any(p.startswith("_") for p in name.split("."))
    ]
    assert sorted(public_by_name) == sorted(PUBLIC)


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_exports_are_exactly_the_pinned_names(module: str) -> None:
    """``__all__`` is exactly the pinned list, and every name in it can be imported."""
    mod = importlib.import_module(module)
    assert list(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_bound_by_a_module_are_exported(module: str) -> None:
    """Every public-looking name a module defines or re-exports is in ``__all__`` or pinned
    as deliberately not exported; ``__all__`` names nothing the module cannot give."""
    bound = _bound_names(module)
    exported = set(PUBLIC[module])
    assert bound - exported == NOT_EXPORTED.get(module, set())
    mod = importlib.import_module(module)
    lazy = exported - bound  # served by the module's __getattr__ on first use
    for name in lazy:
        assert name not in vars(mod) or vars(mod)[name] is getattr(mod, name)
        assert getattr(mod, name) is not None


def test_import_needs_only_starlette_and_anyio() -> None:
    """``import bastion`` works with redis, sqlalchemy, prometheus, otel, fastapi and httpx
    unavailable, and so do the OpenAPI helpers."""
    blocked = [
        "redis",
        "sqlalchemy",
        "prometheus_client",
        "opentelemetry",
        "asyncpg",
        "fastapi",
        "httpx",
    ]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "import bastion, bastion.stores, bastion.idempotency, bastion.ratelimit\n"
        "import bastion.metrics, bastion.testing, bastion.openapi, bastion.fastapi\n"
        "from bastion.stores import MemoryStore\n"
        f"loaded = [m for m in {blocked!r} if sys.modules.get(m) is not None]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
