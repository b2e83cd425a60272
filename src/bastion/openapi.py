"""Describe bastion's middleware in an OpenAPI 3 document, on exactly the operations they cover.

A client generated from the document (or a tester like schemathesis) then knows the
``Idempotency-Key`` header, the problem+json answers the middleware give themselves
(400, 409, 413, 422, 429, 503) and the response fields they add (``RateLimit``,
``RateLimit-Policy``, ``Retry-After``, ``Idempotent-Replayed``).

Which operations are covered is decided by the middleware's own selectors, not a copy of
them: the idempotency include/exclude/require_key patterns compiled as
`IdempotencyMiddleware` compiles them, each tier's routes compiled by
`bastion.ratelimit`'s route compiler, methods and paths normalised by `bastion._paths`.
An operation's path is a template (``/items/{item_id}``), while selectors see concrete
paths, so each ``{parameter}`` is tried with a few values of its declared type (the
placeholder text itself, ``1``, a UUID): the operation is covered when any of them is, and
its key is documented as required only when every one of them requires it. A documented
answer that never comes costs a client nothing; an undocumented one breaks it.

`describe` works on any OpenAPI 3.0/3.1 dict (Starlette's ``SchemaGenerator``, Litestar's,
a hand-written one); `bastion.fastapi.document` applies it to a FastAPI app's schema.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from bastion._paths import normal_method, normal_path
from bastion.idempotency._middleware import _compile
from bastion.idempotency._settings import IdempotencySettings
from bastion.ratelimit._settings import RateLimitSettings
from bastion.ratelimit._tiers import Tier, compile_routes

__all__ = ["PROBLEM_SCHEMA", "Coverage", "coverage", "describe"]

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"{([^{}/]+)}")
_UUID = "00000000-0000-4000-8000-000000000000"
_ANY = ["{}", "1", _UUID, "x"]
"""Values tried for a parameter of any type (``{}``, the placeholder, stands for any text)."""
_PROBLEM_REF = "#/components/schemas/BastionProblem"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem details object (application/problem+json).",
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "A URI reference naming the problem type."},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "violated-policies": {
            "type": "array",
            "items": {"type": "string"},
            "description": "On a 429: the rate-limit policies (tiers) that denied the request.",
        },
    },
    "required": ["type", "title", "status"],
}
"""The problem body bastion sends (and the one a covered operation's error answers share)."""

_SF_NAME = r'"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"'
_POLICY_ITEM = _SF_NAME + r';q=[0-9]{1,15}(;qu="[a-z0-9][a-z0-9-]{0,63}")?(;w=[0-9]{1,15})?'
_LIMIT_ITEM = _SF_NAME + r";r=[0-9]{1,15}(;t=[0-9]{1,15})?"

_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": "The quota policies that apply (draft-ietf-httpapi-ratelimit-headers): "
        'a Structured Field list such as `"burst";q=100;w=60`.',
        "schema": {"type": "string", "pattern": f"^{_POLICY_ITEM}(, {_POLICY_ITEM})*$"},
    },
    "RateLimit": {
        "description": "The quota left (`r`) and the seconds until more is available (`t`) "
        'per policy, most restrictive first: `"burst";r=37;t=42`.',
        "schema": {"type": "string", "pattern": f"^{_LIMIT_ITEM}(, {_LIMIT_ITEM})*$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying; never earlier than the `t` of a "
        "denying policy.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Idempotent-Replayed": {
        "description": "Present when this response is the stored answer to an earlier request "
        "with the same Idempotency-Key, replayed byte for byte.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
_LEGACY_HEADERS: dict[str, dict[str, Any]] = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in (
        ("X-RateLimit-Limit", "The quota of the most restrictive policy (legacy field)."),
        ("X-RateLimit-Remaining", "The quota it has left (legacy field)."),
        ("X-RateLimit-Reset", "Seconds until more of it is available (legacy field)."),
    )
}

_ANSWERS = {
    400: "The Idempotency-Key is missing where required or malformed, or the request's cost "
    "could not be computed.",
    409: "A request with this Idempotency-Key is still in progress; retry after Retry-After.",
    413: "The request body is larger than bastion will buffer.",
    422: "This Idempotency-Key was already used with another request (body, path or query).",
    429: "A rate limit was exceeded; retry after Retry-After.",
    503: "A store bastion needs is unavailable or full; retry after Retry-After.",
}


class Coverage:
    """What the middleware do on one operation: the answers and fields to document."""

    __slots__ = ("fail_closed", "idempotent", "key_required", "priced", "tiers")

    def __init__(self) -> None:
        self.idempotent = False
        self.key_required = False
        self.tiers: list[Tier] = []
        self.fail_closed = False
        self.priced = False

    @property
    def covered(self) -> bool:
        return self.idempotent or bool(self.tiers)


class _Selectors:
    """The middleware's selectors, compiled the way the middleware compile them."""

    def __init__(
        self, idempotency: IdempotencySettings | None, rate_limit: RateLimitSettings | None
    ) -> None:
        self.idempotency = idempotency
        self.rate_limit = rate_limit
        if idempotency is not None:
            include = tuple(map(normal_path, idempotency.include))
            self.include = None if include == ("*",) else _compile(include)
            self.exclude = _compile(tuple(map(normal_path, idempotency.exclude)))
            self.require = _compile(tuple(map(normal_path, idempotency.require_key)))
        self.tiers: list[tuple[Tier, Callable[[str], bool], bool]] = []
        if rate_limit is not None and not rate_limit.shadow:
            for tier in rate_limit.tiers:
                if not tier.shadow:  # a shadow tier never answers or adds a field
                    fail_open = rate_limit.fail_open if tier.fail_open is None else tier.fail_open
                    self.tiers.append((tier, compile_routes(tier.routes), not fail_open))

    def idempotent(self, method: str, path: str) -> tuple[bool, bool]:
        """(applies, requires a key) for one concrete request."""
        settings = self.idempotency
        if settings is None or normal_method(method) not in settings.methods:
            return False, False
        path = normal_path(path)
        if self.include is not None and not self.include.match(path):
            return False, False
        if self.exclude is not None and self.exclude.match(path):
            return False, False
        return True, self.require is not None and self.require.match(path) is not None

    def tiers_for(self, method: str, path: str) -> list[tuple[Tier, bool]]:
        """The enforced tiers that apply to one concrete request, each with whether it fails
        closed."""
        method = normal_method(method)
        return [
            (tier, closed)
            for tier, matches, closed in self.tiers
            if (not tier.methods or method in tier.methods) and matches(path)
        ]


def _samples(path: str, parameters: Iterable[Mapping[str, Any]]) -> list[str]:
    """Concrete paths standing for a path template: each parameter's placeholder text, then
    values of its declared type (the first for every parameter at once, and so on)."""
    names = _PARAM.findall(path)
    if not names:
        return [path]
    kinds: dict[str, list[str]] = {}
    for parameter in parameters:
        if parameter.get("in") == "path" and isinstance(parameter.get("name"), str):
            schema = parameter.get("schema") or {}
            kind = schema.get("type") if isinstance(schema, Mapping) else None
            name = parameter["name"]
            if kind in ("integer", "number"):
                kinds[name] = ["1"]
            elif isinstance(schema, Mapping) and schema.get("format") == "uuid":
                kinds[name] = [_UUID]
            else:
                kinds[name] = _ANY
    width = max(len(kinds.get(name, _ANY)) for name in names)
    samples = []
    for index in range(width):

        def value(match: re.Match[str], index: int = index) -> str:
            values = kinds.get(match.group(1), _ANY)
            return values[min(index, len(values) - 1)]

        samples.append(_PARAM.sub(value, path))
    return samples


def coverage(
    method: str,
    path: str,
    *,
    idempotency: IdempotencySettings | None = None,
    rate_limit: RateLimitSettings | None = None,
    parameters: Iterable[Mapping[str, Any]] = (),
) -> Coverage:
    """What the middleware with these settings do on the operation ``method path`` (a path
    template, its ``parameters`` as OpenAPI declares them)."""
    return _coverage(_Selectors(idempotency, rate_limit), method, path, list(parameters))


def _coverage(
    selectors: _Selectors, method: str, path: str, parameters: list[Mapping[str, Any]]
) -> Coverage:
    result = Coverage()
    requires = []
    for sample in _samples(path, parameters):
        applies, required = selectors.idempotent(method, sample)
        result.idempotent = result.idempotent or applies
        requires.append(required)
        for tier, closed in selectors.tiers_for(method, sample):
            if tier not in result.tiers:
                result.tiers.append(tier)
            result.fail_closed = result.fail_closed or closed
            result.priced = result.priced or not isinstance(tier.cost, int)
    result.key_required = bool(requires) and all(requires)
    return result


def describe(
    schema: MutableMapping[str, Any],
    *,
    idempotency: IdempotencySettings | None = None,
    rate_limit: RateLimitSettings | None = None,
) -> MutableMapping[str, Any]:
    """Add bastion's header parameter, answers and response fields to ``schema`` (an OpenAPI
    3 document, changed in place and returned) on the operations the middleware with these
    settings cover. Pass the same settings objects the middleware are given.

    Calling it twice with the same settings changes nothing the second time.
    """
    selectors = _Selectors(idempotency, rate_limit)
    touched = False
    for path, item in (schema.get("paths") or {}).items():
        if not isinstance(item, MutableMapping):
            continue
        shared = item.get("parameters") or []
        for method in _METHODS:
            operation = item.get(method)
            if not isinstance(operation, MutableMapping):
                continue
            parameters = [*shared, *(operation.get("parameters") or [])]
            found = _coverage(selectors, method, path, parameters)
            if found.covered:
                touched = True
                _document(operation, found, idempotency, rate_limit)
    if touched:
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["BastionProblem"] = copy.deepcopy(PROBLEM_SCHEMA)
        headers = components.setdefault("headers", {})
        for name, definition in {**_HEADERS, **_LEGACY_HEADERS}.items():
            headers[name] = copy.deepcopy(definition)
    return schema


def _document(
    operation: MutableMapping[str, Any],
    found: Coverage,
    idempotency: IdempotencySettings | None,
    rate_limit: RateLimitSettings | None,
) -> None:
    statuses: dict[int, list[str]] = {}
    fields: list[str] = []
    if found.idempotent and idempotency is not None:
        _key_parameter(operation, idempotency, required=found.key_required)
        statuses.update({400: [], 409: ["Retry-After"], 413: [], 422: [], 503: ["Retry-After"]})
        fields.append("Idempotent-Replayed")
    if found.tiers and rate_limit is not None:
        limit_fields = []
        if rate_limit.headers:
            limit_fields = ["RateLimit-Policy", "RateLimit"]
            if rate_limit.legacy_headers:
                limit_fields += list(_LEGACY_HEADERS)
        statuses[429] = ["Retry-After", *limit_fields]
        if found.fail_closed:
            statuses.setdefault(503, []).append("Retry-After")
        if found.priced:
            statuses.setdefault(400, [])
            statuses.setdefault(413, [])
        fields += limit_fields
    responses = operation.setdefault("responses", {})
    for status, headers in sorted(statuses.items()):
        response = responses.setdefault(str(status), {"description": _ANSWERS[status]})
        _problem_content(response)
        _add_headers(response, sorted(set(headers)))
    for response in responses.values():
        if isinstance(response, MutableMapping) and "$ref" not in response:
            _add_headers(response, fields)


def _key_parameter(
    operation: MutableMapping[str, Any], settings: IdempotencySettings, *, required: bool
) -> None:
    name = settings.header_name
    parameters = operation.setdefault("parameters", [])
    parameters[:] = [
        p
        for p in parameters
        if not (p.get("in") == "header" and str(p.get("name", "")).lower() == name.lower())
    ]
    parameters.append(
        {
            "name": name,
            "in": "header",
            "required": required,
            "description": "A unique key for this request (draft-ietf-httpapi-idempotency-key-"
            'header), bare or as a Structured Field string: `abc` and `"abc"` are the same key. '
            "A retry with the same key and the same request gets the first response replayed; "
            + ("this operation refuses a request without one." if required else "optional."),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": settings.max_key_length,
                "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$",
            },
        }
    )


def _problem_content(response: MutableMapping[str, Any]) -> None:
    """Let the response be a bastion problem, beside whatever the app documented for it."""
    if "$ref" in response:
        return
    content = response.setdefault("content", {})
    ours = {"$ref": _PROBLEM_REF}
    media = content.setdefault(_PROBLEM_MEDIA_TYPE, {})
    existing = media.get("schema")
    if not existing or existing == ours:
        media["schema"] = ours
    elif ours not in existing.get("anyOf", ()):
        media["schema"] = {"anyOf": [existing, ours]}


def _add_headers(response: MutableMapping[str, Any], names: Iterable[str]) -> None:
    if "$ref" in response:
        return
    headers = response.setdefault("headers", {})
    for name in names:
        headers.setdefault(name, {"$ref": f"#/components/headers/{name}"})
