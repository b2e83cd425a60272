"""``/admin`` in a real browser (Debian's chromium driven by Playwright), and over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.reference_service.conftest import ADMIN, WALLETS, Harness
from tests.reference_service.helpers import claim, register
from tests.reference_service.real import ROOT, eventually, free_port, spawn

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.anyio
async def test_the_admin_page_needs_the_token(harness: Harness) -> None:
    """No cookie: the sign-in form; a wrong token: 403; the right one: the page, with a cookie."""
    first = await harness.client.get("/admin")
    assert first.status_code == 200
    assert "name='token'" in first.text
    assert "Dead-letter queue" not in first.text
    wrong = await harness.client.post("/admin/login", data={"token": "nope-nope"})
    assert wrong.status_code == 403
    signed = await harness.client.post("/admin/login", data={"token": ADMIN})
    assert signed.status_code == 303
    assert "httponly" in signed.headers["set-cookie"].lower()
    assert "samesite=strict" in signed.headers["set-cookie"].lower()
    page = await harness.client.get("/admin")
    assert "Dead-letter queue" in page.text
    assert "intent-queue" in page.text
    harness.client.cookies.set("bastion_admin", "x" * 9, path="/admin")
    forged = await harness.client.post("/admin/dlq/1/retry")
    assert forged.status_code == 401


@pytest.mark.anyio
async def test_the_admin_page_retries_a_dead_job(harness: Harness) -> None:
    """The retry form re-enqueues the job and the page no longer lists it."""
    await register(harness.client, WALLETS[0])
    harness.chain.fail_rate = 1.0
    intent = await claim(harness.client, WALLETS[0], "1")
    for _ in range(5):
        await harness.drain()
        harness.clock.advance(60)
    [dead] = (
        await harness.client.get("/api/admin/dlq", headers={"Authorization": f"Bearer {ADMIN}"})
    ).json()["items"]
    harness.chain.fail_rate = 0.0
    await harness.client.post("/admin/login", data={"token": ADMIN})
    assert f"data-job='{dead['id']}'" in (await harness.client.get("/admin")).text
    retried = await harness.client.post(f"/admin/dlq/{dead['id']}/retry")
    assert retried.status_code == 303
    page = (await harness.client.get(retried.headers["location"])).text
    assert "went back to intent-queue" in page
    assert "id='dlq-empty'" in page
    await harness.drain()
    settled = (await harness.client.get(f"/api/intents/{intent['id']}")).json()
    assert settled["status"] == "SETTLED"


@pytest.mark.integration
def test_an_operator_retries_a_dead_job_in_a_browser(tmp_path: Path) -> None:
    """Chromium: sign in, click the DLQ job's Retry, see it leave the list."""
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        reason = "chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)

    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BASTION_SERVICE_")},
        "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'examples/reference_service/src'}",
        "BASTION_SERVICE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/svc.db",
        "BASTION_SERVICE_ADMIN_TOKEN": ADMIN,
        "BASTION_SERVICE_JOB_BACKOFF_SECONDS": "0.01",
    }
    server = spawn(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN}"}

    async def dead_job() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, within=60)
            await register(client, WALLETS[1])
            await client.put("/api/admin/relayer/faults", json={"fail_rate": 1.0}, headers=admin)
            await claim(client, WALLETS[1], "1")

            async def dead() -> dict[str, Any] | None:
                page = (await client.get("/api/admin/dlq", headers=admin)).json()
                return page["items"][0] if page["total"] == 1 else None

            job: dict[str, Any] = await eventually(dead, within=60)
            await client.put("/api/admin/relayer/faults", json={"fail_rate": 0.0}, headers=admin)
            return job

    try:
        job = asyncio.run(dead_job())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            try:
                page = browser.new_page()
                page.goto(f"{base}/admin")
                page.fill("input[name=token]", ADMIN)
                page.click("button[type=submit]")
                button = page.locator(f"button[data-job='{job['id']}']")
                button.wait_for()
                button.click()
                page.locator("#dlq-empty").wait_for()
                assert page.locator(f"button[data-job='{job['id']}']").count() == 0
                assert "went back to intent-queue" in page.content()
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
