"""Locust's stop racing a user's next iteration, made deterministic; run by test_load_harness.

``python load_stop_race.py LOCUSTFILE HOST EVENTS_FILE DUPLICATE_SHARE``. Never imported by the
tests: locust gevent-patches the process that imports it.

When Locust stops a user that is waiting between iterations it kills its greenlet, but
gevent delivers a kill through the hub's callback queue: a user whose wake-up is already
queued runs first, starts its next iteration and sends a request, and the kill lands while
that request is in flight (the server may handle it; the client never sees the answer). The
user's wait time, asked for once it is waiting, wakes this script and returns 0, so the
user's wake-up is queued right behind the script's; the script then stops the user, as
``Runner.stop_users`` does, and the race happens every time.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import locust
from gevent.event import Event
from locust.argument_parser import parse_options
from locust.env import Environment
from locust.user.task import LOCUST_STATE_WAITING


def main(locustfile: str, host: str, events_file: str, duplicate_share: str) -> int:
    spec = importlib.util.spec_from_file_location("locustfile", locustfile)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its listeners add the options parsed below
    options = parse_options(
        args=[
            *("-f", locustfile, "--host", host, "--events-file", events_file),
            *("--addresses", "10", "--duplicate-share", duplicate_share),
        ]
    )
    waiting = Event()

    def wait_time(user: Any) -> float:
        waiting.set()
        return 0.0

    user_class = module.RegisterUser
    user_class.wait_time = wait_time
    environment = Environment(
        user_classes=[user_class],
        host=host,
        events=locust.events,
        parsed_options=options,
        stop_timeout=60.0,
    )
    runner = environment.create_local_runner()
    environment.events.init.fire(environment=environment, runner=runner, web_ui=None)
    runner.start(1, spawn_rate=1)
    if not waiting.wait(timeout=60):
        print("the user never waited between iterations", file=sys.stderr)
        return 2
    user = next(iter(runner.user_greenlets)).args[0]
    assert user._state == LOCUST_STATE_WAITING
    user.stop(force=False)  # waiting: Locust kills it, after the wake-up already queued
    runner.quit()
    environment.events.quitting.fire(environment=environment)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
