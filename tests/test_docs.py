"""The documentation stays true: links resolve, examples import, generated tables are current.

``mkdocs build --strict`` (``python3 dev.py docs``) checks the site as a whole; these checks
are the fast part of it, run with every test run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from bastion.exceptions import StoreUnavailable
from bastion.stores import MemoryStore

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *PAGES]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"\]\(([^)\s]+)\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.MULTILINE)


def _relative_links(path: Path) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@contextmanager
def _loaded(path: Path) -> Iterator[ModuleType]:
    """Import a file by path under a unique name, and forget it afterwards."""
    name = f"_docs_{path.stem}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# -- links and pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    """Every relative link in the README, the changelog and docs/ names a file that exists."""
    missing = [
        target
        for target in _relative_links(page)
        if not (page.parent / target.split("#", 1)[0]).exists()
    ]
    assert missing == []


def test_readme_links_work_on_the_package_index() -> None:
    """The README is the package index's project page, where relative links break: it has none."""
    assert _relative_links(ROOT / "README.md") == []


def test_project_urls_are_real() -> None:
    """Every project URL in the package metadata is absolute https, never a placeholder."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for url in project.get("urls", {}).values():
        assert url.startswith("https://"), url
        assert not re.search(r"\.(invalid|example|test)(/|$)|example\.(com|org)", url), url


def test_link_checker_sees_links_outside_code() -> None:
    """The link scan finds inline and reference links and skips code and absolute URLs."""
    sample = ROOT / "docs" / "idempotency.md"
    links = _relative_links(sample)
    assert "../examples/idempotency_app.py" in links
    assert not any(link.startswith("http") for link in links)


def _test_names() -> set[str]:
    return {
        node.name
        for path in (ROOT / "tests").rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


@pytest.mark.parametrize("page", ["guarantees.md", "explanation.md"])
def test_cited_tests_exist(page: str) -> None:
    """Every test a guarantee is pinned by (a `test_…` name in the page) exists in tests/."""
    cited = set(re.findall(r"`(test_\w+?)(?:\.py)?`", (DOCS / page).read_text(encoding="utf-8")))
    files = {path.stem for path in (ROOT / "tests").rglob("test_*.py")}
    assert cited, page
    assert cited - _test_names() - files == set()


def test_every_page_is_in_the_site_navigation() -> None:
    """mkdocs.yml lists every page under docs/, and every page it lists exists."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:") :]
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE))
    assert listed == {str(page.relative_to(DOCS)) for page in PAGES}


# -- examples -----------------------------------------------------------------------------------


def _runs_at_import(node: ast.stmt) -> bool:
    """A module-level statement that would start a server or an event loop on import."""
    if isinstance(node, ast.If):
        test = ast.unparse(node.test)
        if test in ("__name__ == '__main__'", "'__main__' == __name__"):
            return False
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and ast.unparse(call.func).endswith(".run"):
            return not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    return False


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_guards_its_server(example: Path) -> None:
    """An example starts its server or event loop only under ``if __name__ == "__main__":``."""
    tree = ast.parse(example.read_text(encoding="utf-8"))
    assert [ast.unparse(node) for node in tree.body if _runs_at_import(node)] == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_imports(example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example imports cleanly (its app is built, no server is started)."""
    monkeypatch.chdir(tmp_path)  # an example that names a relative file keeps it here
    with _loaded(example) as module:
        assert hasattr(module, "app") or hasattr(module, "create_app")


class _DownStore(MemoryStore):
    """An idempotency store whose backend cannot be reached."""

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Any:
        raise StoreUnavailable("connection refused")


class _SignallingStore(MemoryStore):
    """A memory store that says when a request has taken a key, so a test can race it."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = anyio.Event()

    async def claim(self, key: str, fingerprint: str, token: str, *, lease_ms: int) -> Any:
        claim = await super().claim(key, fingerprint, token, lease_ms=lease_ms)
        if claim.acquired:
            self.claimed.set()
        return claim


@pytest.mark.anyio
async def test_idempotency_example_answers_as_documented() -> None:
    """The example gives the answers docs/idempotency.md shows: run, replay, 400, 422, 413."""
    pay = {"amount": 500, "currency": "EUR"}
    with _loaded(ROOT / "examples" / "idempotency_app.py") as example:
        async with _client(example.create_app(store=MemoryStore())) as http:
            first = await http.post("/payments", json=pay, headers={"Idempotency-Key": "pay-1"})
            again = await http.post("/payments", json=pay, headers={"Idempotency-Key": "pay-1"})
            quoted = await http.post("/payments", json=pay, headers={"Idempotency-Key": '"pay-1"'})
            missing = await http.post("/payments", json=pay)
            empty = await http.post("/payments", json=pay, headers={"Idempotency-Key": ""})
            reused = await http.post(
                "/payments", json={"amount": 900}, headers={"Idempotency-Key": "pay-1"}
            )
            large = await http.post(
                "/payments", content=b"0" * 2_000_000, headers={"Idempotency-Key": "pay-big"}
            )
            other_tenant = await http.post(
                "/payments",
                json={"amount": 900},
                headers={"Idempotency-Key": "pay-1", "X-API-Key": "tenant-b"},
            )
            stats = (await http.get("/stats")).json()
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert quoted.content == first.content
    assert missing.json()["type"] == "urn:bastion:problem:idempotency-key-missing"
    assert empty.json()["type"] == "urn:bastion:problem:idempotency-key-invalid"
    assert reused.json()["type"] == "urn:bastion:problem:idempotency-key-reused"
    assert large.json()["type"] == "urn:bastion:problem:request-too-large"
    assert other_tenant.json()["id"] == "pay_0002"
    assert stats == {"payments": 2, "payouts": 0}


@pytest.mark.anyio
async def test_idempotency_example_conflict_and_store_down() -> None:
    """A duplicate of a running payout gets 409 with Retry-After; a store outage gets 503."""
    with _loaded(ROOT / "examples" / "idempotency_app.py") as example:
        store = _SignallingStore()
        app = example.create_app(store=store, payout_seconds=3600)
        async with _client(app) as http, anyio.create_task_group() as tg:
            key = {"Idempotency-Key": "po-1"}
            tg.start_soon(lambda: http.post("/payouts", headers=key))
            await store.claimed.wait()  # the first payout holds the key and runs
            duplicate = await http.post("/payouts", headers=key)
            tg.cancel_scope.cancel()
        async with _client(example.create_app(store=_DownStore())) as http:
            down = await http.post(
                "/payments", json={"amount": 1}, headers={"Idempotency-Key": "pay-2"}
            )
    assert duplicate.status_code == 409
    assert duplicate.json()["type"] == "urn:bastion:problem:idempotency-key-in-flight"
    assert int(duplicate.headers["retry-after"]) >= 1
    assert (down.status_code, down.headers["retry-after"]) == (503, "1")
    assert down.json()["type"] == "urn:bastion:problem:store-unavailable"


# -- the tutorial -------------------------------------------------------------------------------


def _tutorial_apps() -> list[str]:
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return [block for block in blocks if block.startswith("# app.py\n")]


def test_tutorial_has_its_four_steps() -> None:
    """The tutorial shows a complete app.py for each of its four steps."""
    assert len(_tutorial_apps()) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("step", range(4), ids=lambda i: f"step{i + 1}")
async def test_tutorial_step_runs(step: int, tmp_path: Path) -> None:
    """Each step's app.py runs: a payment is made once, and a keyed retry is replayed."""
    source = tmp_path / "app.py"
    source.write_text(_tutorial_apps()[step], encoding="utf-8")
    headers = {"Idempotency-Key": "7c2f0a4e"}
    with _loaded(source) as module:
        async with _client(module.app) as http:
            first = await http.post("/payments", json={"amount": 500}, headers=headers)
            retry = await http.post("/payments", json={"amount": 500}, headers=headers)
            made = (await http.get("/payments")).json()
            metrics = await http.get("/metrics")
    assert first.status_code == 201
    assert retry.status_code == 201
    # step 1 has no idempotency yet: the retry is a second payment
    assert len(made) == (2 if step == 0 else 1)
    assert retry.headers.get("idempotent-replayed") == (None if step == 0 else "true")
    assert ("ratelimit-policy" in first.headers) == (step >= 2)
    assert (metrics.status_code == 200) == (step == 3)


# -- generated and exhaustive reference pages ---------------------------------------------------


def test_settings_reference_is_up_to_date() -> None:
    """docs/reference/settings.md lists every settings field as the dataclasses define it."""
    with _loaded(ROOT / "scripts" / "settings_reference.py") as script:
        page = script.PAGE.read_text(encoding="utf-8")
        assert script.updated(page) == page, "run: python scripts/settings_reference.py"
        for cls in script.settings_classes():
            assert f"### `{cls.__name__}`" in page


def test_settings_reference_names_every_preset_variable() -> None:
    """Every RL_* variable a preset reads is documented on the settings page."""
    source = (ROOT / "src" / "bastion" / "ratelimit" / "_tiers.py").read_text(encoding="utf-8")
    variables = set(re.findall(r'"(RL_[A-Z_]+)"', source))
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    assert variables
    assert {name for name in variables if f"`{name}`" not in page} == set()


def _problems_in_source() -> set[tuple[int, str]]:
    """(status, type) of every problem bastion can send, read from the calls that send them."""
    from bastion._asgi import PROBLEM_TYPE_PREFIX

    found: set[tuple[int, str]] = set()
    for path in (ROOT / "src" / "bastion").rglob("*.py"):
        if path.name == "_asgi.py":
            continue  # where the helpers are defined, not called
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            name = ast.unparse(call.func).rsplit(".", 1)[-1]
            # problem_json(status, slug, …), send_problem(send, status, slug, …) and the
            # idempotency middleware's _refuse(scope, send, outcome, status, slug, …)
            skip = {"problem_json": 0, "send_problem": 1, "_refuse": 3}.get(name)
            if skip is None:
                continue
            args = call.args[skip : skip + 2]
            if [ast.unparse(arg) for arg in args] == ["status", "slug"]:
                continue  # a helper passing its own parameters on
            status, slug = (ast.literal_eval(arg) for arg in args)
            problem_type = PROBLEM_TYPE_PREFIX + slug
            for keyword in call.keywords:
                if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                    for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                        if isinstance(key, ast.Constant) and key.value == "type":
                            assert isinstance(value, ast.Name)
                            problem_type = constants[value.id]
            found.add((status, problem_type))
    return found


def test_problem_reference_lists_every_problem_type() -> None:
    """docs/reference/problems.md has a row for every problem type and status bastion sends."""
    problems = _problems_in_source()
    page = (DOCS / "reference" / "problems.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| \[`([^`]+)`\]\([^)]*\) \| (\d{3}) \|", page, re.MULTILINE))
    assert len(problems) >= 10
    assert {(status, kind) for kind, status in ((k, int(s)) for k, s in rows)} == problems


# -- the README's own app -----------------------------------------------------------------------


def _readme_app() -> str:
    """The one Python block of the README's "Use it in your app" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Use it in your app") :]
    section = section[: section.index("\n## ", 1)]
    (block,) = re.findall(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    return str(block)


@pytest.mark.anyio
async def test_readme_app_limits_the_api_and_not_its_metrics(tmp_path: Path) -> None:
    """The README's app rate-limits its API routes, replays a keyed retry, and serves its own
    /metrics without a rate limit (a scrape must never get 429)."""
    source = tmp_path / "readme_app.py"
    source.write_text(_readme_app(), encoding="utf-8")
    headers = {"Idempotency-Key": "r-1", "X-API-Key": "k"}
    with _loaded(source) as module:
        async with _client(module.app) as http:
            first = await http.post("/api/payments", json={"amount": 5}, headers=headers)
            retry = await http.post("/api/payments", json={"amount": 5}, headers=headers)
            scrape = await http.get("/metrics")
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.headers["idempotent-replayed"] == "true"
    assert '"burst";q=100;w=60' in first.headers["ratelimit-policy"]
    assert scrape.status_code == 200
    assert "ratelimit-policy" not in scrape.headers
    assert "bastion_http_requests_total" in scrape.text


def _bastion_source_root() -> str:
    """Where mypy finds the bastion under test: its ``src/`` when run from a checkout, nothing
    extra when it is installed (mypy reads site-packages on its own, and refuses it here)."""
    import bastion

    root = Path(bastion.__file__).resolve().parents[1]
    return "" if "site-packages" in root.parts else str(root)


def test_readme_app_passes_mypy_strict(tmp_path: Path) -> None:
    """The README's app type-checks under ``mypy --strict``, as users' own code would."""
    source = tmp_path / "readme_app.py"
    source.write_text(_readme_app(), encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": _bastion_source_root()},
    )
    assert result.returncode == 0, result.stdout + result.stderr
