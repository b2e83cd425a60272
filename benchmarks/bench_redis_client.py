"""What one `RedisStore` call costs its own process, beside redis-py's ``client.evalsha``.

Every variant sends the same kind of script to the same Redis (loopback), one call at a time,
so the server's share is the same for all and what differs is the client: bastion, redis-py and
the event loop. Two measures, printed side by side with ratios to redis-py's own ``evalsha`` on
the store's client:

- process CPU µs per call (user + system, ``getrusage``): N sequential calls per round, the
  variants interleaved round by round, GC on, the best round of each;
- instructions per call, when valgrind is installed: each variant in a child process under
  ``valgrind --tool=cachegrind --cache-sim=no`` (``PYTHONHASHSEED=0``, address-space
  randomisation off where ``setarch -R`` exists), once with N calls and once with none after
  the same warm-up; (I(N) - I(0)) / N is one call, start-up and warm-up cancel out (the method
  of `bench_instructions.py`).

The variants: `RedisStore.hit` with two fixed-window tiers and `RedisStore.claim` (one key
claimed again by its own token), the store built from a URL as an application builds it;
redis-py ``evalsha`` of the same hit script on the store's client (``socket_timeout`` = 1 s,
as the store sets it) and on a client without ``socket_timeout``; and the floor: the same
``EVALSHA`` packed, sent and read on one redis-py connection without ``socket_timeout``,
nothing else.

Needs Redis at ``--redis-url`` (default ``BASTION_BENCH_REDIS_URL`` or
``redis://127.0.0.1:6379/15``; skipped with a message when it does not answer) and deletes
every key it wrote. Runs on uvloop when it is installed (``--loop asyncio`` for the default
loop); ``--no-hiredis`` hides hiredis from redis-py, which then parses replies in Python.

    python benchmarks/bench_redis_client.py [--quick] [--calls N] [--rounds R] [--loop L]
                                            [--no-hiredis]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BASTION_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
BASELINE = "redis-py evalsha, store's client"
WARMUP = 300
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")

Call = Callable[[], Awaitable[Any]]
Closer = Callable[[], Awaitable[Any]]


async def build(url: str, prefix: str) -> tuple[dict[str, Call], list[Closer]]:
    """Every variant as a zero-argument coroutine function, in the order they are printed."""
    from redis.asyncio import Redis

    from bastion.stores import RateLimitHit, RedisStore
    from bastion.stores._redis_client import _script

    store = RedisStore.from_url(url, prefix=prefix)
    hits = [RateLimitHit(f"{tier}:203.0.113.7", "fixed_window", 10**9, 60_000) for tier in "ab"]
    keys = [store.bucket_key(hit.key) for hit in hits]
    args = ["", 1_000, *("f", 10**9, 60_000, 1) * 2]
    sha = _script("hit").sha
    plain = Redis.from_url(url, socket_timeout=None)  # redis-py 8's default is 5 s
    floor = await plain.connection_pool.get_connection()

    async def store_hit() -> Any:
        return await store.hit(hits)

    async def store_claim() -> Any:
        return await store.claim("claimed", "fingerprint", "token", lease_ms=30_000)

    async def evalsha_store_client() -> Any:
        return await store.client.evalsha(sha, len(keys), *keys, *args)

    async def evalsha_plain() -> Any:
        return await plain.evalsha(sha, len(keys), *keys, *args)

    async def one_connection() -> Any:
        command = floor.pack_command("EVALSHA", sha, len(keys), *keys, *args)
        await floor.send_packed_command(command, check_health=False)
        return await floor.read_response()

    async def close() -> None:
        await plain.connection_pool.release(floor)
        await plain.aclose()
        await store.aclose()

    await store.hit(hits)  # the script cached on the server before anyone sends its SHA
    variants: dict[str, Call] = {
        "RedisStore.hit, 2 tiers": store_hit,
        "RedisStore.claim": store_claim,
        BASELINE: evalsha_store_client,
        "redis-py evalsha, no socket_timeout": evalsha_plain,
        "one connection: pack, send, read": one_connection,
    }
    return variants, [close]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def time_rounds(variants: dict[str, Call], calls: int, rounds: int) -> dict[str, float]:
    """Best round's process CPU seconds per call of each variant."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, call in variants.items():
            begin = _cpu()
            for _ in range(calls):
                await call()
            best[name] = min(best[name], (_cpu() - begin) / calls)
    return best


# -- instructions -----------------------------------------------------------------------------


async def _child(name: str, calls: int, prefix: str, url: str) -> None:
    variants, _closers = await build(url, prefix)
    call = variants[name]
    for _ in range(WARMUP):
        await call()
    for _ in range(calls):
        await call()
    print("ok", flush=True)
    os._exit(0)  # no teardown: closing connections is not a call's cost


def _valgrind() -> list[str]:
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    if shutil.which("setarch"):
        command = ["setarch", platform.machine(), "-R", *command]
    return command


def _count(name: str, calls: int, prefix: str, options: list[str]) -> int | None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        *_valgrind(),
        sys.executable,
        str(Path(__file__).resolve()),
        *("--child", name, "--calls", str(calls), "--prefix", prefix, *options),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = _IREFS.search(done.stderr)
    if done.returncode != 0 or found is None or done.stdout.strip() != "ok":
        tail = (done.stdout.strip() or done.stderr.strip()).splitlines()[-3:]
        print(f"{name}: instructions NOT MEASURED: {' | '.join(tail)}")
        return None
    return int(found.group(1).replace(",", ""))


def per_call(name: str, calls: int, tag: str, options: list[str]) -> float | None:
    # one prefix per child, of the same length, so that the two runs' keys never meet
    measured = _count(name, calls, f"{tag}n", options)
    baseline = _count(name, 0, f"{tag}z", options)
    if measured is None or baseline is None:
        return None
    return (measured - baseline) / calls


# -- report -----------------------------------------------------------------------------------


def _versions(loop: str) -> str:
    found = []
    for package in ("redis", "hiredis", "uvloop"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = None
        hidden = package == "hiredis" and sys.modules.get("hiredis", "") is None
        found.append(f"no {package}" if version is None or hidden else f"{package} {version}")
    return f"CPython {platform.python_version()}, {', '.join(found)}, {loop} loop"


def report(micro: dict[str, float], instructions: dict[str, float | None], calls: int) -> None:
    base_us = micro[BASELINE]
    base_i = instructions.get(BASELINE)
    print(f"\n{'variant':<38} {'cpu us/call':>11} {'ratio':>6} {'instr/call':>11} {'ratio':>6}")
    for name, seconds in micro.items():
        instr = instructions.get(name)
        i_cells = (
            f"{'-':>11} {'-':>6}"
            if instr is None or base_i is None
            else f"{instr:>11,.0f} {instr / base_i:>6.2f}"
        )
        us = seconds * 1e6
        print(f"{name:<38} {us:>11.1f} {seconds / base_us:>6.2f} {i_cells}")
    print(
        f"\ncpu: best round of {calls} sequential calls, process user + system time, GC on; "
        f"instructions: (I({calls}) - I(0)) / {calls} under cachegrind after {WARMUP} warm-up "
        f"calls; ratios to {BASELINE!r}"
    )


async def main(args: argparse.Namespace) -> None:
    from servers import delete_redis_keys, reachable_redis

    calls = args.calls or (300 if args.quick else 2000)
    rounds = args.rounds or (3 if args.quick else 7)
    down = await reachable_redis(args.redis_url)
    if down is not None:
        print(
            f"bench_redis_client: NOT MEASURED, Redis at {args.redis_url} does not answer: {down}"
        )
        return
    tag = f"bastionbench_{uuid.uuid4().hex[:8]}"
    print(f"bench_redis_client: {_versions(args.loop)}; Redis at {args.redis_url}")
    try:
        variants, closers = await build(args.redis_url, tag)
        for call in variants.values():  # connections opened, first-call caches filled
            for _ in range(50):
                await call()
        gc.collect()
        micro = await time_rounds(variants, calls, rounds)
        for close in closers:
            await close()
        instructions: dict[str, float | None] = {}
        if shutil.which("valgrind") is None:
            print("valgrind is not installed (apt-get install valgrind): instructions NOT MEASURED")
        else:
            options = ["--loop", args.loop, "--redis-url", args.redis_url]
            options += ["--no-hiredis"] if args.no_hiredis else []
            with ThreadPoolExecutor(args.jobs) as pool:
                futures = {
                    name: pool.submit(per_call, name, calls, f"{tag}{i}", options)
                    for i, name in enumerate(variants)
                }
                instructions = {name: future.result() for name, future in futures.items()}
        report(micro, instructions, calls)
    finally:
        await delete_redis_keys(args.redis_url, tag)


def _run(coroutine: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


def _default_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--calls", type=int, help="N, sequential calls per round and count")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (best one kept)")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind children at once")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=_default_loop())
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--no-hiredis", action="store_true", help="parse replies in Python")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if parsed.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    if parsed.child:
        _run(_child(parsed.child, parsed.calls or 0, parsed.prefix, parsed.redis_url), parsed.loop)
    else:
        _run(main(parsed), parsed.loop)
