"""The environment loading shared by every feature's settings (each feature owns its own).

Every field of a settings dataclass can be overridden with ``<PREFIX><FIELD_NAME>`` in upper
case: ``BASTION_IDEMPOTENCY_TTL_SECONDS=3600``. Booleans accept 1/0, true/false, yes/no, on/off;
collections are comma-separated. A value that does not parse raises ``ConfigurationError``
naming the variable, at start-up rather than on the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, Self

from bastion.exceptions import ConfigurationError

__all__ = ["TOKEN", "EnvSettings"]

_TRUE = {"1", "true", "yes", "on"}
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FALSE = {"0", "false", "no", "off"}


def _parse(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.strip().lower() in {"", "none", "null"}:
            return None
        return _parse(raw, args[0], name)
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean (use true or false)")
    if kind in (int, float):
        try:
            return kind(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if kind is str:
        return raw
    if origin in (tuple, frozenset):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        (inner, *_) = typing.get_args(kind)
        return origin(_parse(item, inner, name) for item in items)
    raise ConfigurationError(f"{name} cannot be set from the environment")


class EnvSettings:
    """Mixin giving a frozen dataclass a ``from_env`` constructor."""

    ENV_PREFIX: typing.ClassVar[str] = "BASTION_"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        prefix: str | None = None,
        **overrides: Any,
    ) -> Self:
        """Build settings from defaults, then the environment, then ``overrides``."""
        environ = os.environ if environ is None else environ
        prefix = cls.ENV_PREFIX if prefix is None else prefix
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if not field.init or field.name in overrides:
                continue
            name = f"{prefix}{field.name.upper()}"
            if name in environ:
                values[field.name] = _parse(environ[name], hints[field.name], name)
        values.update(overrides)
        return cls(**values)
