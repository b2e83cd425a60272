"""Locust users for the reference service's two load scenarios, and the ramp they follow.

``RegisterUser`` signs wallets up, every request with an ``Idempotency-Key``; a share is
retried with the same key, some of them concurrently, and a relayer failure (503) is retried
with the same key as the service asks. Each iteration speaks for one of a pool of client
addresses through ``X-Forwarded-For``, so the register tier (5 per hour per address) limits
some addresses and not others: its 429s are outcomes to count, not failures.

``ClaimUser`` registers a few wallets, then prepares and records claims with keys: a share
of concurrent duplicates, of payload mismatches (the same key, another body), of plain
retries, and of a second key for an already recorded claim.

Every request is two JSON lines in ``--events-file``: one written before it is sent
(``"phase": "sent"``) and one when it ends, with its answer, or ``"stopped": true`` when the
user was stopped while it was in flight. The audit reads them, the database and the server's
counters, and compares: a request that has no answer in the log is one whose effect the client
cannot know, and the audit counts it as such instead of missing it. ``--max-requests`` and the
ramp's ``--load-seconds`` bound a run; users stop after their current iteration, within
Locust's ``--stop-timeout``.
"""

from __future__ import annotations

import json
import random
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any

import gevent
from gevent import GreenletExit
from gevent.pool import Group
from locust import FastHttpUser, LoadTestShape, between, events, task
from locust.env import Environment
from locust.exception import StopUser

SIGNATURE = "0x" + "ab" * 65
AMOUNTS = ("0.5", "1", "2.25", "3.000001")
DUPLICATES = 3
"""How many copies of a request a concurrent duplicate sends at once."""


class _Log:
    """The run's event log and running totals (one Locust process, many greenlets)."""

    def __init__(self) -> None:
        self.file: Any = None
        self.count = 0
        self.statuses: Counter[int] = Counter()
        self.max_requests = 0
        self.stopping = False
        self.lock = threading.Lock()

    def sent(self, event: dict[str, Any]) -> None:
        with self.lock:
            self._line({**event, "phase": "sent"})

    def stopped(self, event: dict[str, Any]) -> None:
        with self.lock:
            self._line({**event, "stopped": True})

    def write(self, event: dict[str, Any]) -> None:
        with self.lock:
            self._line(event)
            self.count += 1
            self.statuses[event["status"]] += 1
            if self.max_requests and self.count >= self.max_requests:
                self.stopping = True

    def _line(self, event: dict[str, Any]) -> None:
        self.file.write(json.dumps(event, separators=(",", ":")) + "\n")


LOG = _Log()
OPTIONS: dict[str, Any] = {}


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    parser.add_argument("--events-file", default="events.jsonl", help="one JSON line per answer")
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="the ramp's length")
    parser.add_argument("--peak-users", type=int, default=50, help="users at the burst")
    parser.add_argument("--program", default="load", help="the program claims draw on")
    parser.add_argument("--addresses", type=int, default=200, help="client addresses (register)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0: random)")
    parser.add_argument(
        "--duplicate-share",
        type=float,
        default=0.15,
        help="share of keyed requests sent as concurrent copies",
    )


@events.init.add_listener  # type: ignore[untyped-decorator]
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    OPTIONS.update(vars(options))
    LOG.file = open(options.events_file, "a", buffering=1)  # noqa: SIM115 - open for the run
    LOG.max_requests = options.max_requests
    if options.seed:
        random.seed(options.seed)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _progress(environment: Environment, **_: Any) -> None:
    def report() -> None:
        started = time.monotonic()
        last, last_at = 0, started
        while True:
            gevent.sleep(5)
            now = time.monotonic()
            runner = environment.runner
            users = runner.user_count if runner is not None else 0
            s = LOG.statuses
            fivexx = sum(n for status, n in s.items() if status >= 500)
            print(
                f"[load] {now - started:5.0f}s users={users:4d} requests={LOG.count:6d} "
                f"({(LOG.count - last) / (now - last_at):6.1f}/s) "
                f"2xx={sum(n for st, n in s.items() if 200 <= st < 300)} "
                f"409={s[409]} 422={s[422]} 429={s[429]} 5xx={fivexx} none={s[0]}",
                flush=True,
            )
            last, last_at = LOG.count, now

    gevent.spawn(report)


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _close(environment: Environment, **_: Any) -> None:
    if LOG.file is not None:
        LOG.file.flush()
    # the audit judges the run; Locust's own failure ratio must not decide the exit status
    environment.process_exit_code = 0


def _key(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}"


def _wallet() -> str:
    return "0x" + secrets.token_hex(20)


class _Service(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.2)
    network_timeout = 120.0
    connection_timeout = 30.0

    def post(
        self,
        op: str,
        variant: str,
        path: str,
        key: str,
        body: dict[str, Any],
        address: str | None = None,
    ) -> dict[str, Any]:
        """POST, log the answer as one event, and return that event (with the body's ids).
        A connection that closed before any answer (a stale keep-alive) is retried with the
        same key, as a client should: the key makes the retry safe."""
        event = self._post(op, variant, path, key, body, address)
        for _ in range(3):
            if event["status"] != 0:
                break
            event = self._post(op, variant, path, key, body, address)
        return event

    def _post(
        self,
        op: str,
        variant: str,
        path: str,
        key: str,
        body: dict[str, Any],
        address: str | None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        if address is not None:
            headers["X-Forwarded-For"] = address
        started = time.time()
        event: dict[str, Any] = {
            "rid": secrets.token_hex(8),
            "t": started,
            "op": op,
            "variant": variant,
            "key": key,
            "addr": address,
            "wallet": body.get("wallet"),
        }
        LOG.sent(event)
        try:
            return self._send(event, path, body, headers)
        except GreenletExit:
            LOG.stopped({**event, "ms": (time.time() - started) * 1000})
            raise

    def _send(
        self, event: dict[str, Any], path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        started, op = event["t"], event["op"]
        with self.client.post(
            path, data=json.dumps(body), headers=headers, catch_response=True, name=op
        ) as response:
            status = response.status_code or 0
            event["ms"] = (time.time() - started) * 1000
            event["status"] = status
            answered = response.headers or {}
            event["replayed"] = answered.get("idempotent-replayed") == "true"
            if status == 0:
                event["error"] = repr(response.error)[:200]
            payload: Any = None
            if status and response.text:
                try:
                    payload = json.loads(response.text)
                except ValueError:
                    payload = None
            if isinstance(payload, dict):
                kind = payload.get("type")
                if isinstance(kind, str) and status >= 400:
                    # the problem type's last segment, from a URL or a URN alike
                    event["ptype"] = kind.replace(":", "/").rstrip("/").rsplit("/", 1)[-1]
                for field in ("claim_id", "id", "tx_hash"):
                    if isinstance(payload.get(field), str):
                        event[field] = payload[field]
            if status == 0 or (status >= 500 and event.get("ptype") != "relayer-unavailable"):
                response.failure(f"{status} {event.get('ptype', '')}")
            else:
                response.success()
        LOG.write(event)
        return event

    def together(self, n: int, call: Any) -> list[dict[str, Any]]:
        """``n`` copies of ``call`` at once: concurrent duplicates of one keyed request."""
        group = Group()
        greenlets = [group.spawn(call) for _ in range(n)]
        try:
            group.join()
        finally:
            # a user killed here (past --stop-timeout) must take its copies with it: left
            # running they would be cut off unlogged when the process exits
            group.kill()
        return [g.value for g in greenlets if g.value is not None]

    def check_stop(self) -> None:
        """Stop before an iteration rather than in it. Locust kills a user it stops while the
        user waits between iterations, but gevent delivers the kill through the hub's callback
        queue: a user whose wake-up was already queued starts its next iteration first, and
        the kill would land on a request the server handles and the log never answers. Such
        a user is already in its group's ``dying`` set."""
        if LOG.stopping or self.greenlet in self.group.dying:
            raise StopUser()


class RegisterUser(_Service):
    """Sign-ups: keys always, retries with the same key, concurrent duplicates."""

    @task
    def register(self) -> None:
        self.check_stop()
        wallet, key = _wallet(), _key("reg")
        n = random.randrange(OPTIONS["addresses"])
        address = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"

        def send(variant: str) -> dict[str, Any]:
            return self.post("register", variant, "/api/register", key, {"wallet": wallet}, address)

        roll = random.random()
        share = OPTIONS["duplicate_share"]
        dup = roll < share
        answers = self.together(DUPLICATES, lambda: send("dup")) if dup else [send("first")]
        tries = 0
        while tries < 5 and not any(a["status"] == 201 for a in answers):
            if not any(a["status"] in (503, 409) for a in answers):
                break  # a 429 or a refusal: this client gives up on this address
            gevent.sleep(0.2)
            answers = [send("retry")]
            tries += 1
        if share <= roll < share + 0.2 and any(a["status"] == 201 for a in answers):
            send("retry")


class ClaimUser(_Service):
    """Claims: prepare then record, with duplicates, mismatches, retries and re-keying."""

    wallets: list[str]

    def on_start(self) -> None:
        self.wallets = []
        for _ in range(3):
            wallet, key = _wallet(), _key("setup")
            for _attempt in range(10):
                n = random.randrange(1 << 20)
                address = f"172.{16 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"
                event = self.post(
                    "register", "setup", "/api/register", key, {"wallet": wallet}, address
                )
                if event["status"] == 201:
                    self.wallets.append(wallet)
                    break
                gevent.sleep(0.2)
        if not self.wallets:
            raise StopUser()

    @task
    def claim(self) -> None:
        self.check_stop()
        wallet = random.choice(self.wallets)
        body = {
            "wallet": wallet,
            "program_id": OPTIONS["program"],
            "amount": random.choice(AMOUNTS),
        }
        key = _key("prep")

        def prepare(variant: str, payload: dict[str, Any] = body) -> dict[str, Any]:
            return self.post("prepare", variant, "/api/claim/prepare", key, payload)

        if random.random() < OPTIONS["duplicate_share"]:
            answers = self.together(DUPLICATES, lambda: prepare("dup"))
        else:
            answers = [prepare("first")]
        claim_id = next((a["claim_id"] for a in answers if a["status"] == 200), None)
        if claim_id is None:
            return
        if random.random() < 0.10:
            other = next(a for a in AMOUNTS if a != body["amount"])
            prepare("mismatch", {**body, "amount": other})
        if random.random() < 0.15:
            prepare("retry")

        record_key = _key("rec")
        recorded = {"wallet": wallet, "claim_id": claim_id, "signature": SIGNATURE}

        def record(
            variant: str, payload: dict[str, Any] = recorded, k: str = record_key
        ) -> dict[str, Any]:
            return self.post("record", variant, "/api/claim/record", k, payload)

        if random.random() < OPTIONS["duplicate_share"]:
            self.together(DUPLICATES, lambda: record("dup"))
        else:
            record("first")
        if random.random() < 0.10:
            record("mismatch", {**recorded, "signature": "0x" + "cd" * 65})
        if random.random() < 0.15:
            record("retry")
        if random.random() < 0.05:
            record("rekey", k=_key("rec"))


class Ramp(LoadTestShape):
    """Ramp to a fifth of the peak over 30 % of the run, burst to the peak over the next
    50 %, ramp down over the last 20 %; then stop (users finish their iteration first)."""

    def tick(self) -> tuple[int, float] | None:
        if LOG.stopping:
            return None
        total = float(OPTIONS.get("load_seconds", 60.0))
        peak = int(OPTIONS.get("peak_users", 50))
        t = self.get_run_time()  # type: ignore[no-untyped-call]
        if t >= total:
            return None
        if t < 0.3 * total:
            users = max(1, round(peak / 5 * t / (0.3 * total)))
        elif t < 0.8 * total:
            users = peak
        else:
            users = max(1, round(peak * (total - t) / (0.2 * total)))
        return users, max(1.0, peak / max(1.0, 0.1 * total))


if __name__ == "__main__":  # pragma: no cover - run through `locust -f`
    sys.exit("run this file with `locust -f`, or `python -m loadtest`")
