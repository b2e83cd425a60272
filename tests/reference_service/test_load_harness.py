"""The load harness's own honesty: a user stopped while its requests are in flight leaves each
of them in the event log, and the audit's counter comparison is exact when no request is in
doubt and allows at most one server decision per request that is."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
LOADTEST = HERE.parents[1] / "examples" / "reference_service" / "loadtest"
LOCUSTFILE = LOADTEST / "locustfile.py"


def _module(name: str) -> ModuleType:
    # loadtest is a directory of the example, not an installed package; these two modules
    # import nothing of it (the locustfile, which gevent-patches its process, is never imported)
    spec = importlib.util.spec_from_file_location(f"loadtest_{name}", LOADTEST / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clientlog = _module("clientlog")
counters = _module("counters")


class _Stub(ThreadingHTTPServer):
    """Notes the key of every POST it reads; answers 201 at once for the first ``prompt``
    keys it sees, and for the others only once ``release`` is set (those stay in flight as
    long as the load generator lives). HTTP/1.1 keep-alive, as uvicorn."""

    daemon_threads = False  # server_close() joins the handlers: every request read is noted

    def __init__(self, *, prompt: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.prompt = prompt
        self.keys: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def finish(self) -> Counter[str]:
        """Stop, once every connection has closed: the keys of every request received."""
        self.release.set()
        self.shutdown()
        self.server_close()
        return Counter(self.keys)


class _Handler(BaseHTTPRequestHandler):
    server: _Stub
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Idempotency-Key", "")
        with self.server.lock:
            self.server.keys.append(key)
            prompt = key in list(dict.fromkeys(self.server.keys))[: self.server.prompt]
        if not prompt:
            self.server.release.wait(60)
        try:
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            self.close_connection = True  # the load generator is gone

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _stub(*, prompt: int) -> Iterator[_Stub]:
    server = _Stub(prompt=prompt)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.finish()


def _locust(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert importlib.util.find_spec("locust"), "locust is in requirements-dev.txt"
    result = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("share", ["0", "1"], ids=["single", "duplicate"])
def test_a_user_stopped_between_iterations_sends_nothing_more(tmp_path: Path, share: str) -> None:
    """Locust stops a user waiting between iterations whose wake-up is already queued
    (load_stop_race.py): the user stops before its next iteration. Else the kill lands in
    that iteration: on a single request the client then cannot know the server's answer,
    and on a concurrent duplicate it kills the parent and not the copies, which the server
    answers after the load generator has exited (session 3: one 201 and two 409s that the
    server counted and the log never had)."""
    events = tmp_path / "events.jsonl"
    with _stub(prompt=1) as server:
        _locust(
            tmp_path,
            *(str(HERE / "load_stop_race.py"), str(LOCUSTFILE), server.url, str(events), share),
        )
        received = server.finish()
    log = clientlog.load_log(events)
    assert log.answered, "the user's first iteration was answered"
    assert Counter(e["key"] for e in log.answered) == received, log.in_doubt
    assert log.in_doubt == []


@pytest.mark.slow
def test_a_user_killed_mid_duplicate_leaves_every_request_in_the_log(tmp_path: Path) -> None:
    """The ramp ends while a concurrent duplicate (three copies of one keyed request) waits
    for its answers, and Locust kills the user when --stop-timeout runs out. Each copy the
    server received has a line written before it was sent and one saying it was stopped in
    flight, so the audit counts three requests in doubt instead of missing them."""
    events = tmp_path / "events.jsonl"
    with _stub(prompt=0) as server:
        _locust(
            tmp_path,
            *("-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"),
            *("--host", server.url, "--stop-timeout", "1", "--loglevel", "WARNING"),
            *("--events-file", str(events), "--load-seconds", "2", "--peak-users", "1"),
            *("--addresses", "10", "--duplicate-share", "1", "RegisterUser"),
        )
        received = server.finish()
    assert received, "the user sent nothing before the ramp ended; nothing was tested"
    assert set(received.values()) == {3}, received  # whole concurrent duplicates

    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    assert Counter(e["key"] for e in lines if e.get("phase") == "sent") == received
    log = clientlog.load_log(events)
    assert log.answers == []
    assert log.unended == []
    assert Counter(e["key"] for e in log.stopped) == received
    assert len(log.in_doubt) == received.total()
    assert log.unanswered_keys() == set()  # stopped by the harness, not unanswered


def _log(tmp_path: Path, *lines: dict[str, object]) -> object:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return clientlog.load_log(path)


def test_the_log_tells_answers_from_requests_in_doubt(tmp_path: Path) -> None:
    """An answer is known; a closed connection, a stopped request and one sent with no end
    are in doubt; a key whose every try closed before an answer is unanswered."""
    base = {"op": "register", "t": 0.0, "ms": 1.0, "replayed": False}
    log = _log(
        tmp_path,
        *(
            {**base, "rid": rid, "key": key, "phase": "sent"}
            for rid, key in [("a", "k1"), ("b", "k2"), ("c", "k3"), ("d", "k4"), ("e", "k5")]
        ),
        {**base, "rid": "a", "key": "k1", "status": 201},
        {**base, "rid": "b", "key": "k2", "status": 0},
        {**base, "rid": "c", "key": "k3", "stopped": True},
        {**base, "rid": "e", "key": "k5", "status": 0},
        {**base, "rid": "f", "key": "k5", "status": 201},
    )
    assert [e["key"] for e in log.answered] == ["k1", "k5"]
    assert sorted(e["key"] for e in log.in_doubt) == ["k2", "k3", "k4", "k5"]
    assert log.doubt_by_kind() == {
        "closed before an answer": 2,
        "stopped in flight": 1,
        "sent, never ended": 1,
    }
    assert log.unanswered_keys() == {"k2"}


def test_counters_are_exact_without_doubt() -> None:
    """With no request in doubt any difference fails: a handler that ran once more than the
    clients saw (a duplicate run twice) or an answer the server did not count."""
    client = {"stored+released": 10, "replayed": 3}
    assert counters.compare_family("idempotency", client, client, 0) == []
    ran_twice = {"stored+released": 11, "replayed": 3}
    assert counters.compare_family("idempotency", client, ran_twice, 0)
    uncounted = {"stored+released": 9, "replayed": 4}
    assert counters.compare_family("idempotency", client, uncounted, 0)


def test_counters_allow_one_decision_per_request_in_doubt() -> None:
    """A stopped concurrent duplicate (three requests in doubt) may have been counted whole:
    one stored and two conflicts pass; a fourth decision beyond them fails."""
    client = {"stored+released": 10, "conflict_in_flight": 4}
    counted = {"stored+released": 11, "conflict_in_flight": 6}
    assert counters.compare_family("idempotency", client, counted, 3) == []
    assert counters.compare_family("idempotency", client, counted, 2)
    beyond = {"stored+released": 12, "conflict_in_flight": 6}
    assert counters.compare_family("idempotency", client, beyond, 3)
