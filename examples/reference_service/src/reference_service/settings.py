"""`ServiceSettings`: everything the reference service reads from its environment, once.

Embedded mode (the default) needs no servers: bastion's rate limits in a `MemoryStore`, the
domain and the idempotency records in one SQLite file, jobs in an in-process queue. The real
mode (Redis, PostgreSQL, queue workers) is the second part of the service and reads the same
settings, so a deployment moves between them by environment alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

__all__ = [
    "DEV_ADMIN_TOKEN",
    "DEV_WEBHOOK_SECRET",
    "ProgramSeed",
    "ServiceSettings",
    "SettingsError",
]

DEV_ADMIN_TOKEN = "dev-admin-token"
"""The admin token in embedded mode when none is set: fine on a laptop, refused in real mode."""
DEV_WEBHOOK_SECRET = "whsec_dev_embedded"
"""The webhook secret in embedded mode when none is set, so the tour can sign webhooks."""
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///bastion-service.db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

Mode = Literal["embedded", "real"]


class SettingsError(ValueError):
    """A variable that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class ProgramSeed:
    """A rewards program created at start-up if it does not exist yet."""

    id: str
    budget: Decimal
    name: str = ""


def _number(environ: Mapping[str, str], name: str, default: float, *, low: float = 0) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value >= low:
        raise SettingsError(f"{name}={raw!r} must be at least {low}")
    return value


def _fraction(environ: Mapping[str, str], name: str) -> float:
    value = _number(environ, name, 0.0)
    if value > 1:
        raise SettingsError(f"{name} must be a share between 0 and 1")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _programs(raw: str) -> tuple[ProgramSeed, ...]:
    seeds = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        ident, _, budget = item.partition(":")
        try:
            amount = Decimal(budget)
        except InvalidOperation:
            amount = Decimal(-1)
        if not ident or not amount.is_finite() or amount <= 0:
            raise SettingsError(
                f"BASTION_SERVICE_PROGRAMS entry {item!r} must read <id>:<positive budget>"
            )
        seeds.append(ProgramSeed(ident, amount, ident))
    return tuple(seeds)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """The service's configuration; `from_env` reads ``BASTION_SERVICE_*`` variables.

    The rate-limit tiers come from bastion's presets and their ``RL_*`` variables, read by
    `bastion.RateLimitSettings.from_env`, so they are not repeated here.
    """

    mode: Mode = "embedded"
    database_url: str = DEFAULT_DATABASE_URL
    auto_migrate: bool = True
    """`serve` migrates an embedded SQLite database itself; real mode never does."""
    admin_token: str = DEV_ADMIN_TOKEN
    webhook_secret: str = DEV_WEBHOOK_SECRET
    webhook_tolerance_seconds: float = 300.0
    programs: tuple[ProgramSeed, ...] = field(
        default_factory=lambda: (ProgramSeed("demo", Decimal(1_000_000), "Demo rewards"),)
    )
    job_attempts: int = 5
    job_backoff_seconds: float = 1.0
    job_timeout_seconds: float = 30.0
    job_concurrency: int = 4
    stuck_after_seconds: float = 600.0
    reconcile_every_seconds: float = 60.0
    prepared_claim_ttl_seconds: float = 900.0
    chain_id: int = 31337
    relayer_balance_eth: Decimal = Decimal(10)
    relayer_fail_rate: float = 0.0
    relayer_hang_rate: float = 0.0
    relayer_seed: int = 0
    relayer_timeout_seconds: float = 10.0
    redis_url: str = DEFAULT_REDIS_URL
    """Real mode: rate limits, the queues and the simulated chain's shared state."""
    rate_limit_store: Literal["redis", "sql"] = "redis"
    """Real mode: where bastion's rate-limit buckets live (idempotency records always live
    beside the domain's rows, in its database)."""
    queue_prefix: str = "bull"
    """The BullMQ key prefix (and the simulated chain's), so deployments can share a Redis."""
    sweep_every_seconds: float = 900.0
    worker_lock_seconds: float = 30.0
    """BullMQ's lock on an active job; a worker that dies holding it is found stalled after
    this long, and its job runs again."""
    stalled_check_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("embedded", "real"):
            raise SettingsError("BASTION_SERVICE_MODE must be 'embedded' or 'real'")
        if self.mode == "real" and (
            self.admin_token == DEV_ADMIN_TOKEN or self.webhook_secret == DEV_WEBHOOK_SECRET
        ):
            raise SettingsError(
                "real mode needs BASTION_SERVICE_ADMIN_TOKEN and BASTION_SERVICE_WEBHOOK_SECRET "
                "set to secrets of your own"
            )
        if self.mode == "real" and self.is_sqlite:
            raise SettingsError(
                "real mode needs DATABASE_URL (or BASTION_SERVICE_DATABASE_URL) naming a "
                "PostgreSQL database, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/bastion"
            )
        if self.rate_limit_store not in ("redis", "sql"):
            raise SettingsError("BASTION_SERVICE_RATE_LIMIT_STORE must be 'redis' or 'sql'")
        if len(self.admin_token) < 8:
            raise SettingsError("BASTION_SERVICE_ADMIN_TOKEN must be at least 8 characters")
        if not self.webhook_secret:
            raise SettingsError("BASTION_SERVICE_WEBHOOK_SECRET cannot be empty")
        if self.job_attempts < 1:
            raise SettingsError("BASTION_SERVICE_JOB_ATTEMPTS must be at least 1")
        if self.job_concurrency < 1:
            raise SettingsError("BASTION_SERVICE_JOB_CONCURRENCY must be at least 1")

    @property
    def embedded(self) -> bool:
        return self.mode == "embedded"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.split(":", 1)[0].split("+", 1)[0] == "sqlite"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServiceSettings:
        """Read ``BASTION_SERVICE_*``; ``overrides`` win (the CLI's flags, tests).

        The conventional ``BASTION_MODE``, ``DATABASE_URL`` and ``REDIS_URL`` are read too,
        below their ``BASTION_SERVICE_`` spellings, as container platforms set them.
        """
        env = os.environ if environ is None else environ
        p = "BASTION_SERVICE_"
        raw_mode = env.get(p + "MODE") or env.get("BASTION_MODE") or "embedded"
        mode = str(overrides.pop("mode", raw_mode)).strip().lower() or "embedded"
        values: dict[str, object] = {
            "mode": mode,
            "database_url": env.get(p + "DATABASE_URL")
            or env.get("DATABASE_URL")
            or DEFAULT_DATABASE_URL,
            "redis_url": env.get(p + "REDIS_URL") or env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            "rate_limit_store": env.get(p + "RATE_LIMIT_STORE", "redis").strip().lower(),
            "queue_prefix": env.get(p + "QUEUE_PREFIX") or "bull",
            "sweep_every_seconds": _number(env, p + "SWEEP_EVERY_SECONDS", 900, low=0.1),
            "worker_lock_seconds": _number(env, p + "WORKER_LOCK_SECONDS", 30, low=0.1),
            "stalled_check_seconds": _number(env, p + "STALLED_CHECK_SECONDS", 30, low=0.1),
            "auto_migrate": _flag(env, p + "AUTO_MIGRATE", mode == "embedded"),
            "admin_token": env.get(p + "ADMIN_TOKEN") or DEV_ADMIN_TOKEN,
            "webhook_secret": env.get(p + "WEBHOOK_SECRET") or DEV_WEBHOOK_SECRET,
            "webhook_tolerance_seconds": _number(env, p + "WEBHOOK_TOLERANCE_SECONDS", 300, low=1),
            "job_attempts": int(_number(env, p + "JOB_ATTEMPTS", 5, low=1)),
            "job_backoff_seconds": _number(env, p + "JOB_BACKOFF_SECONDS", 1.0),
            "job_timeout_seconds": _number(env, p + "JOB_TIMEOUT_SECONDS", 30.0, low=0.001),
            "job_concurrency": int(_number(env, p + "JOB_CONCURRENCY", 4, low=1)),
            "stuck_after_seconds": _number(env, p + "STUCK_AFTER_SECONDS", 600, low=1),
            "reconcile_every_seconds": _number(env, p + "RECONCILE_EVERY_SECONDS", 60, low=0.1),
            "relayer_fail_rate": _fraction(env, p + "RELAYER_FAIL_RATE"),
            "relayer_hang_rate": _fraction(env, p + "RELAYER_HANG_RATE"),
            "relayer_seed": int(_number(env, p + "RELAYER_SEED", 0)),
            "relayer_timeout_seconds": _number(env, p + "RELAYER_TIMEOUT_SECONDS", 10, low=0.001),
        }
        if env.get(p + "PROGRAMS"):
            values["programs"] = _programs(env[p + "PROGRAMS"])
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
