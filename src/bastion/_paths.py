"""Request methods and paths in the form routers match them, shared by both middleware.

Selectors (tier ``routes``, idempotency ``include``/``exclude``/``require_key``) run before any
router, so they must see a request the way the router will: Django upper-cases the method, and
Litestar routes ``/pay/``, ``//pay`` and ``/pay//`` to ``/pay``. Matching on what the server
handed over would let those spellings past the middleware to the very handler it guards.

The path is the server's ``scope["path"]``, which is already percent-decoded and which every
router matches against; it is not decoded a second time (``/p%2561y`` reaches routers as
``/p%61y``, not ``/pay``). Dot segments are left alone: clients resolve them, and no router
this library is tested with treats ``/a/../pay`` as ``/pay``.
"""

from __future__ import annotations

import re

__all__ = ["normal_method", "normal_path"]

_SLASHES = re.compile(r"/{2,}")


def normal_method(method: str) -> str:
    """The method in upper case; the test is cheaper than ``upper()`` on the usual request."""
    return method if method.isupper() else method.upper()


def normal_path(path: str) -> str:
    """``path`` with runs of slashes collapsed and a trailing slash dropped (``/`` stays).

    A path already in that form, nearly every request, is returned as it is after two
    substring tests.
    """
    if "//" not in path and (path[-1:] != "/" or path == "/"):
        return path
    path = _SLASHES.sub("/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path
