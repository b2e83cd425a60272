"""The audit after a load run: what the clients saw against what the service recorded.

It reads the Locust event log, the service's database (claims, intents, ledger entries and
bastion's stored idempotent responses), the dead-letter queue through the admin API, and
the server's counters summed over every process from ``PROMETHEUS_MULTIPROC_DIR``. Each
invariant that breaks is one line of ``failures``; the run's exit status is their absence.
Requests the clients cannot vouch for (`loadtest.clientlog`) are counted as such: exact
comparisons wherever both sides know, bounded ones where only the server can.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bastion._core.records import StoredResponse
from bastion.idempotency._keys import scoped_key
from loadtest.clientlog import ClientLog
from loadtest.counters import (
    compare_family,
    family_figures,
    metric_processes,
    server_counters,
    wait_quiet,
)
from loadtest.stack import Stack

__all__ = ["Audit", "percentile", "run_audit", "server_counters"]

IDEMPOTENCY_OUTCOMES = (
    "stored",
    "replayed",
    "conflict_in_flight",
    "payload_mismatch",
    "released",
    "store_error",
    "missing_key",
    "invalid_key",
    "request_too_large",
    "lease_lost",
    "record_unreadable",
)
NEVER = ("store_error", "missing_key", "invalid_key", "request_too_large", "lease_lost")
TIER_OF = {"register": "register", "prepare": "claim", "record": "claim"}
EXPECTED_5XX = {("register", "relayer-unavailable")}
"""A relayer failure on sign-up is a 503 the client retries with the same key: the fault
injection's visible effect, counted, not a server error."""


@dataclass
class Audit:
    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


_IDEMPOTENCY_ANSWERS = (
    "idempotency-key-in-flight",
    "idempotency-key-reused",
    "idempotency-key-invalid",
    "idempotency-key-missing",
    "request-too-large",
)


def _charged(event: dict[str, Any]) -> bool:
    """Whether the rate limiter decided this answer: bastion charges a keyed request only once
    its idempotency claim says it is fresh, never a replay, a 409 or a 422."""
    return not (event["replayed"] or event.get("ptype") in _IDEMPOTENCY_ANSWERS)


def _fresh(event: dict[str, Any]) -> bool:
    """Whether the handler ran for this answer (not a replay, a refusal or a 429)."""
    return not (
        event["replayed"]
        or event["status"] in (0, 429)
        or event.get("ptype") in ("idempotency-key-in-flight", "idempotency-key-reused")
    )


async def _settle(stack: Stack, audit: Audit, within: float) -> None:
    """Wait (bounded) until no intent is PENDING or PROCESSING: the workers' retries and
    backoff finish what the load left in flight."""
    from reference_service.db.engine import create_engine

    engine = create_engine(stack.database_url)
    started = time.monotonic()
    try:
        while True:
            async with engine.connect() as conn:
                open_ = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM intents WHERE status IN ('PENDING','PROCESSING')"
                        )
                    )
                ).scalar_one()
            waited = time.monotonic() - started
            if not open_:
                audit.say(
                    f"settlement: every intent settled or failed {waited:.1f}s after the load"
                )
                audit.figures["settle_seconds"] = round(waited, 1)
                return
            if waited > within:
                audit.failures.append(f"{open_} intents still open {within:.0f}s after the load")
                return
            print(f"[audit] waiting for {open_} open intents ({waited:.0f}s)", flush=True)
            await asyncio.sleep(2.0)
    finally:
        await engine.dispose()


async def _database(stack: Stack) -> dict[str, Any]:
    from reference_service.db.engine import create_engine

    engine = create_engine(stack.database_url)
    try:
        async with engine.connect() as conn:

            async def rows(sql: str) -> list[Any]:
                return list((await conn.execute(text(sql))).all())

            return {
                "wallets": await rows("SELECT address FROM wallets"),
                "claims": await rows("SELECT id, status FROM claims"),
                "intents": await rows("SELECT id, claim_id, status, tx_hash FROM intents"),
                "entries": await rows(
                    "SELECT intent_id, count(*), sum(amount_units) FROM ledger_entries "
                    "GROUP BY intent_id"
                ),
                "programs": await rows(
                    "SELECT p.id, coalesce(sum(e.amount_units), 0) FROM programs p "
                    "LEFT JOIN ledger_entries e ON e.program_id = p.id GROUP BY p.id"
                ),
                "records": await rows("SELECT key, response FROM bastion_records"),
            }
    finally:
        await engine.dispose()


def _dlq(stack: Stack) -> set[str]:
    """The intent ids whose jobs wait in the dead-letter queue (every page)."""
    found: set[str] = set()
    offset: int | None = 0
    while offset is not None:
        response = httpx.get(
            f"{stack.url}/api/admin/dlq",
            params={"offset": offset, "limit": 200},
            headers=stack.admin,
            timeout=30.0,
        )
        response.raise_for_status()
        page = response.json()
        found.update(str(job["data"].get("intent_id")) for job in page["items"])
        offset = page.get("next_offset")
    return found


def _stored(records: Iterable[Any]) -> dict[str, tuple[int, dict[str, Any]]]:
    """bastion's completed records: store key -> (status, JSON body)."""
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for key, blob in records:
        if blob is None:
            continue
        response = StoredResponse.decode(bytes(blob))
        try:
            body = json.loads(response.body) if response.body else {}
        except ValueError:
            body = {}
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name] = (response.status, body if isinstance(body, dict) else {})
    return out


def _store_key(event: dict[str, Any]) -> str:
    # uvicorn believes X-Forwarded-For from loopback, so the request's client address (the
    # idempotency principal) is the forwarded one when the load generator sent one
    return scoped_key(f"addr:{event.get('addr') or '127.0.0.1'}", event["key"])


def run_audit(
    stack: Stack,
    log: ClientLog,
    scenario: str,
    *,
    register_limit: int,
    settle_within: float = 300.0,
    quiet_within: float = 30.0,
    plot: Path | None = None,
) -> Audit:
    audit = Audit(scenario)
    say = audit.say
    say(f"== audit: {scenario} ==")
    events = log.answers
    statuses = Counter(e["status"] for e in events)
    by_op = Counter((e["op"], e["status"]) for e in events)
    say(f"requests: {len(events)}  by status: {dict(sorted(statuses.items()))}")
    for op in sorted({e["op"] for e in events}):
        answers = {s: n for (o, s), n in sorted(by_op.items()) if o == op}
        say(f"  {op:9s} {answers}")
    latencies = [e["ms"] for e in events]
    start = min((e["t"] for e in events), default=0.0)
    end = max((e["t"] + e["ms"] / 1000 for e in events), default=0.0)
    seconds = max(end - start, 1e-9)
    p = {q: percentile(latencies, q) for q in (50, 95, 99)}
    say(
        f"latency ms: p50 {p[50]:.1f}  p95 {p[95]:.1f}  p99 {p[99]:.1f}   "
        f"throughput: {len(events) / seconds:.1f} req/s over {seconds:.1f}s"
    )
    audit.figures.update(
        requests=len(events),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        by_op={f"{o} {s}": n for (o, s), n in sorted(by_op.items())},
        p50_ms=round(p[50], 1),
        p95_ms=round(p[95], 1),
        p99_ms=round(p[99], 1),
        throughput_rps=round(len(events) / seconds, 1),
        seconds=round(seconds, 1),
    )
    audit.check(bool(events), "no request was made")

    # 5xx and unanswered requests
    fivexx = Counter((e["op"], e.get("ptype", "")) for e in events if e["status"] >= 500)
    unexpected = {k: n for k, n in fivexx.items() if k not in EXPECTED_5XX}
    expected = sum(n for k, n in fivexx.items() if k in EXPECTED_5XX)
    say(
        f"5xx: {sum(fivexx.values())} ({expected} relayer-unavailable 503 on register, "
        f"injected and retried with the same key; unexpected: {sum(unexpected.values())})"
    )
    audit.figures.update(injected_503=expected, unexpected_5xx=sum(unexpected.values()))
    audit.check(not unexpected, f"unexpected 5xx answers: {unexpected}")
    lost = log.unanswered_keys()
    say(f"connections closed before an answer: {statuses[0]} (retried with the same key)")
    audit.figures["unanswered_retried"] = statuses[0]
    audit.check(not lost, f"{len(lost)} keys never got an answer")
    doubt = log.in_doubt
    kinds = log.doubt_by_kind()
    say(
        f"requests in doubt (no answer, so the server may or may not have counted them): "
        f"{len(doubt)} ({', '.join(f'{kind}: {n}' for kind, n in kinds.items())})"
    )
    audit.figures.update(in_doubt=len(doubt), in_doubt_by_kind=kinds)
    events = log.answered

    asyncio.run(_settle(stack, audit, settle_within))
    db = asyncio.run(_database(stack))
    stored = _stored(db["records"])
    dlq = _dlq(stack)

    # one result per idempotency key, client side and server side
    per_key: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events:
        if e["op"] == "prepare" and e["status"] == 200:
            per_key[("prepare", e["key"])].add(e["claim_id"])
        elif e["op"] == "record" and e["status"] == 202:
            per_key[("record", e["key"])].add(e["id"])
        elif e["op"] == "register" and e["status"] == 201:
            per_key[("register", e["key"])].add(e["tx_hash"])
    split = [k for k, ids in per_key.items() if len(ids) != 1]
    audit.check(not split, f"{len(split)} keys answered with different results: {split[:5]}")

    wallets_by_key: Counter[str] = Counter()
    claims_by_key: Counter[str] = Counter()
    intents_by_key: Counter[str] = Counter()
    # every key a client sent, answered or not: a record the server stored under a key no
    # answer showed is still that key's, and still one result at most
    keys_seen = {(e["op"], e["key"], e.get("addr")) for e in events + doubt}
    doubted = {e["key"] for e in doubt}

    def unseen(op: str, key: str, result: str) -> bool:
        """A stored result no client received: not the one the clients got, or, when they
        got none, not possibly the answer to one of the key's requests in doubt."""
        got = per_key.get((op, key))
        return result not in got if got else key not in doubted

    missing = 0
    for op, key, addr in keys_seen:
        record = stored.get(_store_key({"key": key, "addr": addr}))
        if record is None:
            continue
        status, body = record
        if op == "register" and status == 201:
            wallets_by_key[body["wallet"]] += 1
        if op == "prepare" and status == 200:
            claims_by_key[body["claim_id"]] += 1
            missing += unseen("prepare", key, body["claim_id"])
        if op == "record" and status == 202:
            intents_by_key[body["id"]] += 1
            missing += unseen("record", key, body["id"])
    claim_ids = {row[0] for row in db["claims"]}
    intent_rows = db["intents"]
    one_key = sum(1 for c in claim_ids if claims_by_key[c] == 1)
    say(
        f"claims per idempotency key: {one_key} of {len(claim_ids)} claims made by exactly one "
        f"key; {len(per_key)} keys each answered with one result"
    )
    audit.figures.update(claims=len(claim_ids), claims_by_one_key=one_key)
    audit.check(
        one_key == len(claim_ids),
        f"claims not made by exactly one key: "
        f"{[c for c in claim_ids if claims_by_key[c] != 1][:5]}",
    )
    audit.check(missing == 0, f"{missing} stored responses differ from what clients received")
    intent_ids = {row[0] for row in intent_rows}
    audit.check(
        all(intents_by_key[i] == 1 for i in intent_ids),
        f"intents not recorded by exactly one key: "
        f"{[i for i in intent_ids if intents_by_key[i] != 1][:5]}",
    )
    per_claim = Counter(row[1] for row in intent_rows if row[1] is not None)
    audit.check(
        all(n == 1 for n in per_claim.values()),
        f"claims with several intents: {[c for c, n in per_claim.items() if n > 1][:5]}",
    )
    signed_up = {e["wallet"] for e in events if e["op"] == "register" and e["status"] == 201}
    wallets = {row[0] for row in db["wallets"]}
    one_key = sum(1 for w in wallets if wallets_by_key[w] == 1)
    say(f"wallets per idempotency key: {one_key} of {len(wallets)} made by exactly one key")
    audit.figures.update(wallets=len(wallets), wallets_by_one_key=one_key)
    audit.check(one_key == len(wallets), "wallets not registered by exactly one key")
    unseen_allowed = {
        body["wallet"]
        for op, key, addr in keys_seen
        if op == "register" and ("register", key) not in per_key and key in doubted
        for status, body in [stored.get(_store_key({"key": key, "addr": addr}), (0, {}))]
        if status == 201
    }
    # the database keeps the checksummed spelling, clients send lower case
    seen = {w.lower() for w in signed_up}
    kept = {w.lower() for w in wallets}
    audit.check(
        seen <= kept and kept - seen <= {w.lower() for w in unseen_allowed},
        f"{len(db['wallets'])} wallets in the database, clients saw {len(signed_up)} sign-ups "
        f"and {len(unseen_allowed)} sign-ups in doubt",
    )

    # intents: settled exactly once, or failed and in the DLQ
    entries = {row[0]: (row[1], row[2]) for row in db["entries"]}
    by_status = Counter(row[2] for row in intent_rows)
    bad: list[str] = []
    for intent_id, _claim, status, tx_hash in intent_rows:
        n, total = entries.get(intent_id, (0, 0))
        if status == "SETTLED" and not (n == 2 and total == 0 and tx_hash):
            bad.append(f"{intent_id} SETTLED with {n} ledger entries")
        elif status == "FAILED" and (intent_id not in dlq or n):
            bad.append(f"{intent_id} FAILED, in DLQ: {intent_id in dlq}, entries: {n}")
        elif status not in ("SETTLED", "FAILED"):
            bad.append(f"{intent_id} still {status}")
    say(
        f"intents: {len(intent_rows)}  by status: {dict(by_status)}  DLQ jobs: {len(dlq)}  "
        f"settled exactly once or in the DLQ: {len(intent_rows) - len(bad)}"
    )
    audit.figures.update(intents={str(k): v for k, v in by_status.items()}, dlq=len(dlq))
    audit.check(not bad, f"intents not settled exactly once nor in the DLQ: {bad[:5]}")

    balances = {row[0]: int(row[1]) for row in db["programs"]}
    say(f"ledger balance per program (micro-units): {balances}")
    audit.figures["ledger"] = balances
    audit.check(all(v == 0 for v in balances.values()), f"unbalanced ledger: {balances}")

    # rate limits: no address got more fresh sign-ups than the register tier allows (replays,
    # 409s and 422s are free)
    allowed: Counter[str] = Counter(
        e["addr"]
        for e in events
        if e["op"] == "register" and e["status"] != 429 and e["addr"] and _charged(e)
    )
    over = {a: n for a, n in allowed.items() if n > register_limit}
    audit.check(not over, f"addresses allowed more than {register_limit} sign-ups: {over}")

    _compare_counters(stack, events, log, audit, quiet_within)
    if plot is not None and events:
        from loadtest.plot import plot_run

        plot_run(events, plot, title=f"{scenario}: {len(events)} requests")
        say(f"plot: {plot}")
    say("invariants: " + ("all hold" if not audit.failures else "BROKEN"))
    for failure in audit.failures:
        say(f"  FAILED: {failure}")
    return audit


def _compare_counters(
    stack: Stack, events: list[dict[str, Any]], log: ClientLog, audit: Audit, within: float
) -> None:
    """The server's decision counters, summed over every process, against client counts:
    equal when no request is in doubt, else above by at most one per request in doubt."""
    busy, server = wait_quiet(stack.metrics_dir, within)
    decisions = server["bastion_idempotency_decisions_total"]
    limits = server["bastion_ratelimit_decisions_total"]
    http = server["bastion_http_requests_total"]
    doubt = log.doubt_by_op()
    processes = metric_processes(stack.metrics_dir)
    audit.figures.update(server_in_flight=busy, metric_processes=processes)
    audit.say(
        f"server: {busy} POSTs in flight when the counters were read; "
        f"{processes} processes wrote counters"
    )
    families: dict[str, tuple[dict[str, int], dict[str, int], int]] = {}
    families["idempotency"] = (
        {
            "replayed": sum(1 for e in events if e["replayed"]),
            "conflict_in_flight": sum(
                1 for e in events if e.get("ptype") == "idempotency-key-in-flight"
            ),
            "payload_mismatch": sum(
                1 for e in events if e.get("ptype") == "idempotency-key-reused"
            ),
            "stored+released": sum(1 for e in events if _fresh(e)),
        },
        {
            "replayed": decisions[("replayed",)],
            "conflict_in_flight": decisions[("conflict_in_flight",)],
            "payload_mismatch": decisions[("payload_mismatch",)],
            "stored+released": decisions[("stored",)] + decisions[("released",)],
        },
        sum(doubt.values()),
    )
    for tier in sorted(set(TIER_OF.values())):
        ops = [op for op, t in TIER_OF.items() if t == tier]
        mine = [e for e in events if e["op"] in ops]
        families[f"{tier} tier"] = (
            {
                f"{tier} limited": sum(1 for e in mine if e["status"] == 429),
                f"{tier} allowed": sum(1 for e in mine if e["status"] != 429 and _charged(e)),
            },
            {
                f"{tier} limited": limits[(tier, "limited")],
                f"{tier} allowed": limits[(tier, "allowed")],
            },
            sum(doubt[op] for op in ops),
        )
    seen = {str(s) for s in Counter(e["status"] for e in events)}
    statuses = sorted(seen | {s for (m, s), n in http.items() if m == "POST" and n})
    posts = Counter(str(e["status"]) for e in events)
    families["POST status"] = (
        {f"POST {s}": posts[s] for s in statuses},
        {f"POST {s}": http[("POST", s)] for s in statuses},
        sum(doubt.values()),
    )
    audit.say("server counters (all processes, PROMETHEUS_MULTIPROC_DIR) vs clients:")
    figures: dict[str, list[int]] = {}
    for family, (client, got, in_doubt) in families.items():
        for name in client:
            mark = "ok" if client[name] == got[name] else "MISMATCH"
            if client[name] < got[name] <= client[name] + in_doubt:
                mark = "in doubt"
            audit.say(f"  {name:22s} server {got[name]:7d}  client {client[name]:7d}  {mark}")
        audit.failures.extend(compare_family(family, client, got, in_doubt))
        figures.update(family_figures(client, got))
    for outcome in NEVER:
        audit.check(decisions[(outcome,)] == 0, f"idempotency {outcome}: {decisions[(outcome,)]}")
    stores = sum(n for (tier, outcome), n in limits.items() if outcome == "store_error")
    audit.check(stores == 0, f"rate-limit store errors: {stores}")
    audit.figures["counters"] = figures
