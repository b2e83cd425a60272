"""Reading the ``Idempotency-Key`` header and scoping it to a principal."""

from __future__ import annotations

import hashlib
import re

from bastion.typing import Scope

__all__ = ["InvalidKey", "default_principal", "key_header", "parse_key", "scoped_key"]


_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")

CREDENTIAL_CACHE_SIZE = 1024
"""Principals kept for credentials seen recently (emptied whenever it fills): a client sends
the same credential on every request, and hashing it again each time cost a tenth of a keyed
request's instructions. Only this process's memory ever holds it, as it holds the headers."""
_CREDENTIALS: dict[bytes, str] = {}
_PREFIXES: dict[str, bytes] = {}
"""A principal's length-prefixed bytes in `scoped_key`, kept like `_CREDENTIALS`."""


class InvalidKey(ValueError):
    """The header value cannot be used as a key; the message says why."""


def key_header(scope: Scope, name: bytes) -> bytes | None:
    """The key header's value; several headers are refused unless they all say the same,
    since a proxy and a client disagreeing about the key must not pick one silently."""
    found: bytes | None = None
    for field, value in scope["headers"]:
        if field == name:
            if found is not None and bytes(value) != found:
                raise InvalidKey("the request carries several different Idempotency-Key headers")
            found = bytes(value)
    return found


def parse_key(raw: bytes, max_length: int) -> str:
    """The key in a header value, bare (``abc``) or a Structured Field string (``"abc"``).

    Both spellings name the same key. Only printable ASCII is accepted, as RFC 8941 allows
    in a string, so a key can never smuggle control characters into logs or store keys.
    """
    value = raw.strip(b" \t")
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        value = _unquote(value[1:-1])
    if not value:
        raise InvalidKey("the Idempotency-Key header is empty")
    if len(value) > max_length:
        raise InvalidKey(f"the Idempotency-Key is longer than {max_length} characters")
    if _NOT_PRINTABLE.search(value):
        raise InvalidKey("the Idempotency-Key may only contain printable ASCII characters")
    return value.decode("ascii")


def _unquote(inner: bytes) -> bytes:
    out = bytearray()
    escaped = False
    for byte in inner:
        if escaped:
            if byte not in b'"\\':
                raise InvalidKey("the Idempotency-Key string has an invalid escape")
            out.append(byte)
            escaped = False
        elif byte == 0x5C:
            escaped = True
        elif byte == 0x22:
            raise InvalidKey("the Idempotency-Key string has an unescaped quote")
        else:
            out.append(byte)
    if escaped:
        raise InvalidKey("the Idempotency-Key string ends in a lone backslash")
    return bytes(out)


def default_principal(scope: Scope) -> str:
    """The authenticated user if an authentication layer put one in the scope, else the
    caller's credentials if it sent any, else its network address.

    A user set by authentication middleware outside this one (Starlette's
    ``scope["user"]``, with a stable ``identity``) survives token refreshes: a retry sent with
    a renewed bearer token still finds its key. Raw credentials are hashed before they become
    part of a store key. Behind a proxy the address is the proxy's: pass a principal
    extractor that knows your authentication instead.
    """
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        try:
            identity = user.identity
        except (AttributeError, NotImplementedError):
            identity = None
        if identity:
            return f"user:{identity}"
    authorization = api_key = None
    for name, value in scope["headers"]:  # the first of each, in one pass
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    credential = authorization or api_key
    if credential:
        credential = bytes(credential)
        principal = _CREDENTIALS.get(credential)
        if principal is None:
            if len(_CREDENTIALS) >= CREDENTIAL_CACHE_SIZE:
                _CREDENTIALS.clear()
            principal = "cred:" + hashlib.blake2b(credential, digest_size=16).hexdigest()
            _CREDENTIALS[credential] = principal
        return principal
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "anonymous"


def scoped_key(principal: str, key: str) -> str:
    """The store key: one tenant can never reach another tenant's record with the same key."""
    prefix = _PREFIXES.get(principal)
    if prefix is None:
        if len(_PREFIXES) >= CREDENTIAL_CACHE_SIZE:
            _PREFIXES.clear()
        scope = principal.encode("utf-8", "surrogatepass")
        prefix = _PREFIXES[principal] = len(scope).to_bytes(8, "big") + scope
    return hashlib.blake2b(prefix + key.encode(), digest_size=20).hexdigest()
