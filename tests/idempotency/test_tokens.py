"""Fencing tokens: unique per claim in every process, forked workers included."""

from __future__ import annotations

import os
import warnings

import pytest

from bastion.idempotency._tokens import new_token

COUNT = 50

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")


def _draw_in_child() -> tuple[int, int]:
    """Fork; the child draws COUNT tokens, writes them to a pipe and exits at once."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when forking a process that runs threads; the child below only
        # draws tokens and writes to a pipe, so no lock another thread held can stall it
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit, unmeasured
        code = 1
        try:
            os.close(read_end)
            payload = "\n".join(new_token() for _ in range(COUNT)).encode()
            while payload:
                payload = payload[os.write(write_end, payload) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, read_end: int) -> list[str]:
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.decode().split("\n")


def test_forked_workers_never_repeat_a_token() -> None:
    """Workers forked after import, after the parent already drew tokens (``gunicorn
    --preload``), draw tokens that no other worker and not the parent ever draws."""
    parent = [new_token() for _ in range(COUNT)]
    first = _draw_in_child()
    second = _draw_in_child()
    parent += [new_token() for _ in range(COUNT)]
    children = _collect(*first) + _collect(*second)
    assert len(children) == 2 * COUNT
    everything = parent + children
    assert len(set(everything)) == len(everything)
