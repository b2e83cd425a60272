"""`Target`: the route the kit drives, and how to build each request to it."""

from __future__ import annotations

import dataclasses
import secrets
import string
from collections.abc import Mapping

__all__ = ["Target", "parse_header"]


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a pair; `ValueError` naming the text when it is not one."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not a header (expected 'Name: value')")
    return name.strip(), value.strip()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """The route to check and how to reach it as two different principals.

    ``body`` is a `string.Template`: ``${nonce}`` becomes 40 fresh hex digits for each new
    request (a different payload each time, and a valid address after ``0x``), ``${n}`` a
    count. Two requests the kit means to be the same carry the same nonce.
    ``principal_a`` and ``principal_b`` are the headers that make requests come from two
    different tenants (two API keys, two bearer tokens); bastion's default principal reads
    ``Authorization`` or ``X-API-Key``.
    """

    method: str = "POST"
    path: str = "/"
    body: str = '{"nonce": "${nonce}"}'
    content_type: str = "application/json"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    principal_a: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"X-API-Key": "bastion-check-a"}
    )
    principal_b: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"X-API-Key": "bastion-check-b"}
    )
    key_header: str = "Idempotency-Key"
    require_key: bool = False
    """Also check that a request without a key is refused with 400."""
    concurrency: int = 4
    """Duplicates sent at once by the in-flight check."""
    limit_method: str | None = None
    """The request the rate-limit checks send (default: ``method``/``path``)."""
    limit_path: str | None = None
    max_requests: int = 200
    """Requests the rate-limit checks may send looking for a 429 before giving up."""
    max_wait: float = 300.0
    """Longest ``t`` or ``Retry-After`` the kit will wait out; a longer one is reported."""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must start with '/'")
        if self.concurrency < 2:
            raise ValueError("concurrency must be at least 2")
        string.Template(self.body).substitute(nonce="0", n="0")  # a bad template fails now

    def render(self, nonce: str, n: int = 0) -> bytes:
        return string.Template(self.body).substitute(nonce=nonce, n=n).encode()

    @property
    def varies(self) -> bool:
        """Whether two nonces make two different bodies (needed for the 422 check)."""
        return self.render("a" * 40) != self.render("b" * 40)


def nonce() -> str:
    return secrets.token_hex(20)
