"""Sessions run inside the environment `dev.py` builds (`nox --no-venv`).

Under ``CI=true`` the ``tests`` session also runs tests against the built wheel (the ``wheel``
session, runnable on its own): a file missing from the wheel (a Lua script, a ``py.typed``, a
module, the service's Alembic scripts) fails CI, which the editable install would never notice.

That pass is there for packaging only, so it runs `WHEEL_TESTS`, not the suite again (which
cost four of `.ci/run`'s minutes). A packaging mistake can only show as a file or an entry
point the installed package lacks, and the subset reaches each kind from the installed wheel:

- ``test_packaging``: every file under ``src/bastion`` is in the installed package (the wheel
  pip built, not only the one the test builds itself) and the ``bastion`` script loads;
- ``test_exported_members``, ``test_extras``, ``metrics/test_imports``: every public module
  imports, with and without the optional extras;
- the store conformance suite on memory, fakeredis and SQLite: every Lua script is read through
  `importlib.resources` and run, and the SQL store builds its tables and decides;
- ``check/``: ``python -m bastion.check`` and ``-p bastion.check.pytest_plugin`` in fresh
  processes; ``test_openapi*`` and ``test_testing``: the OpenAPI, FastAPI and testing modules;
- the README app under ``mypy --strict`` against site-packages: it type-checks only if
  ``py.typed`` shipped;
- the reference service's CLI and surface tests: its wheel's migrations and ``py.typed``.

Every test still runs in the main pass, from the checkout; the real-service rows of those files
(the ``redis``, ``postgres``, ``mysql`` markers) load no file the local rows do not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"

PATHS = ["src", "tests", "examples", "benchmarks", "scripts", "noxfile.py", "dev.py"]
ROOT = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PARALLEL = ["--numprocesses", "auto", "--maxprocesses", "4", "--dist", "loadgroup"]
"""pytest-xdist for the whole suite: one worker per core, at most four; the tests that start
servers and processes in one group, run one after another (`tests/conftest.py`)."""
WHEEL_VENV = ROOT / ".nox" / "wheel-venv"
"""The wheel pass's own environment, kept between runs: only the bastion wheel is reinstalled."""
WHEEL_TESTS = [
    "tests/test_packaging.py",
    "tests/test_exported_members.py",
    "tests/test_extras.py",
    "tests/metrics/test_imports.py",
    "tests/stores/test_conformance.py",
    "tests/check",
    "tests/test_openapi.py",
    "tests/test_openapi_schemathesis.py",
    "tests/test_testing.py",
    "tests/test_docs.py::test_readme_app_passes_mypy_strict",
    "tests/reference_service/test_cli.py",
    "tests/reference_service/test_surface.py",
]
"""What the pass against the built wheel runs: the tests that reach every packaged file and
entry point from the installed package (the module docstring says why these)."""
WHEEL_ARGS = ["-m", "not redis and not postgres and not mysql and not integration", *WHEEL_TESTS]
# what the copy the wheel pass runs from leaves out: caches, environments, and nothing else
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".nox",
    "site",
    "dist",
    "build",
    "__pycache__",
    "*.pyc",
    ".*_cache",
    ".hypothesis",
    ".coverage*",
    "htmlcov",
)


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
    """The whole suite with coverage, on one pytest-xdist worker per core (at most 4); under
    CI=true no real-service test may skip, and the packaging subset then runs against the
    built wheel. Arguments run just those tests, in one process.

    Much of the suite waits on servers and processes it started, so two workers on two cores
    took 8 m 48 s where one took 13 m 43 s (both with the machine loaded). Tests that share a
    server use unique key and table prefixes, and private servers bind free ports."""
    args = session.posargs or [*PARALLEL, "tests"]
    _run(session, "pytest", "--cov", "--cov-report=term", "-p", "no:cacheprovider", *args)
    if IN_CI and not session.posargs:
        _wheel_suite(session, WHEEL_ARGS)


@nox.session
def wheel(session: nox.Session) -> None:
    """Tests against the built wheel, from a copy of the tree where src/ is not importable
    (default: the packaging subset CI runs; pass pytest arguments to choose, e.g. ``tests``)."""
    _wheel_suite(session, session.posargs or WHEEL_ARGS)


@nox.session
def load(session: nox.Session) -> None:
    """A load scenario against the real stack, then its audit (exit 1 if an invariant broke):
    ``python3 dev.py load register`` or ``claim``; ``--short`` for the test suite's version,
    ``--help`` for the options. Needs PostgreSQL and Redis (see docs/load-testing.md)."""
    if not session.posargs:
        session.error("name a scenario: `python3 dev.py load register` or `... load claim`")
    service = ROOT / "examples" / "reference_service"
    paths = [ROOT / "src", service / "src", service]
    env = {"PYTHONPATH": os.pathsep.join(str(path) for path in paths)}
    _run(session, "python", "-m", "loadtest", *session.posargs, env=env)


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


def _venv_python(env: Path) -> Path:
    return (
        env
        / ("Scripts" if os.name == "nt" else "bin")
        / ("python.exe" if os.name == "nt" else "python")
    )


def _wheel_environment(session: nox.Session) -> Path:
    """The cached environment holding every test dependency, but no bastion from src/."""
    python = _venv_python(WHEEL_VENV)
    inputs = ["pyproject.toml", "requirements-dev.txt", "examples/reference_service/pyproject.toml"]
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in inputs)).hexdigest()
    stamp = WHEEL_VENV / ".bastion-deps"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    session.log(f"creating {WHEEL_VENV}")
    shutil.rmtree(WHEEL_VENV, ignore_errors=True)
    _run(session, sys.executable, "-m", "venv", str(WHEEL_VENV))
    _run(
        session, str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements-dev.txt")
    )
    stamp.write_text(digest)
    return python


def _wheel_suite(session: nox.Session, pytest_args: list[str]) -> None:
    python = _wheel_environment(session)
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
    with tempfile.TemporaryDirectory(prefix="bastion-wheel-") as tmp:
        dist = Path(tmp) / "dist"
        _run(
            session,
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(dist),
            str(ROOT),
        )
        (built,) = dist.glob("bastion-*.whl")
        _run(session, str(python), "-m", "pip", "install", "-q", f"{built}[all]")
        _run(session, *pip, str(built))
        # a copy of the tree: the tests read docs/, examples/ and src/ as files, while pytest
        # puts only the copy's root on sys.path, so `import bastion` can only find the wheel
        copy = Path(tmp) / "tree"
        shutil.copytree(ROOT, copy, ignore=_NOT_COPIED)
        service = copy / "examples" / "reference_service"
        # its own dependencies (the wheel already satisfies its `bastion[...]`), then its code
        _run(session, str(python), "-m", "pip", "install", "-q", f"{service}[real]")
        _run(session, *pip, str(service))
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
        where = subprocess.run(
            [str(python), "-c", "import bastion; print(bastion.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(where).resolve().is_relative_to(WHEEL_VENV.resolve()):
            session.error(f"the wheel pass would test {where}, not the installed wheel")
        session.log(f"testing the wheel installed at {Path(where).parent}")
        command = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", *pytest_args]
        session.log(" ".join(command))
        # not session.run: it would pass the outer PYTHONPATH (a checkout's src/) through
        if subprocess.run(command, cwd=copy, env=env, check=False).returncode != 0:
            session.error("the suite failed against the built wheel")
