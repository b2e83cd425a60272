"""The idempotency state machine, case by case, against tables written from docs/idempotency.md."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bastion._core.records import StoredResponse
from bastion._core.types import Claim
from bastion.idempotency import IdempotencySettings
from bastion.idempotency._decision import (
    Conflict,
    Decision,
    Ending,
    Verdict,
    decide,
    ending,
    pending,
    retry_after,
    store_failed,
    waits,
)

MINE = "fp-mine"
OTHER = "fp-other"
STORED = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id": 1}')
RESPONSES: dict[str, bytes | None] = {
    "none": None,
    "readable": STORED.encode(),
    "unreadable": b"\x7fa format from the future",
}
LEASES = {"0": 0, "short": 2_400, "renewing": 20_000, "long": 45_000}  # ms left of the lease

# One row per rule of the docs, first match wins; "*" matches anything. The answer "wait" is
# the first claim's answer when the duplicate waits; "retry-after N" is a 409 with that header.
ANY = "*"
RULES: list[tuple[dict[str, Any], str]] = [
    # "When the store fails": 503 unless fail_open, then the handler runs unprotected
    ({"store_failed": True, "fail_open": False}, "503 store-unavailable"),
    ({"store_failed": True, "fail_open": True}, "run unprotected"),
    # the first request with a key runs the handler
    ({"acquired": True}, "run"),
    # "a reused key with a different body gets its 422 at once", even with wait, and
    # whatever the record holds
    ({"same": False}, "422"),
    # in flight, a true duplicate: waits with `wait` (on its first answer only) ...
    ({"response": "none", "wait": True, "phase": "first"}, "wait"),
    # ... else 409; while the holder's lease shows it renewing (more than a third of the
    # 30 s lease left), Retry-After is conflict_retry_after_seconds, "never longer than what
    # is left of the lease"; a holder that missed its renewal keeps the key "until its lease
    # runs out", so Retry-After is the rest of the lease; and it is at least 1
    ({"response": "none", "lease": "0"}, "retry-after 1"),
    ({"response": "none", "lease": "short"}, "retry-after 3"),
    ({"response": "none", "lease": "renewing", "retry_setting": 1}, "retry-after 1"),
    ({"response": "none", "lease": "renewing", "retry_setting": 5}, "retry-after 5"),
    ({"response": "none", "lease": "long", "retry_setting": 1}, "retry-after 1"),
    ({"response": "none", "lease": "long", "retry_setting": 5}, "retry-after 5"),
    # "a retry after the first finished": its stored response, replayed
    ({"response": "readable"}, "replay"),
    # "The handler is not run again, whatever fail_open says": 503 record-unreadable
    ({"response": "unreadable"}, "503 record-unreadable"),
]
DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "store_failed": (False, True),
    "acquired": (False, True),
    "same": (True, False),
    "response": tuple(RESPONSES),
    "wait": (False, True),
    "fail_open": (False, True),
    "lease": tuple(LEASES),
    "retry_setting": (1, 5),
    "phase": ("first", "after wait"),  # the first claim's answer, or the last one polled
}


def expected(case: dict[str, Any]) -> str:
    for conditions, answer in RULES:
        if all(value == ANY or case[name] == value for name, value in conditions.items()):
            return answer
    raise AssertionError(f"no rule for {case}")


def described(decision: Decision) -> str:
    if isinstance(decision, StoredResponse):
        assert decision == STORED
        return "replay"
    if isinstance(decision, Conflict):
        return f"retry-after {decision.retry_after}"
    return {
        Verdict.RUN: "run",
        Verdict.MISMATCH: "422",
        Verdict.UNREADABLE: "503 record-unreadable",
        Verdict.RUN_UNPROTECTED: "run unprotected",
        Verdict.UNAVAILABLE: "503 store-unavailable",
    }[decision]


def answered(case: dict[str, Any]) -> str:
    """The answer, composed from the pure functions the way the middleware composes them."""
    settings = IdempotencySettings(
        wait=case["wait"],
        fail_open=case["fail_open"],
        conflict_retry_after_seconds=case["retry_setting"],
    )
    if case["store_failed"]:
        return described(store_failed(settings))
    claim = Claim(
        case["acquired"],
        MINE if case["same"] else OTHER,
        RESPONSES[case["response"]],
        LEASES[case["lease"]],
    )
    if case["phase"] == "first" and waits(claim, MINE, settings):
        return "wait"
    return described(decide(claim, MINE, settings))


def test_every_claim_answer_matches_the_documented_table() -> None:
    """Each combination of claim, fingerprint, record, lease, settings and store failure gets
    the answer the docs give it, and every row of the table is reached."""
    used: Counter[str] = Counter()
    cases = 0
    for values in itertools.product(*DIMENSIONS.values()):
        case = dict(zip(DIMENSIONS, values, strict=True))
        want = expected(case)
        assert answered(case) == want, case
        used[want] += 1
        cases += 1
    assert cases == 2 * 2 * 2 * 3 * 2 * 2 * 4 * 2 * 2
    assert set(used) == {answer for _, answer in RULES}


def test_a_waiting_duplicate_polls_until_the_key_is_taken_or_answered() -> None:
    """Polling goes on while nobody holds a stored response and the key is not this
    request's, whoever holds it now; it stops on acquiring or on a stored response."""
    for acquired, holder, response in itertools.product(
        (False, True), (MINE, OTHER), tuple(RESPONSES.values())
    ):
        claim = Claim(acquired, holder, response, 1_000)
        assert pending(claim) == (not acquired and response is None)


def test_only_a_true_duplicate_in_flight_waits() -> None:
    """`waits` is true only with settings.wait, for the same request, still in flight."""
    on, off = IdempotencySettings(wait=True), IdempotencySettings()
    assert waits(Claim(False, MINE, None, 1_000), MINE, on)
    assert not waits(Claim(False, MINE, None, 1_000), MINE, off)
    assert not waits(Claim(False, OTHER, None, 1_000), MINE, on)
    assert not waits(Claim(False, MINE, STORED.encode(), 0), MINE, on)
    assert not waits(Claim(True, MINE), MINE, on)


def test_retry_after_rounds_a_fraction_of_a_second_up() -> None:
    """A lease with 1.2 s left caps Retry-After at 2 s, not 1 s; a negative remainder gives 1."""
    settings = IdempotencySettings(conflict_retry_after_seconds=10)
    assert decide(Claim(False, MINE, None, 1_200), MINE, settings) == Conflict(2)
    assert decide(Claim(False, MINE, None, -50), MINE, settings) == Conflict(1)


def test_retry_after_is_the_rest_of_a_lease_its_holder_stopped_renewing() -> None:
    """Above a third of the lease the holder may be running: the hint (1 s); at a third or
    less it missed its renewal, and a retry before the lease ends only gets another 409."""
    settings = IdempotencySettings(lease_seconds=30)
    assert retry_after(10_001, settings) == 1
    assert retry_after(10_000, settings) == 10
    assert retry_after(6_500, settings) == 7
    assert retry_after(0, settings) == 1


@given(st.binary(max_size=64))
def test_any_stored_bytes_are_replayed_or_unreadable(data: bytes) -> None:
    """Whatever bytes a record holds, the decision is a replay or a 503, never an exception."""
    decision = decide(Claim(False, MINE, data, 0), MINE, IdempotencySettings())
    assert isinstance(decision, StoredResponse) or decision is Verdict.UNREADABLE


ENDING_DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "completed": (False, True),
    "status": (200, 201, 302, 307, 404, 408, 422, 429, 500, 503),
    "complete": (False, True),
    "overflow": (False, True),
    "store_server_errors": (False, True),
}


def expected_ending(case: dict[str, Any]) -> Ending:
    """The docs' "Which responses are stored" table."""
    if case["completed"]:
        return Ending.COMPLETED  # stored in the handler's own transaction
    if not case["complete"] or case["overflow"]:
        return Ending.RELEASE  # raised before the end, never finished, or over the cap
    if case["status"] in (307, 308, 408, 429):
        return Ending.RELEASE  # release_statuses
    if case["status"] >= 500 and not case["store_server_errors"]:
        return Ending.RELEASE
    return Ending.STORE


def test_every_end_of_request_matches_the_documented_table() -> None:
    """Each combination of completion, status, capture state and settings ends as documented."""
    seen = set()
    for values in itertools.product(*ENDING_DIMENSIONS.values()):
        case = dict(zip(ENDING_DIMENSIONS, values, strict=True))
        settings = IdempotencySettings(store_server_errors=case["store_server_errors"])
        got = ending(
            case["completed"], case["status"], case["complete"], case["overflow"], settings
        )
        assert got is expected_ending(case), case
        seen.add(got)
    assert seen == set(Ending)


def test_release_statuses_are_the_settings() -> None:
    """A status added to release_statuses is released, one removed is stored."""
    settings = IdempotencySettings(release_statuses=frozenset({409}))
    assert ending(False, 409, True, False, settings) is Ending.RELEASE
    assert ending(False, 429, True, False, settings) is Ending.STORE
