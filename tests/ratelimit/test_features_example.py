"""The runnable example in examples/rate_limit_features_app.py keeps working."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.ratelimit.conftest import client

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rate_limit_features_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rate_limit_features_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_each_feature_of_the_example() -> None:
    """Uploads are charged in bytes, premium keys get 10 reports, three failed logins lock
    the client out, and the shadow tier never refuses anything."""
    app = load_example().create_app()
    async with client(app) as http:
        upload = await http.post("/upload", content=b"x" * 1000)
        premium = [(await http.get("/report", headers={"x-api-key": "premium"})) for _ in range(3)]
        basic = [(await http.get("/report", headers={"x-api-key": "basic"})) for _ in range(2)]
        logins = [(await http.post("/login", content=b"guess")).status_code for _ in range(3)]
        locked = await http.post("/login", content=b"open sesame")
    assert upload.headers["ratelimit-policy"] == '"upload-bytes";q=1000000;qu="content-bytes";w=60'
    assert upload.headers["ratelimit"].startswith('"upload-bytes";r=999000;')
    assert [r.status_code for r in premium] == [200, 200, 200]
    assert premium[0].headers["ratelimit-policy"] == '"reports";q=10;w=60'
    assert [r.status_code for r in basic] == [200, 429]
    assert logins == [401, 401, 401]
    assert locked.status_code == 429
    assert locked.json()["violated-policies"] == ["login-failures"]
