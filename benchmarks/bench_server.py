"""A real server under load: uvicorn with 2 workers, driven by wrk, req/s and p50/p99.

Each variant of `stacks` is served by ``uvicorn --workers 2`` (uvloop and httptools when
installed, access log off, the cyclic GC on as in production) on a free loopback port that
this script picks, and loaded by Debian's ``wrk`` (``-t1 -c32``) with a Lua script that sends
``POST /payments`` with a 35-byte JSON body, an ``X-API-Key`` and a unique ``Idempotency-Key``
per request, so every request is a first run. Each variant gets a short warm-up load, then
one bounded measured run; the server is stopped before the next variant starts. A request
answered with anything but 2xx/3xx is reported (wrk counts them), and a variant with any is
marked. Each worker counts and times its garbage collections (`stacks.log_collections`) over
its whole life (readiness probes, warm-up and run): the "GC" column sums both workers' young
and full collections and gives the longest pause, so a per-request reference cycle, which
in-process benchmarks barely see, shows as full collections the bare app does not have.

Memory variants keep one store per worker process. The Redis variants (and their peer) need
Redis at ``BASTION_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``); every key
they make carries this run's tag and is deleted at the end. ``full stack, redis, no hiredis``
hides hiredis from redis-py, to show what that optional parser is worth.

Everything shares the machine: wrk, both workers and Redis compete for its cores, so read the
ratios to the bare app within one run, not the absolute figures.

    python benchmarks/bench_server.py [--quick] [--duration SECONDS] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import stacks

HERE = Path(__file__).resolve().parent
CONNECTIONS = 32
WORKERS = 2
NO_HIREDIS = "full stack, redis, no hiredis"
FREEZE = "BASTION_BENCH_GC_FREEZE"
"""Set (by ``--gc-freeze``): each worker moves what start-up made out of the collector's reach."""
SERVED = [
    "bare",
    "full stack, memory",
    "full stack, redis",
    NO_HIREDIS,
    "peers exporter+slowapi+fastapi-idempotency",
    "peers instrumentator+slowapi+fastapi-idempotency",
    "peers exporter+slowapi+asgi-idempotency-header, redis",
]
TARGETS = {"memory p99": 2.0, "memory req/s": 0.75, "redis req/s": 0.25}
"""Issue 14: full stack on memory p99 <= 2x bare and >= 0.75 of bare req/s (item 1); on
Redis >= 0.25 of bare req/s (item 4)."""
LUA = """
local counter = 0
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "bench-api-key-1"
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "{prefix}-" .. counter
  return wrk.format(nil, "{path}")
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH p50=%d p99=%d\\n", latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Result:
    rps: float
    p50_us: float
    p99_us: float
    errors: int
    gc: str = "-"
    """Both workers' collections over the server's life: young (gen 0 + 1), full (gen 2),
    and the longest pause in ms."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _serve(name: str, port: int, tag: str, gc_log: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BASTION_BENCH_VARIANT": name,
        "BASTION_BENCH_PREFIX": tag,
        "BASTION_BENCH_GC_LOG": gc_log,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    if name == NO_HIREDIS:
        env["BASTION_BENCH_VARIANT"] = "full stack, redis"
        env["BASTION_BENCH_NO_HIREDIS"] = "1"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "stacks:server_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(WORKERS),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop" if _installed("uvloop") else "asyncio",
        "--http",
        "httptools" if _installed("httptools") else "h11",
    ]
    return subprocess.Popen(command, env=env, cwd=HERE, start_new_session=True)


def _answers(port: int, key: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST",
            stacks.PATH,
            body=stacks.BODY,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def _ready(server: subprocess.Popen[bytes], port: int, tag: str) -> str | None:
    """None once both workers would answer (a few 201s in a row), else why not."""
    deadline = time.monotonic() + 60
    ok = 0
    attempt = 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"uvicorn exited with {server.returncode}"
        attempt += 1
        status = _answers(port, f"{tag}-ready-{attempt}")
        if status == 201:
            ok += 1
            if ok >= 10:
                return None
        elif status is not None:
            return f"answered {status}"
        else:
            time.sleep(0.2)  # polling a starting server, not synchronising a test
    return "did not answer within 60 s"


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wrk(port: int, prefix: str, seconds: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            LUA.replace("{body}", stacks.BODY.decode())
            .replace("{prefix}", prefix)
            .replace("{path}", stacks.PATH)
        )
    try:
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{seconds}s",
                "--timeout",
                "5s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tail = re.search(r"BENCH p50=(\d+) p99=(\d+)", out)
    if rps is None or tail is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    count = int(errors.group(1)) if errors else 0
    if socket_errors:
        count += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return Result(float(rps.group(1)), float(tail.group(1)), float(tail.group(2)), count)


def measure(name: str, index: int, tag: str, seconds: int, warmup: int) -> Result | str:
    try:  # a peer that is not installed would only make uvicorn restart its workers forever
        stacks.build("full stack, redis" if name == NO_HIREDIS else name)
    except ImportError as exc:
        return f"{exc.name} is not installed (`python3 dev.py bench` installs the peers)"
    port = _free_port()
    with tempfile.TemporaryDirectory(suffix="-gc") as gc_log:
        server = _serve(name, port, tag, gc_log)
        try:
            if (why := _ready(server, port, f"{tag}-{index}")) is not None:
                return why
            _wrk(port, f"{tag}-{index}-warm", warmup)
            result = _wrk(port, f"{tag}-{index}-run", seconds)
        finally:
            _stop(server)
        return dataclasses.replace(result, gc=_collections(Path(gc_log)))


def _collections(directory: Path) -> str:
    """``young/full/longest ms`` summed over the workers' files of `stacks.log_collections`
    (``0/0/0``: no worker collected at all)."""
    lines = [f.read_text().split() for f in sorted(directory.glob("*.gc"))]
    lines = [line for line in lines if len(line) == 5]
    if not lines:
        return "0/0/0"
    young = sum(int(f[0]) + int(f[1]) for f in lines)
    full = sum(int(f[2]) for f in lines)
    longest = max(float(f[3]) for f in lines)
    return f"{young}/{full}/{longest:.0f}"


def report(results: dict[str, Result], seconds: int) -> None:
    base = results.get("bare")
    loop = "uvloop" if _installed("uvloop") else "asyncio"
    parser = "httptools" if _installed("httptools") else "h11"
    print(
        f"\nreal server: uvicorn --workers {WORKERS} ({loop}, {parser}), wrk -t1 -c{CONNECTIONS} "
        f"-d{seconds}s, POST with a fresh Idempotency-Key each, GC on"
        f"{' (gc.freeze() once the app is built)' if os.environ.get(FREEZE) else ''}; "
        "ratios to bare"
    )
    print(
        f"{'variant':<54} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'p99 ratio':>9} {'errors':>7} {'GC young/full/ms':>17}"
    )
    for name, r in results.items():
        ratio = f"{r.rps / base.rps:>6.2f}" if base else f"{'-':>6}"
        p99 = f"{r.p99_us / base.p99_us:>9.2f}" if base else f"{'-':>9}"
        print(
            f"{name:<54} {r.rps:>9,.0f} {ratio} {r.p50_us / 1000:>7.2f} {r.p99_us / 1000:>7.2f}"
            f" {p99} {r.errors:>7} {r.gc:>17}"
        )
    if base is None:
        return
    memory = results.get("full stack, memory")
    if memory:
        p99 = memory.p99_us / base.p99_us
        rps = memory.rps / base.rps
        print(
            f"targets (issue 14 item 1, full stack on memory): p99 {p99:.2f}x bare <= "
            f"{TARGETS['memory p99']:g}x: {'met' if p99 <= TARGETS['memory p99'] else 'MISSED'}; "
            f"req/s {rps:.2f} of bare >= {TARGETS['memory req/s']:g}: "
            f"{'met' if rps >= TARGETS['memory req/s'] else 'MISSED'}"
        )
    redis = results.get("full stack, redis")
    if redis:
        rps = redis.rps / base.rps
        print(
            f"target (issue 14 item 4, full stack on Redis): req/s {rps:.2f} of bare >= "
            f"{TARGETS['redis req/s']:g}: {'met' if rps >= TARGETS['redis req/s'] else 'MISSED'}"
        )


async def _redis_state(tag: str, clean: bool) -> str | None:
    from servers import delete_redis_keys, reachable_redis

    if (why := await reachable_redis(stacks.REDIS_URL)) is not None:
        return why
    if clean:
        await delete_redis_keys(stacks.REDIS_URL, tag)
    return None


def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        print("bench_server: wrk is not installed (apt-get install wrk): NOT MEASURED")
        return
    if args.gc_freeze:
        os.environ[FREEZE] = "1"  # the servers inherit it: `stacks.server_app`
    seconds = args.duration or (3 if args.quick else 12)
    warmup = 1 if args.quick else 3
    tag = f"bastionbench_{uuid.uuid4().hex[:8]}"
    names = [n for n in SERVED if args.only is None or args.only in n]
    if "bare" not in names:
        names.insert(0, "bare")
    redis_down = None
    if any("redis" in n for n in names):
        redis_down = asyncio.run(_redis_state(tag, clean=False))
        if redis_down is not None:
            print(f"Redis at {stacks.REDIS_URL} NOT MEASURED, unreachable: {redis_down}")
    results: dict[str, Result] = {}
    try:
        for index, name in enumerate(names):
            if "redis" in name and redis_down is not None:
                continue
            if name == NO_HIREDIS and not _installed("hiredis"):
                print(f"{name}: NOT MEASURED, hiredis is not installed here anyway")
                continue
            outcome = measure(name, index, tag, seconds, warmup)
            if isinstance(outcome, str):
                print(f"{name}: NOT MEASURED, {outcome}")
                continue
            results[name] = outcome
            print(
                f"  {name}: {outcome.rps:,.0f} req/s, p99 {outcome.p99_us / 1000:.2f} ms",
                flush=True,
            )
    finally:
        if redis_down is None and any("redis" in n for n in names):
            asyncio.run(_redis_state(tag, clean=True))
    report(results, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--duration", type=int, help="seconds of each measured wrk run")
    parser.add_argument("--only", help="only the variants whose name contains this (and bare)")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="each worker calls gc.freeze() once its app is built (every variant, bare too)",
    )
    main(parser.parse_args())
