"""MkDocs hooks: publish the runnable examples with the site, so pages can link to them.

The Markdown under ``docs/`` links to ``../examples/<name>.py`` and ``../CHANGELOG.md``, which
work when the files are read on a forge or in a checkout. The site has no ``..``: these hooks
copy each example into it as ``examples/<name>.py`` and point such links there (and the
changelog link at the changelog page), so ``mkdocs build --strict`` can check every link.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# a Markdown link target: ](target) or ](target#anchor), relative (no scheme, no leading /)
_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)\s#]+)(#[^)\s]*)?\)")
_REDIRECTS = {"CHANGELOG.md": "changelog.md", "README.md": "index.md"}


def on_files(files: Files, config: Any) -> Files:
    """Add ``examples/*.py`` to the site, under ``examples/``."""
    for path in sorted(EXAMPLES.glob("*.py")):
        files.append(
            File(
                f"examples/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown: str, page: Page, config: Any, files: Files) -> str:
    """Point links that leave ``docs/`` at the copies (or pages) the site has instead."""
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        resolved = posixpath.normpath(posixpath.join("docs", page_dir, target))
        if resolved.startswith("docs/"):
            return match.group(0)  # inside the site already: MkDocs checks it
        if resolved.startswith("examples/") and resolved.count("/") == 1:
            site_path = resolved
        elif resolved in _REDIRECTS:
            site_path = _REDIRECTS[resolved]
        else:
            return match.group(0)  # left for MkDocs to report
        return f"]({posixpath.relpath(site_path, page_dir or '.')}{anchor})"

    return _LINK.sub(rewrite, markdown)
