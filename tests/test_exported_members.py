"""The public surface is deliberate: this test fails when it drifts."""

from __future__ import annotations

import subprocess
import sys

import bastion


def test_all_is_sorted_and_complete() -> None:
    """Every name in ``bastion.__all__`` exists, and the list is sorted."""
    assert bastion.__all__ == sorted(bastion.__all__)
    for name in bastion.__all__:
        assert getattr(bastion, name) is not None


def test_import_needs_only_starlette_and_anyio() -> None:
    """``import bastion`` works with redis, sqlalchemy, prometheus and otel unavailable."""
    blocked = ["redis", "sqlalchemy", "prometheus_client", "opentelemetry", "asyncpg"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None\n"
        "import bastion, bastion.stores\n"
        "from bastion.stores import MemoryStore\n"
        f"loaded = [m for m in {blocked!r} if sys.modules.get(m) is not None]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
