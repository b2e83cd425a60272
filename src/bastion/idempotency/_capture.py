"""Keeping a copy of a response while it streams to the client, whatever the client does.

Once the request body is read the handler runs to completion even if the client leaves: a
response that can still be stored is the one a retry must get, and running the handler
again is what the key exists to prevent. So while the response is storable the capture hides
the client's departure from the app (``receive`` holds back ``http.disconnect``, ``send``
swallows the server's error and keeps capturing). A response that outgrew the limit cannot be
stored anyway, so from then on the departure is shown again and an endless stream ends.
"""

from __future__ import annotations

import anyio

from bastion._asgi import ClientDisconnected
from bastion.typing import Message, Receive, Send

__all__ = ["ResponseCapture"]


def _read_prefix(path: str, size: int) -> bytes:
    with open(path, "rb") as file:
        return file.read(size)


class ResponseCapture:
    """Wraps ``send`` (called as the object) and ``receive`` (the `receive` method) of one
    keyed request; the request body the middleware read already is the first thing
    ``receive`` hands the app (one wrapper for both jobs).

    ``overflow`` means the response cannot be stored: it outgrew ``limit``, or a file sent
    with ``http.response.pathsend`` could not be read.
    """

    __slots__ = (
        "chunks",
        "complete",
        "disconnect",
        "ended",
        "finished",
        "gone",
        "headers",
        "inner",
        "limit",
        "overflow",
        "pending",
        "send",
        "size",
        "status",
    )

    def __init__(self, send: Send, receive: Receive, limit: int, body: bytes | None = None) -> None:
        self.send = send
        self.inner = receive
        self.pending = body
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.complete = False
        self.gone = False
        self.finished = False
        self.disconnect: Message | None = None
        # made only for a client that leaves before the response ends: the rare case
        self.ended: anyio.Event | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if not self.overflow:
                self.size += len(chunk)
                if self.size > self.limit:
                    self._overflowed()
                elif chunk:
                    self.chunks.append(chunk)
            if not message.get("more_body", False):
                self._complete()
        elif kind == "http.response.start":
            self.status = message["status"]
            # a copy: middleware further out may edit the message's list in place as it passes
            self.headers = list(message.get("headers", ()))
        elif kind == "http.response.pathsend":
            await self._capture_file(message["path"])
            self._complete()
        if self.gone:
            if self.overflow:
                raise ClientDisconnected("the client disconnected")
            return
        try:
            await self.send(message)
        except OSError:
            if self.overflow:
                raise
            self.gone = True

    async def receive(self) -> Message:
        """The app's ``receive``: ``http.disconnect`` waits until the response has ended or
        can no longer be stored."""
        body = self.pending
        if body is not None:
            self.pending = None
            return {"type": "http.request", "body": body, "more_body": False}
        message = self.disconnect
        if message is None:
            message = await self.inner()
            if message["type"] != "http.disconnect":
                return message
            self.disconnect = message
            self.gone = True
        if not (self.complete or self.overflow or self.finished):
            if self.ended is None:
                self.ended = anyio.Event()
            await self.ended.wait()
        return message

    def end(self) -> None:
        """The app has returned: nothing is left to wait for."""
        self.finished = True
        if self.ended is not None:
            self.ended.set()

    def _complete(self) -> None:
        self.complete = True
        if self.ended is not None:
            self.ended.set()

    def _overflowed(self) -> None:
        self.overflow = True
        self.chunks.clear()
        if self.ended is not None:
            self.ended.set()

    async def _capture_file(self, path: str) -> None:
        if self.overflow:
            return
        room = self.limit - self.size
        try:
            data = await anyio.to_thread.run_sync(_read_prefix, path, room + 1)
        except OSError:
            self._overflowed()
            return
        self.size += len(data)
        if self.size > self.limit:
            self._overflowed()
        elif data:
            self.chunks.append(data)

    @property
    def body(self) -> bytes:
        """The body as sent so far (empty once it overflowed the limit)."""
        return b"".join(self.chunks)
