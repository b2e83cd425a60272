"""Keeping a copy of a response while it streams to the client."""

from __future__ import annotations

from bastion.typing import Message, Send

__all__ = ["ResponseCapture"]


class ResponseCapture:
    """Wraps ``send`` to keep a copy of the response while it streams to the client."""

    __slots__ = ("body", "complete", "headers", "limit", "overflow", "send", "status")

    def __init__(self, send: Send, limit: int) -> None:
        self.send = send
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.overflow = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if not self.overflow:
                if len(self.body) + len(chunk) > self.limit:
                    self.overflow = True
                    self.body.clear()
                else:
                    self.body += chunk
            if not message.get("more_body", False):
                self.complete = True
        await self.send(message)
