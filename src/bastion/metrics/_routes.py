"""Route templates for metric labels, read from the scope after the app has routed the request.

Frameworks leave the matched route in the scope: Starlette and FastAPI put the route object at
``scope["route"]`` (FastAPI's included routers also leave an "effective route context" whose
template carries the routers' prefixes), Litestar puts the template at ``scope["path_template"]``.
Mounts only leave the raw matched prefix in ``root_path``; it is mapped back to the mount's
template through an index of the app's mounts built once, so a mount like ``/t/{tenant}``
never leaks tenant names into a label. FastAPI's router leaves no route at all for a plain
Starlette route (``app.add_route("/metrics", metrics_app)``) or mount, only its ``endpoint``;
the same index maps that endpoint back to its template. Nothing here walks ``app.routes`` per
request.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Host, Mount, compile_path

from bastion.typing import Scope

__all__ = ["UNKNOWN_MOUNT", "RouteResolver"]

UNKNOWN_MOUNT = "<mount>"
"""Stands for a mount prefix that is not in the index (a mount added inside a FastAPI router)."""

_MOUNT_SUFFIX = "/{path}"


class _MountIndex:
    """Every mount reachable from one router, as (full template, pattern, has parameters), and
    every endpoint's full templates, for routers that leave only the endpoint in the scope."""

    __slots__ = ("endpoints", "mounts", "router")

    def __init__(self, router: Any) -> None:
        self.router = router
        self.mounts: list[tuple[str, re.Pattern[str], bool]] = []
        self.endpoints: dict[int, list[tuple[str, re.Pattern[str]]]] = {}
        self._walk(getattr(router, "routes", ()), "", depth=0)

    def _walk(self, routes: Any, prefix: str, depth: int) -> None:
        if depth > 32:  # a router mounted inside itself
            return
        for route in routes:
            if isinstance(route, Mount):
                template = prefix + route.path
                pattern, _, convertors = compile_path(template)
                self.mounts.append((template, pattern, bool(convertors)))
                self._endpoint(route.app, template + _MOUNT_SUFFIX, template + "/{path:path}")
                self._walk(route.routes, template, depth + 1)
            elif isinstance(route, Host):
                self._walk(route.routes, prefix, depth + 1)
            elif getattr(route, "path_format", None) and hasattr(route, "endpoint"):
                template = prefix + route.path_format
                self._endpoint(route.endpoint, template, template)

    def _endpoint(self, endpoint: Any, template: str, matches: str) -> None:
        pattern, _, _ = compile_path(matches)
        self.endpoints.setdefault(id(endpoint), []).append((template, pattern))

    def endpoint(self, endpoint: Any, path: str) -> str | None:
        """The template of the route that serves ``endpoint``; the path picks among several."""
        found = self.endpoints.get(id(endpoint))
        if not found:
            return None
        if len(found) == 1:
            return found[0][0]
        for template, pattern in found:
            if pattern.match(path):
                return template
        return None

    def template(self, raw: str) -> tuple[str, bool] | None:
        for template, pattern, has_params in self.mounts:
            if pattern.match(raw):
                return template, has_params
        return None


class RouteResolver:
    """Maps a routed scope to its route template, or None when no route matched.

    Its caches are bounded by the app's routing table, never by the requests it sees: only
    mount prefixes without parameters are memoised, each under its one possible raw value.
    """

    __slots__ = ("_index", "_static")

    def __init__(self) -> None:
        self._index: _MountIndex | None = None
        self._static: dict[str, str] = {}

    def __call__(self, scope: Scope) -> str | None:
        route = scope.get("route")
        if route is None:
            template: str | None = scope.get("path_template")  # Litestar
            if template is None and "endpoint" in scope:  # a plain route in a FastAPI router
                return self._endpoint(scope)
            return template
        template = None
        fastapi = scope.get("fastapi")
        if fastapi is not None:
            context = fastapi.get("effective_route_context")
            if context is not None and getattr(context, "original_route", None) is route:
                template = getattr(context, "path_format", None) or None
        if template is None:
            template = getattr(route, "path_format", None)
            if not template:
                return None
            if isinstance(route, Mount):
                # Nothing inside the mount matched (or it holds a plain ASGI app): its own
                # prefix is part of root_path below, so only the remainder is added here.
                template = _MOUNT_SUFFIX
        app_root = scope.get("app_root_path")
        if app_root is None:  # no mount on the way
            return template
        raw = scope.get("root_path", "")[len(app_root) :]
        if not raw:
            return template
        return self._prefix(scope, raw) + template

    def _index_of(self, scope: Scope) -> _MountIndex:
        router = scope.get("router")
        index = self._index
        if index is None or index.router is not router:
            index = self._index = _MountIndex(router)
        return index

    def _endpoint(self, scope: Scope) -> str | None:
        return self._index_of(scope).endpoint(scope["endpoint"], scope["path"])

    def _prefix(self, scope: Scope, raw: str) -> str:
        known = self._static.get(raw)
        if known is not None:
            return known
        found = self._index_of(scope).template(raw)
        if found is None:
            return UNKNOWN_MOUNT
        template, has_params = found
        if not has_params:
            self._static[raw] = template
        return template
