"""What the clients know: the event log read back, and the requests it cannot vouch for.

The locustfile writes a line before each request is sent and one when it ends. A request
whose end is an answer (a status) is known on both sides. The others are *in doubt*: the
server may have run and counted them, or never seen them, and no client can tell which. A
connection closed before any answer, a user stopped (killed past ``--stop-timeout``) while its
request was in flight, and a request sent but never ended in the log (the process exited
under it) are each one such request. The audit compares exactly what both sides know and
allows the server at most one decision per request in doubt, never more.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClientLog", "load_log"]


@dataclass
class ClientLog:
    answers: list[dict[str, Any]] = field(default_factory=list)
    """Every request that ended with a status (0: the connection closed before an answer)."""
    stopped: list[dict[str, Any]] = field(default_factory=list)
    """Requests whose user was stopped while they were in flight."""
    unended: list[dict[str, Any]] = field(default_factory=list)
    """Requests sent and never ended in the log."""

    @property
    def answered(self) -> list[dict[str, Any]]:
        return [e for e in self.answers if e["status"]]

    @property
    def in_doubt(self) -> list[dict[str, Any]]:
        closed = [e for e in self.answers if not e["status"]]
        return closed + self.stopped + self.unended

    def doubt_by_kind(self) -> dict[str, int]:
        return {
            "closed before an answer": sum(1 for e in self.answers if not e["status"]),
            "stopped in flight": len(self.stopped),
            "sent, never ended": len(self.unended),
        }

    def doubt_by_op(self) -> Counter[str]:
        return Counter(e["op"] for e in self.in_doubt)

    def unanswered_keys(self) -> set[str]:
        """Keys that never got an answer although no client gave up on them: every try
        closed before an answer. A key the harness stopped, or the log lost, is not one."""
        answered = {e["key"] for e in self.answers if e["status"]}
        cut = {e["key"] for e in self.stopped + self.unended}
        return {e["key"] for e in self.answers if not e["status"]} - answered - cut


def load_log(path: Path) -> ClientLog:
    """Read the event log. A log without ``sent`` lines (an older run) has no doubt but its
    closed connections."""
    log = ClientLog()
    sent: dict[str, dict[str, Any]] = {}
    ended: set[str] = set()
    with path.open() as lines:
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            rid = event.get("rid")
            if event.get("phase") == "sent":
                sent[rid] = event
                continue
            if rid is not None:
                ended.add(rid)
            if event.get("stopped"):
                log.stopped.append(event)
            else:
                log.answers.append(event)
    log.unended = [e for rid, e in sent.items() if rid not in ended]
    return log
