"""Hypothesis-generated hostile input against the embedded service, through raw ASGI.

Keys (header bytes, lengths, quoting, duplicates), bodies, forged and stale webhook
signatures, spoofed forwarding headers, and admin calls with missing or wrong tokens. Each
test counts what it tried (printed, ``-s`` shows it) and pins: no 5xx, no replay across
principals, no admin access without the token, no webhook accepted with a bad signature.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from reference_service.webhooks import sign

from tests.reference_service.fuzzing import ADMIN, FUZZ, SECRET, Answer, Embedded, embedded

UNLIMITED = {
    "RL_CLAIM_PER_HOUR": "1000000",
    "RL_WEBHOOK_PER_MIN": "1000000",
    "RL_HEALTH_PER_MIN": "1000000",
}
"""The register tier keeps its preset (5 per hour per address): the spoofing test needs it."""
_serial = itertools.count(1)


def fresh() -> int:
    """A number no other example used (hypothesis replays and shrinks examples)."""
    return next(_serial)


def peer() -> tuple[str, int]:
    n = fresh()
    return (f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", 40_000)


def wallet() -> str:
    return "0x" + secrets.token_hex(20)


def json_headers(key: str | bytes | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"idempotency-key", key if isinstance(key, bytes) else key.encode()))
    return headers


def no_server_error(answer: Answer, *, html: bool = False) -> None:
    assert answer.status < 500, answer.body[:500]
    if answer.status >= 400 and not html:
        assert answer.headers["content-type"] == "application/problem+json", answer.headers


@pytest.fixture
def svc(migrated_template: Path, tmp_path: Path) -> Iterator[Embedded]:
    with embedded(migrated_template, tmp_path, **UNLIMITED) as service:
        yield service


def registered(svc: Embedded) -> str:
    address = wallet()
    answer = svc.request(
        "POST",
        "/api/register",
        headers=json_headers(f"reg-{fresh()}"),
        body=json.dumps({"wallet": address}).encode(),
        client=peer(),
    )
    assert answer.status == 201, answer.body
    registered_as: str = answer.json()["wallet"]
    return registered_as


# -- keys -------------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
key_values = st.one_of(
    st.binary(max_size=300),
    printable.map(str.encode),
    printable.map(lambda s: f'"{s}"'.encode()),  # structured-field strings, escapes and all
    st.integers(0, 400).map(lambda n: b"k" * n),  # around the 255 limit
    st.sampled_from([b"", b" ", b'""', b'"', b'"\\"', b'"a\\b"', b"\t k \t", b"k\x00", b"\xff"]),
)


@pytest.mark.slow
def test_generated_keys_never_reach_a_server_error(svc: Embedded) -> None:
    """Any Idempotency-Key bytes, once or twice (equal or not): 400 for a bad key, else the
    handler's own answer, replayed on the retry; never a 5xx."""
    tried = svc.tried
    body = json.dumps({"wallet": wallet(), "program_id": "demo", "amount": "1"}).encode()

    @FUZZ
    @given(
        first=key_values,
        duplicate=st.sampled_from(["no", "same", "other"]),
        other=key_values,
        retry=st.booleans(),
    )
    def run(first: bytes, duplicate: str, other: bytes, retry: bool) -> None:
        # a per-example suffix inside the value keeps examples apart without changing its shape
        salt = str(fresh()).encode()
        value = first.replace(b"k", b"k" + salt, 1) if b"k" in first else first
        headers = json_headers(value)
        if duplicate != "no":
            headers.append((b"idempotency-key", value if duplicate == "same" else other))
        answer = svc.request("POST", "/api/claim/prepare", headers=headers, body=body)
        no_server_error(answer)
        assert answer.status in (400, 404), answer.body
        if answer.status == 400:
            assert answer.json()["type"].startswith("urn:bastion:problem:idempotency-key-")
        elif retry:
            again = svc.request("POST", "/api/claim/prepare", headers=headers, body=body)
            assert again.headers.get("idempotent-replayed") == "true"
            assert again.body == answer.body

    run()
    print(f"\nkeys: {svc.tried - tried} requests, statuses {dict(svc.statuses)}")


# -- bodies -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
fields = st.sampled_from(
    ["wallet", "program_id", "amount", "signature", "claim_id", "payouts", "reference", "event"]
)
shaped = st.dictionaries(
    fields,
    json_values
    | st.sampled_from(["0x" + "ab" * 20, "demo", "1", "1e9", "-1", "0.0000001", "NaN", ""]),
    max_size=5,
)
bodies = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
)
POSTS = [
    "/api/register",
    "/api/claim/prepare",
    "/api/claim/record",
    "/api/v2/claims",
    "/api/v2/payouts/batch",
]


@pytest.mark.slow
def test_generated_bodies_never_reach_a_server_error(svc: Embedded) -> None:
    """Bytes, JSON of any shape and near-miss objects on every keyed route: a 4xx problem."""
    tried = svc.tried

    @FUZZ
    @given(path=st.sampled_from(POSTS), body=bodies, typed=st.booleans())
    def run(path: str, body: bytes, typed: bool) -> None:
        headers = (
            json_headers(f"body-{fresh()}") if typed else [(b"idempotency-key", b"b%d" % fresh())]
        )
        answer = svc.request("POST", path, headers=headers, body=body, client=peer())
        no_server_error(answer)

    run()
    print(f"\nbodies: {svc.tried - tried} requests, statuses {dict(svc.statuses)}")


# -- webhook signatures -----------------------------------------------------------------------


def funding(event_id: str) -> bytes:
    event = {
        "id": event_id,
        "type": "payment.succeeded",
        "data": {"program_id": "demo", "amount": "1000"},
    }
    return json.dumps({"event": event}).encode()


def budget(svc: Embedded) -> int:
    async def read() -> int:
        async with svc.app.state.service.db.read() as repo:
            program = await repo.program("demo")
            units: int = program.budget_units
            return units

    result: int = svc.call(read)
    return result


hexes = st.text("0123456789abcdef", min_size=0, max_size=70)
forged_headers = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda t, v: f"t={t},v1={v}".encode(), st.text(max_size=14), hexes),
    st.builds(
        lambda t, vs: (f"t={t}," + ",".join(f"v1={v}" for v in vs)).encode(),
        st.integers(0, 10**13),
        st.lists(hexes, max_size=4),
    ),
    # unicode digits that str.isdigit() accepts and int() may not, in Latin-1 header bytes
    st.sampled_from([b"t=\xb2,v1=00", b"t=\xb9\xb2\xb3,v1=ab", b"t=1\xbd,v1=ab", b"t=,v1="]),
)


@pytest.mark.parametrize("timestamp", ["\u00b2", "\u00b9\u00b2\u00b3", "17\u00b2"])
def test_a_timestamp_of_non_ascii_digits_is_a_401_not_a_500(svc: Embedded, timestamp: str) -> None:
    """``t=²`` passes str.isdigit() but not int(): found by the fuzz below, once a 500."""
    header = f"t={timestamp},v1=00".encode("latin-1")  # how a server decodes header bytes
    answer = svc.request(
        "POST",
        "/api/commerce/webhook",
        headers=[*json_headers(), (b"commerce-signature", header)],
        body=funding("evt-digits"),
    )
    assert answer.status == 401, answer.body
    assert answer.json()["reason"] == "malformed"


@pytest.mark.slow
def test_no_webhook_is_accepted_with_a_bad_signature(svc: Embedded) -> None:
    """Forged headers, stale or future timestamps, a signature over another body or with
    another secret: always 401, and the program's budget never moves."""
    tried = svc.tried
    before = budget(svc)
    accepted = 0

    def deliver(header: bytes, body: bytes) -> Answer:
        nonlocal accepted
        headers = [*json_headers(), (b"commerce-signature", header)]
        answer = svc.request("POST", "/api/commerce/webhook", headers=headers, body=body)
        no_server_error(answer)
        accepted += answer.status < 300
        return answer

    @FUZZ
    @given(header=forged_headers)
    def forged(header: bytes) -> None:
        assert deliver(header, funding(f"evt-{fresh()}")).status == 401

    @FUZZ
    @given(offset=st.integers(301, 10**8), future=st.booleans())
    def stale(offset: int, future: bool) -> None:
        body = funding(f"evt-{fresh()}")
        timestamp = int(time.time()) + (offset if future else -offset)
        assume(timestamp >= 0)
        answer = deliver(sign(SECRET, body, timestamp).encode(), body)
        assert answer.status == 401
        assert answer.json()["reason"] == "stale"

    @FUZZ
    @given(secret=st.text(min_size=1, max_size=40), tamper=st.booleans())
    def wrong(secret: str, tamper: bool) -> None:
        body = funding(f"evt-{fresh()}")
        if tamper:  # the right secret over the body the provider sent, then the body changed
            header = sign(SECRET, body)
            body = body.replace(b'"1000"', b'"9000"')
        else:
            assume(secret != SECRET)
            header = sign(secret, body)
        answer = deliver(header.encode(), body)
        assert answer.status == 401
        assert answer.json()["reason"] == "mismatch"

    forged()
    stale()
    wrong()
    assert accepted == 0
    assert budget(svc) == before
    # and the control: a correctly signed delivery is accepted and funds the program
    body = funding(f"evt-{fresh()}")
    good = svc.request(
        "POST",
        "/api/commerce/webhook",
        headers=[*json_headers(), (b"commerce-signature", sign(SECRET, body).encode())],
        body=body,
    )
    assert good.status == 200, good.body
    assert budget(svc) == before + 1000 * 10**6
    print(f"\nwebhook: {svc.tried - tried} deliveries, {accepted} accepted with a bad signature")


# -- forwarding headers and tenants -----------------------------------------------------------

addresses = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "unknown", "_hidden", ""]),
)
spoofs = st.lists(
    st.one_of(
        st.lists(addresses, min_size=1, max_size=4).map(
            lambda xs: (b"x-forwarded-for", ", ".join(xs).encode())
        ),
        addresses.map(lambda a: (b"forwarded", f'for="{a}";proto=https'.encode())),
        addresses.map(lambda a: (b"x-real-ip", a.encode())),
        st.binary(max_size=60).map(lambda b: (b"x-forwarded-for", b)),
    ),
    max_size=3,
)


@pytest.mark.slow
def test_spoofed_forwarding_headers_do_not_escape_the_register_limit(svc: Embedded) -> None:
    """With no trusted proxy configured, X-Forwarded-For / Forwarded / X-Real-IP are ignored:
    one address gets its 5 registrations per hour and the 6th is 429, however it dresses."""
    tried = svc.tried
    limited = 0

    @FUZZ
    @given(st.lists(spoofs, min_size=6, max_size=6))
    def run(disguises: list[list[tuple[bytes, bytes]]]) -> None:
        nonlocal limited
        client = peer()
        statuses = []
        for disguise in disguises:
            headers = json_headers(f"spoof-{fresh()}") + disguise
            answer = svc.request(
                "POST", "/api/register", headers=headers, body=b"{}", client=client
            )
            no_server_error(answer)
            statuses.append(answer.status)
        assert statuses[:5] == [422] * 5  # counted, then refused by validation
        assert statuses[5] == 429
        limited += 1

    run()
    assert limited > 0
    print(f"\nforwarding: {svc.tried - tried} requests, {limited} addresses limited at 6")


@pytest.mark.slow
def test_two_principals_with_the_same_key_get_their_own_responses(svc: Embedded) -> None:
    """The same key and body from two addresses or two credentials (one claiming the
    other's address in X-Forwarded-For): each runs its own request; only its own retry
    replays."""
    address = registered(svc)
    body = json.dumps({"wallet": address, "program_id": "demo", "amount": "1"}).encode()
    tried = svc.tried
    pairs = 0

    @FUZZ
    @given(
        key=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
        by_credential=st.booleans(),
    )
    def run(key: str, by_credential: bool) -> None:
        nonlocal pairs
        assume('"' not in key and "\\" not in key)
        value = f"{key}-{fresh()}"
        a, b = peer(), peer()
        alice = json_headers(value)
        bob = [*json_headers(value), (b"x-forwarded-for", a[0].encode())]
        if by_credential:
            alice.append((b"authorization", b"Bearer alice-" + value.encode()))
            bob.append((b"authorization", b"Bearer bob-" + value.encode()))
            b = a  # the same address: only the credentials tell them apart
        first = svc.request("POST", "/api/claim/prepare", headers=alice, body=body, client=a)
        other = svc.request("POST", "/api/claim/prepare", headers=bob, body=body, client=b)
        again = svc.request("POST", "/api/claim/prepare", headers=alice, body=body, client=a)
        assert first.status == other.status == again.status == 200, (first.body, other.body)
        assert "idempotent-replayed" not in other.headers
        assert other.json()["claim_id"] != first.json()["claim_id"]
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["claim_id"] == first.json()["claim_id"]
        pairs += 1

    run()
    print(f"\ntenants: {svc.tried - tried} requests, {pairs} key pairs, 0 cross-tenant replays")


# -- admin ------------------------------------------------------------------------------------


def _mutations(token: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.just(token[:-1]),
        st.just(token + "x"),
        st.just(token.upper()),
        st.integers(0, len(token) - 1).map(
            lambda i: token[:i] + chr(ord(token[i]) ^ 1) + token[i + 1 :]
        ),
        st.integers(1, len(token)).map(lambda i: token[:i]),
        st.just(token + "\x00"),
        st.just(token + "é"),
    )


authorizations = st.one_of(
    st.none(),
    st.binary(max_size=80),
    _mutations(ADMIN).map(lambda t: f"Bearer {t}".encode()),
    st.sampled_from(["Basic", "bearer", "Token", "Bearer\t", ""]).flatmap(
        lambda scheme: _mutations(ADMIN).map(lambda t: f"{scheme} {t}".encode())
    ),
    st.just(ADMIN.encode()),  # the token without its scheme
    st.just(b"Basic " + ADMIN.encode()),
)


def _accepted_by_design(header: bytes | None) -> bool:
    if header is None:
        return False
    scheme, _, token = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and token.strip() == ADMIN


ADMIN_CALLS = [
    ("GET", "/api/admin/dlq", b""),
    ("POST", "/api/admin/dlq/job-1/retry", b""),
    ("GET", "/api/admin/relayer/faults", b""),
    ("PUT", "/api/admin/relayer/faults", b'{"fail_rate": 1.0, "hang_rate": 0.0}'),
]


@pytest.mark.slow
def test_no_admin_access_without_the_token(svc: Embedded) -> None:
    """Missing, malformed and near-miss tokens on every admin route, in the header, the
    page's cookie and its login form: 401 or 403, and the faults never change."""
    tried = svc.tried
    granted = 0

    @FUZZ
    @given(call=st.sampled_from(ADMIN_CALLS), authorization=authorizations)
    def api(call: tuple[str, str, bytes], authorization: bytes | None) -> None:
        nonlocal granted
        assume(not _accepted_by_design(authorization))
        method, path, body = call
        headers = json_headers() + ([(b"authorization", authorization)] if authorization else [])
        answer = svc.request(method, path, headers=headers, body=body)
        no_server_error(answer)
        granted += answer.status < 400
        assert answer.status in (401, 403), (answer.status, answer.body)

    @FUZZ
    @given(token=_mutations(ADMIN) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
    def page(token: str) -> None:
        nonlocal granted
        assume(token != ADMIN)
        cookie = b"bastion_admin=" + token.encode("utf-8").replace(b";", b"")
        for method, path, status in (("GET", "/admin", 200), ("POST", "/admin/dlq/j/retry", 401)):
            answer = svc.request(method, path, headers=[(b"cookie", cookie)])
            no_server_error(answer, html=True)
            assert b"Sign in" in answer.body  # the login form, not the operations page
            assert answer.status == status
        form = b"token=" + token.encode("utf-8")
        login = svc.request(
            "POST",
            "/admin/login",
            headers=[(b"content-type", b"application/x-www-form-urlencoded")],
            body=form,
        )
        no_server_error(login, html=True)
        granted += login.status == 303
        assert login.status == 403 or token.split("&")[0].strip() == ADMIN

    api()
    page()
    assert granted == 0
    faults = svc.request(
        "GET", "/api/admin/relayer/faults", headers=[(b"authorization", f"Bearer {ADMIN}".encode())]
    )
    assert faults.status == 200  # the control: the real token opens it
    assert faults.json() == {"fail_rate": 0.0, "hang_rate": 0.0}
    print(f"\nadmin: {svc.tried - tried} requests, {granted} granted without the token")
