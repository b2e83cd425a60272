"""The shipped k6 scripts: they parse, and they name only routes, methods and body fields
the service's OpenAPI document has."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from reference_service.app import create_app
from reference_service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K6 = ROOT / "examples" / "reference_service" / "ops" / "k6"
SCRIPTS = ["register.js", "claim.js"]
ROUTE = re.compile(r"\$\{BASE_URL\}(/[A-Za-z0-9_/{}.-]*)")


def _openapi(tmp_path: Path) -> dict[str, Any]:
    settings = ServiceSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
    document: dict[str, Any] = create_app(settings).openapi()
    return document


def _schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    operation = document["paths"][path]["post"]
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


@pytest.mark.parametrize("name", SCRIPTS)
def test_k6_script_parses(name: str, tmp_path: Path) -> None:
    """Each k6 script is valid JavaScript (an ES module, as k6 reads it)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to check the k6 scripts (apt-get install nodejs)")
    module = tmp_path / name.replace(".js", ".mjs")
    module.write_text((K6 / name).read_text())
    result = subprocess.run([node, "--check", str(module)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_k6_script_names_real_routes_and_fields(name: str, tmp_path: Path) -> None:
    """Every URL a script builds is a POST route of the OpenAPI document, every field that
    route requires appears in the script, and every POST sends an Idempotency-Key."""
    source = (K6 / name).read_text()
    document = _openapi(tmp_path)
    routes = set(ROUTE.findall(source))
    assert routes, "the script names no route"
    for route in routes:
        assert route in document["paths"], f"{route} is not a route of the service"
        assert "post" in document["paths"][route], f"{route} takes no POST"
        for required in _schema(document, route).get("required", []):
            assert re.search(rf"\b{required}\b", source), f"{route} needs {required!r}"
    assert "'Idempotency-Key'" in source
    assert "txHash" not in source  # the original plan's name; the service answers tx_hash
