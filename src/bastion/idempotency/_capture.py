"""Keeping a copy of a response while it streams to the client."""

from __future__ import annotations

from bastion.typing import Message, Send

__all__ = ["ResponseCapture"]


class ResponseCapture:
    """Wraps ``send`` to keep a copy of the response while it streams to the client."""

    __slots__ = ("chunks", "complete", "headers", "limit", "overflow", "send", "size", "status")

    def __init__(self, send: Send, limit: int) -> None:
        self.send = send
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if not self.overflow:
                self.size += len(chunk)
                if self.size > self.limit:
                    self.overflow = True
                    self.chunks.clear()
                elif chunk:
                    self.chunks.append(chunk)
            if not message.get("more_body", False):
                self.complete = True
        elif kind == "http.response.start":
            self.status = message["status"]
            # a copy: middleware further out may edit the message's list in place as it passes
            self.headers = list(message.get("headers", ()))
        await self.send(message)

    @property
    def body(self) -> bytes:
        """The body as sent so far (empty once it overflowed the limit)."""
        return b"".join(self.chunks)
