"""The checks: each drives the target over HTTP and returns a `Result` with its evidence."""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Literal

import anyio
import httpx

from bastion.check._sfv import Item, SFError, parse_list
from bastion.check._target import Target, nonce

__all__ = ["CHECKS", "Result", "Runner"]

Status = Literal["pass", "fail", "skip"]
Sleep = Callable[[float], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Result:
    """One check's verdict; ``evidence`` says what was sent and seen when it did not pass."""

    name: str
    status: Status
    evidence: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"


class _Skip(Exception):
    """The check cannot judge (a 429 on the way, a body template that never varies)."""


class _Fail(Exception):
    """The check saw the server break the rule."""


def _show(response: httpx.Response) -> str:
    body = response.content[:200].decode("utf-8", "replace")
    more = "…" if len(response.content) > 200 else ""
    replayed = response.headers.get("idempotent-replayed")
    flag = f" Idempotent-Replayed: {replayed}" if replayed else ""
    return f"{response.status_code}{flag} {body}{more}"


class Runner:
    """Runs the checks against one target through one client; ``sleep`` waits out ``t``
    and ``Retry-After`` (the real `anyio.sleep` against a server, a clock's advance in
    tests)."""

    def __init__(
        self, client: httpx.AsyncClient, target: Target, *, sleep: Sleep = anyio.sleep
    ) -> None:
        self.client = client
        self.target = target
        self.sleep = sleep
        self.run_id = secrets.token_hex(4)
        self._keys = itertools.count(1)
        self._count = itertools.count(1)

    def key(self) -> str:
        return f"bastion-check-{self.run_id}-{next(self._keys)}"

    async def send(
        self,
        *,
        key: str | None = None,
        nonce_: str | None = None,
        principal: Mapping[str, str] | None = None,
        limit: bool = False,
    ) -> httpx.Response:
        target = self.target
        headers = {"Content-Type": target.content_type, **target.headers}
        headers.update(target.principal_a if principal is None else principal)
        if key is not None:
            headers[target.key_header] = key
        method = (target.limit_method if limit else None) or target.method
        path = (target.limit_path if limit else None) or target.path
        body = target.render(nonce_ or nonce(), next(self._count))
        return await self.client.request(method, path, content=body, headers=headers)

    def unlimited(self, *responses: httpx.Response) -> None:
        for response in responses:
            if response.status_code == 429:
                raise _Skip(f"rate limited before it could judge: {_show(response)}")

    async def run(self, check: Callable[[Runner], Awaitable[str]], name: str) -> Result:
        try:
            note = await check(self)
        except _Skip as exc:
            return Result(name, "skip", str(exc))
        except _Fail as exc:
            return Result(name, "fail", str(exc))
        except httpx.HTTPError as exc:
            return Result(name, "fail", f"request failed: {type(exc).__name__}: {exc}")
        return Result(name, "pass", note)


def _problem(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise _Fail(f"{what}: expected {status}, got {_show(response)}")
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/problem+json":
        raise _Fail(f"{what}: {status} is {kind or 'untyped'}, not application/problem+json")


def _same(first: httpx.Response, again: httpx.Response, what: str) -> None:
    if again.headers.get("idempotent-replayed") != "true":
        raise _Fail(
            f"{what}: no 'Idempotent-Replayed: true'; first {_show(first)}; then {_show(again)}"
        )
    if again.status_code != first.status_code or again.content != first.content:
        raise _Fail(f"{what}: replay differs; first {_show(first)}; replay {_show(again)}")


# -- idempotency ---------------------------------------------------------------------------


async def replay_identical(run: Runner) -> str:
    key, body = run.key(), nonce()
    first = await run.send(key=key, nonce_=body)
    again = await run.send(key=key, nonce_=body)
    run.unlimited(first, again)
    if first.status_code >= 500:
        raise _Skip(f"the first request failed, so nothing was stored: {_show(first)}")
    _same(first, again, "same key, same request")
    for name in ("content-type", "content-length"):
        if first.headers.get(name) != again.headers.get(name):
            raise _Fail(
                f"replay changed {name}: {first.headers.get(name)!r} -> {again.headers.get(name)!r}"
            )
    return f"{first.status_code}, replayed byte for byte ({len(first.content)} bytes)"


async def replay_no_set_cookie(run: Runner) -> str:
    key, body = run.key(), nonce()
    first = await run.send(key=key, nonce_=body)
    again = await run.send(key=key, nonce_=body)
    run.unlimited(first, again)
    cookies = again.headers.get_list("set-cookie")
    if again.headers.get("idempotent-replayed") == "true" and cookies:
        raise _Fail(f"the replay sets cookies: {cookies}")
    if again.headers.get("idempotent-replayed") != "true":
        raise _Skip(f"no replay to look at: {_show(again)}")
    if not first.headers.get_list("set-cookie"):
        return "no Set-Cookie in the replay (the first response set none either)"
    return "the first response's Set-Cookie is not replayed"


async def mismatch_422(run: Runner) -> str:
    if not run.target.varies:
        raise _Skip("the body template has no ${nonce}, so it cannot make another payload")
    key = run.key()
    first = await run.send(key=key)
    other = await run.send(key=key)
    run.unlimited(first, other)
    _problem(other, 422, "same key, another body")
    return "422 problem+json"


async def in_flight(run: Runner) -> str:
    key, body = run.key(), nonce()
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await run.send(key=key, nonce_=body))

    async with anyio.create_task_group() as tg:
        for _ in range(run.target.concurrency):
            tg.start_soon(one)
    run.unlimited(*responses)
    ran = [r for r in responses if r.status_code != 409 and "idempotent-replayed" not in r.headers]
    conflicts = [r for r in responses if r.status_code == 409]
    shown = "; ".join(_show(r) for r in responses)
    if len(ran) != 1:
        raise _Fail(f"{len(ran)} of {len(responses)} concurrent duplicates ran: {shown}")
    for response in conflicts:
        _problem(response, 409, "in-flight duplicate")
        if not response.headers.get("retry-after", "").isdigit():
            raise _Fail(f"a 409 without a Retry-After in seconds: {_show(response)}")
    for response in responses:
        if response is not ran[0] and response.status_code != 409:
            _same(ran[0], response, "duplicate after the first finished")
    return (
        f"ran once; {len(conflicts)} got 409, "
        f"{len(responses) - len(conflicts) - 1} waited for the replay"
    )


async def quoted_key(run: Runner) -> str:
    bare, body = run.key(), nonce()
    first = await run.send(key=f'"{bare}"', nonce_=body)
    again = await run.send(key=bare, nonce_=body)
    run.unlimited(first, again)
    if first.status_code == 400:
        raise _Fail(f'the quoted key "{bare}" was refused: {_show(first)}')
    _same(first, again, f'"{bare}" then {bare}')
    return f'"{bare}" and {bare} are one key'


async def principals_apart(run: Runner) -> str:
    target = run.target
    a, b = target.principal_a, target.principal_b
    key = run.key()
    first = await run.send(key=key, principal=a)
    other = await run.send(key=key, principal=b)  # the same key, another body
    same_key, same_body = run.key(), nonce()
    mine = await run.send(key=same_key, nonce_=same_body, principal=a)
    theirs = await run.send(key=same_key, nonce_=same_body, principal=b)
    run.unlimited(first, other, mine, theirs)
    for response in (other, theirs):
        if response.headers.get("idempotent-replayed") == "true":
            raise _Fail(f"principal B got principal A's stored response: {_show(response)}")
    if other.status_code == 422 and target.varies:
        raise _Fail(f"principal B's body was compared with principal A's: {_show(other)}")
    return "principal B's requests ran on their own, with principal A's keys"


async def missing_key_400(run: Runner) -> str:
    if not run.target.require_key:
        raise _Skip("not asked to (--require-key)")
    response = await run.send()
    run.unlimited(response)
    _problem(response, 400, "no key where one is required")
    return "400 problem+json"


# -- rate limits ---------------------------------------------------------------------------


def _fields(response: httpx.Response) -> tuple[list[Item], list[Item]] | None:
    """The parsed (RateLimit-Policy, RateLimit) of a response, None if it has neither."""
    policy, limit = response.headers.get("ratelimit-policy"), response.headers.get("ratelimit")
    if policy is None and limit is None:
        return None
    if policy is None or limit is None:
        raise _Fail(f"only one of RateLimit-Policy and RateLimit: {policy!r}, {limit!r}")
    try:
        policies, limits = parse_list(policy), parse_list(limit)
    except SFError as exc:
        raise _Fail(f"not a Structured Field list: {exc}") from None
    names = set()
    for item in policies:
        _named(item, "RateLimit-Policy")
        _integer(item, "q", "RateLimit-Policy", required=True, minimum=0)
        _integer(item, "w", "RateLimit-Policy", required=False, minimum=1)
        names.add(item.value)
    for item in limits:
        _named(item, "RateLimit")
        _integer(item, "r", "RateLimit", required=True, minimum=0)
        _integer(item, "t", "RateLimit", required=False, minimum=0)
        if item.value not in names:
            raise _Fail(f"RateLimit names {item.value!r}, which RateLimit-Policy does not")
    return policies, limits


def _named(item: Item, field: str) -> None:
    if not isinstance(item.value, str):
        raise _Fail(f"{field} member {item.value!r} is not a named policy")


def _integer(item: Item, key: str, field: str, *, required: bool, minimum: int) -> None:
    value = item.params.get(key)
    if value is None and not required:
        return
    if type(value) is not int or value < minimum:
        raise _Fail(f"{field} {item.value!r}: {key}={value!r} is not an integer >= {minimum}")


async def _exhaust(run: Runner) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send limited requests until one is refused with 429; it and what came before."""
    seen: list[httpx.Response] = []
    for _ in range(run.target.max_requests):
        response = await run.send(key=run.key(), limit=True)
        if response.status_code == 429:
            return response, seen
        seen.append(response)
    raise _Skip(f"no 429 after {run.target.max_requests} requests (raise --max-requests)")


def _t_of(limits: list[Item]) -> int:
    waits = [v for item in limits if type(v := item.params.get("t")) is int]
    return max(waits) if waits else 0


async def ratelimit_fields(run: Runner) -> str:
    response = await run.send(key=run.key(), limit=True)
    fields = _fields(response)
    if fields is None:
        raise _Skip(f"the response carries no RateLimit fields: {_show(response)}")
    return (
        f"RateLimit-Policy: {response.headers['ratelimit-policy']}; RateLimit: "
        + (response.headers["ratelimit"])
    )


async def ratelimit_429(run: Runner) -> str:
    refused, _ = await _exhaust(run)
    _problem(refused, 429, "over the limit")
    retry_after = refused.headers.get("retry-after", "")
    if not retry_after.isdigit():
        raise _Fail(f"429 without Retry-After in seconds: {retry_after!r}; {_show(refused)}")
    fields = _fields(refused)
    if fields is not None:
        wait = _t_of([i for i in fields[1] if i.params.get("r") == 0] or fields[1])
        if int(retry_after) < wait:
            raise _Fail(
                f"Retry-After {retry_after} is earlier than t={wait} "
                f"(RateLimit: {refused.headers['ratelimit']})"
            )
    return f"429 problem+json, Retry-After: {retry_after}"


async def _wait_then_allowed(run: Runner, wait: Decimal | int, what: str) -> str:
    if wait > run.target.max_wait:
        raise _Skip(f"{what}={wait}s is longer than --max-wait {run.target.max_wait}s")
    await run.sleep(float(wait))
    after = await run.send(key=run.key(), limit=True)
    if after.status_code == 429:
        raise _Fail(
            f"still 429 after waiting {what}={wait}s: {_show(after)}; "
            f"RateLimit: {after.headers.get('ratelimit')}"
        )
    return f"allowed after waiting {what}={wait}s"


async def t_honoured(run: Runner) -> str:
    refused, _ = await _exhaust(run)
    fields = _fields(refused)
    if fields is None:
        raise _Skip("the 429 carries no RateLimit field")
    exhausted = [i for i in fields[1] if i.params.get("r") == 0]
    return await _wait_then_allowed(run, _t_of(exhausted or fields[1]), "t")


async def retry_after_honoured(run: Runner) -> str:
    refused, _ = await _exhaust(run)
    retry_after = refused.headers.get("retry-after", "")
    if not retry_after.isdigit():
        raise _Fail(f"429 without Retry-After in seconds: {_show(refused)}")
    return await _wait_then_allowed(run, int(retry_after), "Retry-After")


CHECKS: dict[str, tuple[str, Callable[[Runner], Awaitable[str]]]] = {
    "replay-identical": ("idempotency", replay_identical),
    "replay-no-set-cookie": ("idempotency", replay_no_set_cookie),
    "mismatch-422": ("idempotency", mismatch_422),
    "in-flight": ("idempotency", in_flight),
    "quoted-key": ("idempotency", quoted_key),
    "principals-apart": ("idempotency", principals_apart),
    "missing-key-400": ("idempotency", missing_key_400),
    "ratelimit-fields": ("ratelimit", ratelimit_fields),
    "ratelimit-429": ("ratelimit", ratelimit_429),
    "ratelimit-t-honoured": ("ratelimit", t_honoured),
    "ratelimit-retry-after-honoured": ("ratelimit", retry_after_honoured),
}
"""Every check by name, with its group, in the order they run (idempotency first, while the
limits still have quota)."""
