"""Locust's stop racing a user's next iteration, made deterministic; run by test_load_harness.

``python load_stop_race.py LOCUSTFILE HOST EVENTS_FILE DUPLICATE_SHARE``. Never imported by the
tests: locust gevent-patches the process that imports it.

When Locust stops a user that is waiting between iterations it kills its greenlet, but
gevent delivers a kill through the hub's callback queue: a user whose wake-up is already
queued runs first, starts its next iteration and sends a request, and the kill lands while
that request is in flight (the server may handle it; the client never sees the answer). A
wait of 0 queues the wake-up before any stop; stopping the user at that moment, as
``Runner.stop_users`` does, reproduces the race every time.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import gevent
import locust
from locust import constant
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
    user_class = module.RegisterUser
    user_class.wait_time = constant(0)
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
    deadline = time.monotonic() + 60
    while True:
        if runner.user_count:
            user = next(iter(runner.user_greenlets)).args[0]
            if user._state == LOCUST_STATE_WAITING:
                break
        if time.monotonic() > deadline:
            print("the user never waited between iterations", file=sys.stderr)
            return 2
        gevent.sleep(0)
    user.stop(force=False)  # waiting: Locust kills it, after the wake-up already queued
    runner.quit()
    environment.events.quitting.fire(environment=environment)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
