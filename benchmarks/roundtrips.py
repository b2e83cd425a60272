"""Count the round trips a client makes to a server by relaying its TCP connections.

A round trip is the client speaking after it heard from the server (or for the first time on a
connection): several commands written together, a pipeline or asyncpg's batched executemany,
are one trip, and commands a Redis script runs inside the server are none. That is what the
latency of a request pays for, whatever the client library (redis-py async or sync, asyncpg),
so the benchmark counts on the wire instead of trusting what each library says it sends.

The relay runs its own event loop in a thread, so a blocking client (slowapi's limits storage)
on the benchmark's loop cannot stall it. For Redis it also names the commands it relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any

__all__ = ["Relay", "RespCommands"]


class RespCommands:
    """Reads the command names out of one connection's client-to-server Redis stream.

    Clients send every command as a RESP array of bulk strings (``*2\\r\\n$3\\r\\nGET\\r\\n…``);
    the stream may be cut anywhere, so unparsed bytes wait for the next chunk.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        names: list[str] = []
        while (parsed := self._one()) is not None:
            names.append(parsed)
        return names

    def _one(self) -> str | None:
        buf = self._buffer
        end = buf.find(b"\r\n")
        if end < 0 or not buf.startswith(b"*"):
            return None
        count, pos, name = int(buf[1:end]), end + 2, ""
        for i in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1 : end])
            if len(buf) < end + 2 + size + 2:
                return None
            if i == 0:
                name = buf[end + 2 : end + 2 + size].decode("latin-1").upper()
            pos = end + 2 + size + 2
        self._buffer = buf[pos:]
        return name


class Relay:
    """A TCP relay to ``host:port`` on a free local port, counting round trips and commands."""

    def __init__(self, host: str, port: int, *, redis: bool = False) -> None:
        self.target = (host, port)
        self.redis = redis
        self.port = 0
        self.trips = 0
        self.commands: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="roundtrip-relay", daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        self._ready.wait(5)
        if not self.port:
            raise RuntimeError("the relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def take(self) -> tuple[int, Counter[str]]:
        """The trips and commands since the last call, and start counting afresh."""
        with self._lock:
            taken = (self.trips, self.commands)
            self.trips, self.commands = 0, Counter()
        return taken

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _handle(self, client_in: asyncio.StreamReader, client_out: Any) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.close()
            return
        parser = RespCommands() if self.redis else None
        client_turn = [False]  # whether the client has spoken since the server last did

        async def pump(source: asyncio.StreamReader, sink: Any, from_client: bool) -> None:
            try:
                while data := await source.read(65_536):
                    if from_client:
                        with self._lock:
                            if not client_turn[0]:
                                client_turn[0] = True
                                self.trips += 1
                            if parser is not None:
                                self.commands.update(parser.feed(data))
                    else:
                        client_turn[0] = False
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        # the relay may close while a client still holds a connection (slowapi never closes)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                pump(client_in, server_out, True), pump(server_in, client_out, False)
            )
