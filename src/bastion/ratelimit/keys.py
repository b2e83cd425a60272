"""Key extractors: which bucket of a tier a request counts against.

An extractor is a callable taking a `RequestView` and returning a key, or None when the request
does not carry one. Every extractor except `client_address` takes a ``fallback`` (the client
address by default) that is asked in turn when the key is missing, so a request without a
wallet is limited per address instead of sharing one bucket with every other such request.
A chain that ends in None (only with an explicit ``fallback=None``) means the tier does not
apply to that request: the way to write "API-key holders get 1000/min, others are limited by
another tier".

Keys are namespaced by extractor (``addr:``, ``hdr:x-api-key=``, ``json:wallet=``...), so two
kinds of key never share a bucket, and values that are long or not printable ASCII are hashed,
so a client cannot make a store key of megabytes or smuggle control characters into it.
`first_of` is the way to let several sources name one bucket (a wallet in the body or in the
query string).

Values are normalised before they name a bucket, so one client cannot spread its requests over
several buckets by spelling the same key differently: surrounding whitespace is trimmed, an
Ethereum-style address (``0x`` and 40 hex digits) is lower-cased, and an ``Authorization`` or
``Proxy-Authorization`` value has its scheme lower-cased and the space after it collapsed
(``Bearer  T`` and ``bearer T`` are one key; the credentials themselves keep their case).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

from bastion._asgi import header as _header
from bastion.exceptions import ConfigurationError
from bastion.typing import Scope

__all__ = [
    "CLIENT_ADDRESS",
    "MISSING",
    "KeyExtractor",
    "RequestView",
    "client_address",
    "custom",
    "first_of",
    "header",
    "json_field",
    "query_param",
]

MAX_PLAIN_KEY = 64
"""Longer values, or values outside printable ASCII, become a hash in the bucket key."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""`RequestView.json` when there is no usable JSON body (absent, too large or malformed)."""


_HEX_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
_AUTHORIZATION = frozenset({"authorization", "proxy-authorization"})


def _normal(value: str) -> str:
    """One spelling per key: trimmed, and a hex address in lower case (EIP-55 checksummed
    addresses mix cases, but name the same account)."""
    value = value.strip()
    if len(value) == 42 and _HEX_ADDRESS.fullmatch(value):
        return value.lower()
    return value


def _normal_credentials(value: str) -> str:
    """``<scheme> <credentials>`` with the scheme in lower case, as RFC 9110 makes it
    case-insensitive, and one space after it. A lone token (an API key sent without a
    scheme) is a credential, and keeps its case."""
    parts = value.split(None, 1)
    if len(parts) < 2:
        return value
    return parts[0].lower() + " " + parts[1]


def _safe(value: str) -> str:
    if len(value) <= MAX_PLAIN_KEY and value.isascii() and value.isprintable():
        return value
    return "#" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


_UNREAD: Final = object()

_DIGEST_CACHE_SIZE = 1024
"""Hashed header keys kept for values seen recently (emptied whenever it fills): a client
sends the same API key on every request, and hashing it each time is most of a header key's
cost."""
_DIGESTS: dict[str, str] = {}


class RequestView:
    """What an extractor may look at, each part computed once per request on first use.

    ``scope`` is the ASGI scope; ``client`` the client address after trusted-proxy resolution;
    ``json`` the parsed request body when a tier needed it, else `MISSING`.
    """

    __slots__ = ("_body", "_client", "_json", "_resolver", "scope")

    def __init__(
        self, scope: Scope, resolver: Callable[[Scope], str | None], body: bytes | None = None
    ) -> None:
        self.scope = scope
        self._resolver = resolver
        self._body = body
        self._client: str | _Missing | None = MISSING
        self._json: Any = _UNREAD

    @property
    def client(self) -> str | None:
        """The client's address (an IPv6 client's network), or None when the server gave none."""
        client = self._client
        if client is MISSING:
            client = self._client = self._resolver(self.scope)
        return client  # type: ignore[return-value]

    @property
    def json(self) -> Any:
        """The JSON body, or `MISSING` when it was not read, too large, or not valid JSON."""
        if self._json is _UNREAD:
            self._json = MISSING
            if self._body:
                with contextlib.suppress(ValueError, RecursionError):
                    self._json = json.loads(self._body)
        return self._json

    @property
    def body(self) -> bytes | None:
        """The request body when a tier needed it and it fitted ``max_body_bytes``, else None."""
        return self._body

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header, ``name`` in lower case."""
        return _header(self.scope, name)

    def query(self, name: str) -> str | None:
        """The first value of a query parameter, percent-decoded."""
        raw: bytes = self.scope.get("query_string", b"")
        if not raw:
            return None
        for key, value in parse_qsl(raw.decode("latin-1")):
            if key == name:
                return value
        return None


class KeyExtractor(Protocol):
    """Names the bucket a request counts against within a tier, or None when it has no key.

    ``needs_body`` says whether the middleware must buffer the JSON body before asking, counting
    the whole fallback chain.
    """

    @property
    def needs_body(self) -> bool: ...

    def __call__(self, request: RequestView, /) -> str | None: ...


class _ClientAddress:
    __slots__ = ()
    needs_body = False

    def __call__(self, request: RequestView) -> str | None:
        client = request.client
        # a server that reports no peer (unix socket) gives every client the same address
        return "addr:" + (client or "unknown")

    def __repr__(self) -> str:
        return "client_address()"


CLIENT_ADDRESS: Final = _ClientAddress()


def client_address() -> KeyExtractor:
    """The client's address, as resolved through ``RateLimitSettings.trusted_proxies``."""
    return CLIENT_ADDRESS


class _Chained:
    """An extractor with a fallback asked when it finds no key."""

    __slots__ = ("fallback", "needs_body", "prefix")

    def __init__(self, prefix: str, fallback: KeyExtractor | None, needs_body: bool) -> None:
        self.prefix = prefix
        self.fallback = fallback
        self.needs_body = needs_body or (fallback is not None and fallback.needs_body)

    def find(self, request: RequestView) -> str | None:
        raise NotImplementedError

    def value(self, request: RequestView) -> str | None:
        """The normalised value this source finds, without prefix or fallback."""
        value = self.find(request)
        return _normal(value) if value else None

    def __call__(self, request: RequestView) -> str | None:
        value = self.value(request)
        if value:
            return self.prefix + _safe(value)
        fallback = self.fallback
        return None if fallback is None else fallback(request)


class _Header(_Chained):
    __slots__ = ("credentials", "hashed", "keys", "name")

    def __init__(self, name: str, hashed: bool, fallback: KeyExtractor | None) -> None:
        super().__init__(f"hdr:{name.lower()}=", fallback, needs_body=False)
        self.name = name.lower().encode("latin-1")
        self.hashed = hashed
        self.credentials = name.lower() in _AUTHORIZATION
        # raw value -> key ("" for none): a client sends the same value on every request,
        # so its key costs one lookup (bounded like `_DIGESTS`, and for the same reason)
        self.keys: dict[bytes, str] = {}

    def __call__(self, request: RequestView) -> str | None:
        raw = _header(request.scope, self.name)
        if raw is not None:
            key = self.keys.get(raw)
            if key is None:
                if len(self.keys) >= _DIGEST_CACHE_SIZE:
                    self.keys.clear()
                value = self._normalised(raw)
                key = self.keys[raw] = self.prefix + _safe(value) if value else ""
            if key:
                return key
        fallback = self.fallback
        return None if fallback is None else fallback(request)

    def value(self, request: RequestView) -> str | None:
        raw = request.header(self.name)
        return None if raw is None else self._normalised(raw)

    def _normalised(self, raw: bytes) -> str | None:
        # normalised before hashing, or two spellings would hash apart
        value = _normal(raw.decode("latin-1"))
        if not value:
            return None
        if self.credentials:
            value = _normal_credentials(value)
        if self.hashed:
            digest = _DIGESTS.get(value)
            if digest is None:
                if len(_DIGESTS) >= _DIGEST_CACHE_SIZE:
                    _DIGESTS.clear()
                # latin-1, as the value was read: an unchanged value hashes as it always did
                digest = hashlib.blake2b(value.encode("latin-1"), digest_size=16).hexdigest()
                _DIGESTS[value] = digest
            return digest
        return value


def header(
    name: str, *, hashed: bool = True, fallback: KeyExtractor | None = CLIENT_ADDRESS
) -> KeyExtractor:
    """A request header (an API key, a tenant id). Hashed by default: headers used as keys are
    often credentials, which have no place in a store's key space or its logs."""
    if not name or not name.isascii():
        raise ConfigurationError(f"header name {name!r} must be non-empty ASCII")
    return _Header(name, hashed, fallback)


class _Query(_Chained):
    __slots__ = ("name",)

    def __init__(self, name: str, fallback: KeyExtractor | None) -> None:
        super().__init__(f"qs:{name}=", fallback, needs_body=False)
        self.name = name

    def find(self, request: RequestView) -> str | None:
        return request.query(self.name)


def query_param(name: str, *, fallback: KeyExtractor | None = CLIENT_ADDRESS) -> KeyExtractor:
    """A query-string parameter (``?wallet=0xabc``)."""
    if not name:
        raise ConfigurationError("query parameter name cannot be empty")
    return _Query(name, fallback)


class _JSONField(_Chained):
    __slots__ = ("path",)

    def __init__(self, path: tuple[str, ...], fallback: KeyExtractor | None) -> None:
        super().__init__(f"json:{'.'.join(path)}=", fallback, needs_body=True)
        self.path = path

    def find(self, request: RequestView) -> str | None:
        value = request.json
        for part in self.path:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None


def json_field(
    path: str | Sequence[str], *, fallback: KeyExtractor | None = CLIENT_ADDRESS
) -> KeyExtractor:
    """A field of a JSON request body: ``"wallet"``, ``"event.id"`` (dotted), ``"items.0.sku"``.

    The middleware buffers the body (up to ``RateLimitSettings.max_body_bytes``) and hands it
    on intact to the handler. A body that is too large, not JSON, or without the field (or
    whose field is not a string or integer) falls back. Pass a sequence for names with dots.
    """
    parts = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
    if not parts or not all(parts):
        raise ConfigurationError(f"JSON field path {path!r} has an empty part")
    return _JSONField(parts, fallback)


class _Custom(_Chained):
    __slots__ = ("function",)

    def __init__(
        self,
        function: Callable[[RequestView], str | None],
        name: str,
        needs_body: bool,
        fallback: KeyExtractor | None,
    ) -> None:
        super().__init__(f"{name}:", fallback, needs_body)
        self.function = function

    def find(self, request: RequestView) -> str | None:
        return self.function(request)


def custom(
    function: Callable[[RequestView], str | None],
    *,
    name: str = "custom",
    needs_body: bool = False,
    fallback: KeyExtractor | None = CLIENT_ADDRESS,
) -> KeyExtractor:
    """Your own key: ``function`` gets the `RequestView` and returns a key or None.

    Set ``needs_body`` when it reads ``request.json``. ``name`` namespaces its keys. An
    exception it raises is not caught: a bug in it should fail loudly in your tests.
    """
    if not name or ":" in name:
        raise ConfigurationError("a custom extractor's name must be non-empty, without ':'")
    return _Custom(function, name, needs_body, fallback)


class _FirstOf(_Chained):
    __slots__ = ("sources",)

    def __init__(
        self, sources: tuple[_Chained, ...], prefix: str, fallback: KeyExtractor | None
    ) -> None:
        super().__init__(prefix, fallback, any(source.needs_body for source in sources))
        self.sources = sources

    def find(self, request: RequestView) -> str | None:
        for source in self.sources:
            value = source.value(request)
            if value:
                return value
        return None


def first_of(
    *sources: KeyExtractor,
    name: str | None = None,
    fallback: KeyExtractor | None = CLIENT_ADDRESS,
) -> KeyExtractor:
    """One bucket named by whichever source carries a value first.

    ``first_of(json_field("wallet"), query_param("wallet"))`` counts a wallet sent in the body
    and the same wallet sent in the query string against one bucket, where chaining them
    with ``fallback=`` would give each its own namespace. Only the values the sources find
    count: their own fallbacks are never asked, this extractor's ``fallback`` is. ``name``
    namespaces the keys (by default, the sources' namespaces joined with ``|``).
    """
    if not sources:
        raise ConfigurationError("first_of needs at least one source")
    chained: list[_Chained] = []
    for source in sources:
        if not isinstance(source, _Chained):
            raise ConfigurationError(
                f"first_of takes header, query_param, json_field, custom or first_of "
                f"extractors, not {source!r}"
            )
        chained.append(source)
    if name is None:
        prefix = "|".join(source.prefix.rstrip("=:") for source in chained) + "="
    elif not name or ":" in name or "=" in name:
        raise ConfigurationError("a first_of name must be non-empty, without ':' or '='")
    else:
        prefix = f"{name}:"
    return _FirstOf(tuple(chained), prefix, fallback)
