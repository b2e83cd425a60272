"""A model-based check of the idempotency store protocol on every backend.

Hypothesis drives random sequences of claim/renew/complete/release and clock moves against a
store and against a plain dictionary model, and every answer must match the model exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from bastion.stores import Claim
from bastion.stores.sql import SQLStore
from tests.conftest import FakeClock
from tests.stores.conftest import SQL_STORES, STORES

KEYS = st.sampled_from(["a", "b", "c"])
FINGERPRINTS = st.sampled_from(["fp1", "fp2"])
PICKS = st.integers(min_value=0, max_value=7)
DURATIONS = st.integers(min_value=1, max_value=5_000)


@dataclass
class ModelRecord:
    fingerprint: str
    token: str
    expires_at: int
    response: bytes | None = None


START = FakeClock().now
"""Where every example's clock starts."""
SQL_FACTORIES = [p.values[0] for p in SQL_STORES]


class Backend:
    """One backend for a whole test: an empty store on a clock at `START` for every example.

    A SQL store keeps its tables for the test and has their rows deleted before each example:
    creating and dropping three tables (and PostgreSQL's functions, MySQL's procedure) per
    example cost more than the example's own steps. Other stores are built anew each time.
    """

    def __init__(
        self, portal: BlockingPortal, factory: Any, clock: FakeClock, kept: SQLStore | None
    ) -> None:
        self.portal = portal
        self.factory = factory
        self.clock = clock
        self.kept = kept
        self.example: AbstractContextManager[Any] | None = None

    def fresh(self) -> Any:
        self.clock.now = START
        if self.kept is not None:
            self.portal.call(self._empty, self.kept)
            return self.kept
        self.example = self.portal.wrap_async_context_manager(self.factory(self.clock))
        return self.example.__enter__()

    def done(self) -> None:
        if self.example is not None:
            self.example.__exit__(None, None, None)
            self.example = None

    @staticmethod
    async def _empty(store: SQLStore) -> None:
        async with store.engine.begin() as conn:
            for table in store.metadata.sorted_tables:
                await conn.execute(table.delete())


class StoreMachine(RuleBasedStateMachine):
    """Compares a store with a dictionary of records under a fake clock."""

    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.clock = self.backend.clock
        self.portal = self.backend.portal
        self.model: dict[str, ModelRecord] = {}
        self.tokens: list[str] = ["never-claimed"]
        self.store = self.backend.fresh()

    def teardown(self) -> None:
        self.backend.done()

    def now(self) -> int:
        return int(self.clock() * 1000)

    def live(self, key: str) -> ModelRecord | None:
        record = self.model.get(key)
        if record is None or record.expires_at <= self.now():
            self.model.pop(key, None)
            return None
        return record

    def held(self, key: str, token: str) -> ModelRecord | None:
        record = self.live(key)
        if record is None or record.token != token or record.response is not None:
            return None
        return record

    @initialize()
    def start(self) -> None:
        assert self.model == {}

    def token(self, pick: int) -> str:
        return self.tokens[pick % len(self.tokens)]

    @rule(key=KEYS, fingerprint=FINGERPRINTS, lease=DURATIONS)
    def claim(self, key: str, fingerprint: str, lease: int) -> None:
        token = f"t{len(self.tokens)}"  # the protocol wants a fresh token for every claim
        self.tokens.append(token)
        got: Claim = self.portal.call(
            lambda: self.store.claim(key, fingerprint, token, lease_ms=lease)
        )
        record = self.live(key)
        if record is None:
            self.model[key] = ModelRecord(fingerprint, token, self.now() + lease)
            assert got == Claim(True, fingerprint)
            return
        assert not got.acquired
        assert got.fingerprint == record.fingerprint
        assert got.response == record.response
        if record.response is None:
            assert got.lease_remaining_ms == record.expires_at - self.now()

    @rule(key=KEYS, pick=PICKS, lease=DURATIONS)
    def renew(self, key: str, pick: int, lease: int) -> None:
        token = self.token(pick)
        got = self.portal.call(lambda: self.store.renew(key, token, lease_ms=lease))
        record = self.held(key, token)
        assert got is (record is not None)
        if record is not None:
            # a renewal extends a lease, never shortens it
            record.expires_at = max(record.expires_at, self.now() + lease)

    @rule(key=KEYS, pick=PICKS, ttl=DURATIONS, body=st.binary(max_size=16))
    def complete(self, key: str, pick: int, ttl: int, body: bytes) -> None:
        token = self.token(pick)
        got = self.portal.call(lambda: self.store.complete(key, token, body, ttl_ms=ttl))
        record = self.held(key, token)
        live = self.live(key)
        # the same response again from the token that stored it may answer stored: a store
        # that resends after a broken connection (Redis) cannot tell the two sends apart
        resent = live is not None and live.token == token and live.response == body
        assert got is (record is not None) or (got and resent)
        if record is not None:
            record.response = body
            record.expires_at = self.now() + ttl

    @rule(key=KEYS, pick=PICKS)
    def release(self, key: str, pick: int) -> None:
        token = self.token(pick)
        got = self.portal.call(lambda: self.store.release(key, token))
        record = self.held(key, token)
        assert got is (record is not None)
        if record is not None:
            del self.model[key]

    @rule(ms=st.integers(min_value=1, max_value=6_000))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)


@pytest.fixture(params=STORES)
def machine(request: pytest.FixtureRequest) -> Iterator[type[StoreMachine]]:
    """The state machine bound to one backend, with one portal (event loop) for the test."""
    factory, clock = request.param, FakeClock(START)
    with start_blocking_portal() as portal, ExitStack() as stack:
        kept = None
        if factory in SQL_FACTORIES:
            kept = stack.enter_context(portal.wrap_async_context_manager(factory(clock)))
        backend = Backend(portal, factory, clock, kept)
        name = f"StoreMachine_{request.node.callspec.id}"
        yield type(name, (StoreMachine,), {"backend": backend})


def test_store_matches_model(machine: type[StoreMachine]) -> None:
    """Every idempotency primitive answers exactly as the dictionary model does."""
    run_state_machine_as_test(machine, settings=settings(stateful_step_count=30))
