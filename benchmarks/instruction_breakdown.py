"""Where a variant's instructions go: the same count as `bench_instructions`, with one part
replaced by a stub at a time, so each part's marginal cost is the difference.

A part is a named stub (``--parts``, default all): the memory store's rate-limit ``hit`` (a
fixed allowed answer), its ``claim`` and ``complete`` (an acquired claim, a stored answer),
the metrics middleware's ``_record``, the idempotency fingerprint, the stored-response
encoding, the scoped key, the fencing token, the rate-limit fields, or the cyclic GC
(``nogc``). Each count runs under valgrind as ``bench_instructions`` does ((I(N) - I(0)) / N,
``PYTHONHASHSEED=0``, ASLR off); the stubs change what the requests do, so read the
differences, never the stubbed totals. Not a benchmark itself (nox runs only ``bench_*.py``).

    python benchmarks/instruction_breakdown.py ["full stack, memory"] [--parts hit,claim] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("hit", "claim", "record", "fingerprint", "encode", "scoped", "token", "fields", "nogc")
WARMUP = 100


def _stub(part: str) -> None:
    import gc

    import bastion.idempotency._request as request
    import bastion.metrics._middleware as metrics
    import bastion.ratelimit._middleware as ratelimit
    from bastion.stores import MemoryStore
    from bastion.stores._protocols import Claim, RateLimitDecision

    store: Any = MemoryStore
    if part == "hit":
        allowed = RateLimitDecision(True, 10**7, 10**6, 1000, 0)

        async def hit(self: Any, hits: Any) -> Any:
            return [allowed] * len(hits)

        store.hit = hit
    elif part == "claim":

        async def claim(self: Any, key: str, fingerprint: str, token: str, **_: Any) -> Any:
            return Claim(True, fingerprint)

        async def complete(self: Any, *_: Any, **__: Any) -> bool:
            return True

        store.claim, store.complete = claim, complete
    elif part == "record":
        metrics.MetricsMiddleware._record = lambda self, *args: None  # type: ignore[method-assign]
    elif part == "fingerprint":
        request.normal_fingerprint = lambda *args: "0" * 64
    elif part == "encode":
        request.encode_response = lambda *args, **kwargs: b"x"
    elif part == "scoped":
        request.scoped_key = lambda principal, key: key
    elif part == "token":
        request.new_token = lambda: "token"
    elif part == "fields":
        ratelimit.rate_fields = lambda policy, items, legacy: [(b"ratelimit", b"x")]
    elif part == "nogc":
        gc.disable()
    elif part:
        raise SystemExit(f"unknown part {part!r}; one of {', '.join(PARTS)}")


async def _child(name: str, part: str, requests: int) -> None:
    _stub(part)
    import stacks

    variant = stacks.VARIANTS[name]
    app, _closers = stacks.build(name)
    await stacks.prime(app, variant)
    await stacks.run(app, stacks.scopes(variant, stacks.keys("w", 0, WARMUP)))
    if requests:
        await stacks.run(app, stacks.scopes(variant, stacks.keys("m", 0, requests)))
    os._exit(0)


def _count(name: str, part: str, requests: int) -> int:
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    if shutil.which("setarch"):
        command = ["setarch", platform.machine(), "-R", *command]
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [*command, sys.executable, __file__, "--child", name, part, str(requests)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if found is None:
        raise SystemExit(f"{name} [{part}]: {done.stderr.strip().splitlines()[-3:]}")
    return int(found.group(1).replace(",", ""))


def main(args: argparse.Namespace) -> None:
    parts = ["", *(args.parts.split(",") if args.parts else PARTS)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = {
            p: (
                pool.submit(_count, args.variant, p, args.requests),
                pool.submit(_count, args.variant, p, 0),
            )
            for p in parts
        }
        whole = None
        print(
            f"{args.variant}: instructions per request, (I({args.requests}) - I(0)) / {args.requests}"
        )
        for part, (measured, baseline) in runs.items():
            per_request = (measured.result() - baseline.result()) / args.requests
            if whole is None:
                whole = per_request
                print(f"  {'as it is':<20} {per_request:>10,.0f}")
            else:
                print(
                    f"  {part + ' stubbed':<20} {per_request:>10,.0f}  part costs {whole - per_request:>8,.0f}"
                )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("variant", nargs="?", default="full stack, memory")
    parser.add_argument("--parts", help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=2)
    main(parser.parse_args())
