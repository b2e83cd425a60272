"""Imports run one way, down the stack: this test reads every module under src/bastion.

The layers, top to bottom: the `bastion` package itself (the public facade); the features
(`idempotency`, `ratelimit`, `metrics`); `stores`; `_core` (pure semantics); and the leaf
modules (`typing`, `exceptions`). Every import counts, those inside functions and under
``if TYPE_CHECKING`` too: a lazy import is still a dependency, it only fails later.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

FEATURES = ("bastion.idempotency", "bastion.ratelimit", "bastion.metrics")
CORE_MAY_IMPORT = ("bastion._core", "bastion.typing", "bastion.exceptions")
TOOLS = ("bastion.check", "bastion.openapi", "bastion.fastapi")
"""Tools that sit beside the stack, on top: the conformance kit (an HTTP client) and the
OpenAPI helpers. They may use anything; nothing else may use them, so the middleware never
load a client library or a schema generator."""


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def module_names(src: Path, package: str = "bastion") -> dict[str, Path]:
    """Every module of ``package`` under ``src`` by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest known module ``name`` is or lies in: ``pkg.mod.attr`` -> ``pkg.mod``."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: Mapping[str, Path]) -> Iterator[tuple[str, int]]:
    """The bastion modules ``module`` imports, with line numbers, wherever the import sits."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import mod` imports the submodule `pkg.mod` when there is one
                target = _resolve(f"{base}.{alias.name}", known) or _resolve(base, known)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            dynamic = dynamic or name == "import_module"
    if dynamic:
        # `importlib.import_module(TABLE[name])`: every module named in a string counts
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in known:
                yield node.value, node.lineno


def layer(module: str) -> str:
    """The node of the package graph: ``bastion.stores.sql._store`` -> ``bastion.stores``."""
    return ".".join(module.split(".")[:2])


def graph(src: Path) -> dict[str, dict[str, list[str]]]:
    """Package -> imported package -> the import sites (``module:line``) behind that edge."""
    known = module_names(src)
    edges: dict[str, dict[str, list[str]]] = {}
    for module, path in known.items():
        for target, line in sorted(set(imports_of(module, path, known))):
            here, there = layer(module), layer(target)
            if here != there:
                edges.setdefault(here, {}).setdefault(there, []).append(f"{module}:{line}")
    return edges


def cycles(edges: Mapping[str, Mapping[str, list[str]]]) -> list[list[str]]:
    """Every strongly connected group of more than one package (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def violations(src: Path) -> list[str]:
    """Every import against the layers, one readable line each; empty when the house stands."""
    known = module_names(src)
    problems: list[str] = []
    for module, path in known.items():
        for target, line in sorted(set(imports_of(module, path, known))):
            site = f"{module}:{line} imports {target}"
            if module.startswith("bastion.stores") and target.startswith(FEATURES):
                problems.append(f"{site}: stores must not know the features above them")
            if _within(target, TOOLS) and not _within(module, TOOLS):
                problems.append(f"{site}: only the tools use the tools (check, openapi, fastapi)")
            if module.startswith("bastion._core") and not target.startswith(CORE_MAY_IMPORT):
                problems.append(f"{site}: _core imports only itself, typing and exceptions")
        if module.startswith("bastion._core"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("__future__", "bastion"):
                        problems.append(f"{module}:{node.lineno} imports {name}: _core is pure")
    edges = graph(src)
    for group in cycles(edges):
        sites = [
            f"{a} -> {b} ({', '.join(edges[a][b])})"
            for a in group
            for b in group
            if b in edges.get(a, {})
        ]
        problems.append("package cycle: " + "; ".join(sites))
    return problems


def test_imports_run_one_way() -> None:
    """No store imports a feature, _core imports only itself and the leaves, and no two
    packages import each other, counting lazy imports inside functions."""
    assert violations(SRC) == []


def test_core_and_stores_exist() -> None:
    """The layers the rules name are real packages, so the rules cannot pass vacuously."""
    known = module_names(SRC)
    assert {"bastion._core", "bastion.stores", *FEATURES} <= set(known)
    assert any(name.startswith("bastion._core.") for name in known)


def _write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"bastion/stores/_memory.py": "from bastion.ratelimit._tiers import Tier\n"},
            "stores must not know",
            id="stores-import-a-feature",
        ),
        pytest.param(
            {"bastion/stores/x.py": "def f():\n    import bastion.idempotency._context\n"},
            "stores must not know",
            id="lazy-import-inside-a-function",
        ),
        pytest.param(
            {"bastion/_core/a.py": "from bastion.stores import Claim\n"},
            "_core imports only itself",
            id="core-imports-stores",
        ),
        pytest.param(
            {"bastion/_core/a.py": "import sqlalchemy\n"},
            "_core is pure",
            id="core-imports-a-third-party-library",
        ),
        pytest.param(
            {
                "bastion/check/__init__.py": "",
                "bastion/idempotency/_m.py": "def f():\n    from bastion.check import run\n",
            },
            "only the tools use the tools",
            id="middleware-import-the-kit",
        ),
        pytest.param(
            {"bastion/openapi.py": "", "bastion/__init__.py": "import bastion.openapi\n"},
            "only the tools use the tools",
            id="facade-imports-a-tool",
        ),
        pytest.param(
            {
                "bastion/settings.py": "from bastion.ratelimit import Tier\n",
                "bastion/ratelimit/_m.py": "def f():\n    from bastion.settings import S\n",
            },
            "package cycle: bastion.ratelimit -> bastion.settings",
            id="cycle-through-a-lazy-import",
        ),
        pytest.param(
            {
                "bastion/metrics/_otel.py": "def v():\n    import bastion\n",
                "bastion/__init__.py": "from bastion.metrics import M\n",
            },
            "package cycle: bastion -> bastion.metrics",
            id="cycle-through-the-root-package",
        ),
    ],
)
def test_checker_finds_what_it_forbids(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """The checker reports each kind of forbidden import in a made-up package tree."""
    base = {
        "bastion/__init__.py": "",
        "bastion/_core/__init__.py": "",
        "bastion/stores/__init__.py": "",
        "bastion/ratelimit/__init__.py": "",
        "bastion/ratelimit/_tiers.py": "",
        "bastion/idempotency/__init__.py": "",
        "bastion/idempotency/_context.py": "",
        "bastion/metrics/__init__.py": "",
    }
    src = _write(tmp_path, {**base, **files})
    found = violations(src)
    assert any(expected in problem for problem in found), found
