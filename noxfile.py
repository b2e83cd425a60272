"""Sessions run inside the environment `dev.py` builds (`nox --no-venv`)."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"

PATHS = ["src", "tests", "examples", "benchmarks", "scripts", "noxfile.py", "dev.py"]


def _run(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    session.run(*args, env=env, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    _run(session, "ruff", "check", *PATHS)
    _run(session, "ruff", "format", "--check", *PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy strict on the library and the example service."""
    _run(session, "mypy")
    _run(session, "mypy", "--strict", "examples/reference_service/src")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite with coverage; under CI=true no real-service test may skip."""
    args = session.posargs or ["tests"]
    _run(session, "pytest", "--cov", "--cov-report=term", "-p", "no:cacheprovider", *args)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/, failing on any warning (broken links included)."""
    _run(session, "python", "scripts/settings_reference.py", "--check")
    _run(session, "mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, side by side with peers, in one run each."""
    env = {"PYTHONHASHSEED": "0", **os.environ}
    for script in sorted(os.listdir("benchmarks")):
        if script.startswith("bench_") and script.endswith(".py"):
            session.run("python", f"benchmarks/{script}", *session.posargs, env=env, external=True)
