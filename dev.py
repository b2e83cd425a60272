"""One entry point for the README's quick start: it builds its own environment first.

    python3 dev.py serve     run the example service on 127.0.0.1:8000 (embedded, memory stores)
    python3 dev.py test      lint, type-check and run the whole test suite (under CI=true, then
                             the packaging subset against the built wheel)
    python3 dev.py wheel     run the packaging subset against the built wheel (or: -- <pytest args>)
    python3 dev.py bench     run the benchmarks (they install the peers they compare with)
    python3 dev.py docs      build the documentation site into site/ (mkdocs build --strict)
    python3 dev.py load register|claim [--short] [options]
                             a load scenario on the real stack (PostgreSQL, Redis), audited

Only the standard library is used here, so it works on a fresh machine with Python 3.11+.
The environment lives in `.venv/` and is rebuilt only when the dependency files change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BENCH_VENV = ROOT / "benchmarks" / ".venv"
PROJECT = ("-e", ".[all]", "-e", "examples/reference_service")
SESSIONS = {
    "test": ["lint", "typecheck", "tests"],
    "wheel": ["wheel"],
    "bench": ["bench"],
    "docs": ["docs"],
    "load": ["load"],
}
"""The nox sessions each command runs (`serve` runs the service instead)."""
# the test environment, and the benchmarks' own one that also holds the peers they compare with
ENVIRONMENTS = {
    VENV: ("requirements-dev.txt",),
    BENCH_VENV: ("requirements-dev.txt", "benchmarks/requirements.txt"),
}


def _bin(name: str, env: Path = VENV) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def _digest(requirements: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "examples/reference_service/pyproject.toml", *requirements):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_system_tools() -> None:
    """The Debian tools the tests drive: promtool (checks the service's Prometheus files) and
    chromium (the admin page's browser test). Installed with apt when missing and allowed
    (root, apt-get present); otherwise their tests skip locally and fail under CI=true."""
    missing_promtool = shutil.which("promtool") is None
    missing_chromium = shutil.which("chromium") is None
    if not (missing_promtool or missing_chromium):
        return
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("dev.py: promtool or chromium is missing and cannot be installed here", flush=True)
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    if missing_promtool:
        print("dev.py: installing promtool (from Debian's prometheus package)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "-q", "prometheus"], check=True, cwd=tmp)
            (deb,) = Path(tmp).glob("prometheus_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), "x"], check=True, cwd=tmp)
            shutil.copy(Path(tmp) / "x" / "usr" / "bin" / "promtool", "/usr/local/bin/promtool")
    if missing_chromium:
        print("dev.py: installing chromium", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)


def ensure_environment(env: Path) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py itself runs on any python3
        sys.exit(f"bastion needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    requirements = ENVIRONMENTS[env]
    stamp = env / ".bastion-deps"
    if not _bin("python", env).exists():
        print(f"dev.py: creating {env}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
    digest = _digest(requirements)
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"dev.py: installing dependencies into {env}", flush=True)
    pip = [str(_bin("python", env)), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    reqs = [arg for name in requirements for arg in ("-r", name)]
    subprocess.run([*pip, "install", *PROJECT, *reqs], check=True, cwd=ROOT)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    command, *rest = argv or ["help"]
    if rest[:1] == ["--"]:  # `dev.py bench -- --quick`, as the benchmarks' README writes it
        rest = rest[1:]
    if command != "serve" and command not in SESSIONS:
        print(__doc__)
        return 0 if command in {"help", "-h", "--help"} else 2
    target = BENCH_VENV if command == "bench" else VENV
    ensure_environment(target)
    if command == "test":
        ensure_system_tools()
    if command == "serve":
        args = [str(_bin("bastion-service")), "serve", *rest]
    else:
        sessions = SESSIONS[command]
        args = [
            str(_bin("nox", target)),
            "--no-venv",
            "-s",
            *sessions,
            *(["--", *rest] if rest else []),
        ]
    env = {**os.environ, "VIRTUAL_ENV": str(target)}
    env["PATH"] = os.pathsep.join([str(_bin("python", target).parent), env.get("PATH", "")])
    return subprocess.call(args, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
