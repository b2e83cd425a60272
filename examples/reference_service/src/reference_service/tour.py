"""``bastion-service tour [URL]``: drive a running service as a client, and narrate.

Each step prints the request, the answer and what it shows. The admin steps use
``BASTION_SERVICE_ADMIN_TOKEN`` and the signed webhook ``BASTION_SERVICE_WEBHOOK_SECRET``
(the embedded defaults when unset, the same ones ``serve`` uses). The whole tour takes about
half a minute: it waits out one relayer timeout and one job's five attempts.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from reference_service.settings import ServiceSettings
from reference_service.wallets import checksum_address
from reference_service.webhooks import SIGNATURE_HEADER, sign

__all__ = ["run_tour"]

SIGNATURE = "0x" + "1b" * 65
WATCHED = (
    "bastion_idempotency_decisions_total",
    "bastion_ratelimit_decisions_total",
    "bastion_service_intents",
    "bastion_service_webhook_verification_failures_total",
    "bastion_service_webhook_events_total",
    "bastion_service_dlq_jobs",
    "bastion_service_relayer_balance_eth",
    "bastion_service_ledger_balance",
)


class TourFailed(Exception):
    pass


class Narrator:
    def __init__(self, color: bool) -> None:
        self.color = color
        self.step = 0

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, text: str) -> None:
        self.step += 1
        print("\n" + self._c("1;36", f"{self.step}. {text}"))

    def request(self, method: str, path: str, note: str = "") -> None:
        print("   " + self._c("2", f"→ {method} {path}" + (f"  ({note})" if note else "")))

    def answer(self, response: httpx.Response, *fields: str) -> None:
        status = response.status_code
        code = "32" if status < 300 else "33" if status < 500 else "31"
        print("   " + self._c(code, f"← {status} {response.reason_phrase}"))
        for name in fields:
            if name in response.headers:
                print("     " + self._c("2", f"{name}: {response.headers[name]}"))
        text = response.text
        if text:
            print("     " + (text if len(text) <= 300 else text[:297] + "..."))

    def note(self, text: str) -> None:
        print("   " + self._c("35", text))


def _samples(text: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(WATCHED) and not sample.name.endswith("_created"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def _expect(response: httpx.Response, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        hint = ""
        if response.status_code == 429:
            hint = (
                " (a rate limit from an earlier run; restart the service, whose limits live in "
                "memory in embedded mode, or wait for the Retry-After)"
            )
        raise TourFailed(f"expected {statuses}, got {response.status_code}: {response.text}{hint}")
    return response


def _wait_for(
    client: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.25)


def tour(client: httpx.Client, settings: ServiceSettings, say: Narrator) -> None:
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    run = uuid.uuid4().hex[:8]
    key_counter = iter(range(1, 1000))

    def key() -> dict[str, str]:
        return {"Idempotency-Key": f"tour-{run}-{next(key_counter)}"}

    before = _samples(_expect(client.get("/metrics"), 200).text)
    wallet = checksum_address("0x" + secrets.token_hex(20))

    say.title("Register a wallet through the relayer")
    say.request("POST", "/api/register", wallet)
    say.answer(_expect(client.post("/api/register", json={"wallet": wallet}, headers=key()), 201))

    say.title("Prepare a claim, record it, then retry the record: a replay, not a second claim")
    prepare = {"wallet": wallet, "program_id": settings.programs[0].id, "amount": "25"}
    say.request("POST", "/api/claim/prepare", json.dumps(prepare))
    prepared = _expect(client.post("/api/claim/prepare", json=prepare, headers=key()), 200)
    say.answer(prepared)
    record = {"wallet": wallet, "claim_id": prepared.json()["claim_id"], "signature": SIGNATURE}
    record_key = key()
    say.request("POST", "/api/claim/record", f"Idempotency-Key: {record_key['Idempotency-Key']}")
    first = _expect(client.post("/api/claim/record", json=record, headers=record_key), 202)
    say.answer(first)
    say.request("POST", "/api/claim/record", "the same key and body again")
    again = _expect(client.post("/api/claim/record", json=record, headers=record_key), 202)
    say.answer(again, "idempotent-replayed")
    say.note("byte-identical: " + str(again.content == first.content))

    say.title("The same key with another body: 422, never run")
    other = {**record, "signature": "0x" + "2c" * 65}
    say.request("POST", "/api/claim/record", "same key, another signature")
    say.answer(_expect(client.post("/api/claim/record", json=other, headers=record_key), 422))

    say.title("A duplicate while the first is still running: 409")
    _expect(client.put("/api/admin/relayer/faults", json={"hang_rate": 1.0}, headers=admin), 200)
    say.note("the simulated relayer now hangs every send (admin API)")
    slow_wallet = checksum_address("0x" + secrets.token_hex(20))
    slow_key = key()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            client.post, "/api/register", json={"wallet": slow_wallet}, headers=slow_key
        )
        time.sleep(0.5)
        say.request("POST", "/api/register", "same key, while the first waits on the relayer")
        say.answer(
            _expect(
                client.post("/api/register", json={"wallet": slow_wallet}, headers=slow_key), 409
            ),
            "retry-after",
        )
        say.note(
            "the first gives up after the relayer timeout "
            f"({settings.relayer_timeout_seconds:g} s)..."
        )
        first_slow = slow.result()
    say.answer(first_slow, "retry-after")
    say.note("a 5xx is not stored: the key is free again for a retry")
    _expect(client.put("/api/admin/relayer/faults", json={}, headers=admin), 200)

    say.title("Over the claim tier: 429 with its RateLimit fields")
    spender = checksum_address("0x" + secrets.token_hex(20))
    body = {"wallet": spender, "program_id": prepare["program_id"], "amount": "1"}
    limited = None
    for _ in range(10_000):
        response = client.post("/api/claim/prepare", json=body, headers=key())
        if response.status_code == 429:
            limited = response
            break
    if limited is None:
        raise TourFailed("the claim tier never answered 429")
    say.request("POST", "/api/claim/prepare", f"again and again for {spender}")
    say.answer(limited, "ratelimit-policy", "ratelimit", "retry-after")

    say.title("Webhooks: a forged signature is refused, a signed event is applied once")
    event = {
        "event": {
            "id": f"evt_{run}",
            "type": "payment.succeeded",
            "data": {"program_id": prepare["program_id"], "amount": "100"},
        }
    }
    raw = json.dumps(event).encode()
    forged = sign("not-the-secret", raw)
    say.request("POST", "/api/commerce/webhook", "signed with the wrong secret")
    say.answer(
        _expect(
            client.post("/api/commerce/webhook", content=raw, headers={SIGNATURE_HEADER: forged}),
            401,
        )
    )
    signed = {
        SIGNATURE_HEADER: sign(settings.webhook_secret, raw),
        "content-type": "application/json",
    }
    for note in ("signed", "the provider delivers it again"):
        say.request("POST", "/api/commerce/webhook", note)
        say.answer(_expect(client.post("/api/commerce/webhook", content=raw, headers=signed), 200))

    say.title("The recorded claim settles on the simulated chain")
    intent_id = first.json()["id"]
    say.request("GET", f"/api/intents/{intent_id}")
    settled = _wait_for(client, f"/api/intents/{intent_id}", lambda b: b["status"] == "SETTLED", 30)
    say.note(f"status {settled['status']}, tx {settled['tx_hash']}")

    say.title("A job that fails 5 times lands in the dead-letter queue, then is retried")
    _expect(client.put("/api/admin/relayer/faults", json={"fail_rate": 1.0}, headers=admin), 200)
    say.note("every send now fails; backoff waits 1, 2, 4 and 8 s between the 5 attempts...")
    v2 = {**prepare, "amount": "5", "signature": SIGNATURE}
    doomed = _expect(client.post("/api/v2/claims", json=v2, headers=key()), 202).json()["intent"]
    failed = _wait_for(
        client, f"/api/intents/{doomed['id']}", lambda b: b["status"] == "FAILED", 60
    )
    say.note(
        f"intent {failed['status']} after {failed['attempts']} attempts: {failed['last_error']}"
    )
    say.request("GET", "/api/admin/dlq")
    page = _expect(client.get("/api/admin/dlq", headers=admin), 200)
    say.answer(page)
    dead = next(
        (j for j in page.json()["items"] if j["data"].get("intent_id") == doomed["id"]), None
    )
    if dead is None:
        raise TourFailed("the failed job is not in the dead-letter queue")
    _expect(client.put("/api/admin/relayer/faults", json={}, headers=admin), 200)
    say.note("the relayer is healthy again")
    say.request("POST", f"/api/admin/dlq/{dead['id']}/retry")
    say.answer(_expect(client.post(f"/api/admin/dlq/{dead['id']}/retry", headers=admin), 202))
    retried = _wait_for(
        client, f"/api/intents/{doomed['id']}", lambda b: b["status"] == "SETTLED", 30
    )
    say.note(f"intent {retried['status']}, tx {retried['tx_hash']}")

    say.title("What moved in /metrics")
    after = _samples(_expect(client.get("/metrics"), 200).text)
    for name in sorted(after):
        delta = after[name] - before.get(name, 0.0)
        if delta:
            print(f"   {name} {after[name]:g} ({delta:+g})")


def run_tour(url: str, settings: ServiceSettings, *, color: bool | None = None) -> int:
    if color is None:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    say = Narrator(color)
    print(f"Touring {url}")
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            tour(client, settings, say)
    except (TourFailed, httpx.HTTPError) as exc:
        print(f"\nbastion-service tour: {exc}", file=sys.stderr)
        return 1
    print("\nDone: every step answered as expected.")
    return 0
