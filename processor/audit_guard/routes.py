"""Route templates: `/v1/datasets/3f2a…/documents` → `/v1/datasets/{dataset_id}/documents`.

Span names are `{method} {route}` (OpenTelemetry HTTP conventions); a raw path full of ids would
make every span name unique. Templates are matched once per distinct path and cached (bounded).
The built-in table covers Dify's service API; more can be given in the configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import repeat
from typing import Any

__all__ = ["DIFY_ROUTES", "RouteTable"]

DIFY_ROUTES: tuple[str, ...] = (
    "/v1/chat-messages",
    "/v1/chat-messages/{task_id}/stop",
    "/v1/completion-messages",
    "/v1/completion-messages/{task_id}/stop",
    "/v1/workflows/run",
    "/v1/workflows/run/{workflow_run_id}",
    "/v1/workflows/tasks/{task_id}/stop",
    "/v1/files/upload",
    "/v1/messages",
    "/v1/messages/{message_id}/feedbacks",
    "/v1/conversations",
    "/v1/conversations/{conversation_id}",
    "/v1/parameters",
    "/v1/meta",
    "/v1/info",
    "/v1/model-configs",
    "/v1/datasets",
    "/v1/datasets/{dataset_id}",
    "/v1/datasets/{dataset_id}/documents",
    "/v1/datasets/{dataset_id}/documents/{document_id}",
    "/v1/datasets/{dataset_id}/documents/{document_id}/segments",
    "/v1/datasets/{dataset_id}/documents/{document_id}/segments/{segment_id}",
    "/v1/datasets/{dataset_id}/document/create-by-text",
    "/v1/datasets/{dataset_id}/document/create-by-file",
    "/v1/datasets/{dataset_id}/retrieve",
    "/console/api/workspaces/current/model-providers",
    "/console/api/workspaces/current/model-providers/{provider}",
    "/console/api/workspaces/current/model-providers/{provider}/models",
    "/console/api/apps",
    "/console/api/apps/{app_id}",
    "/console/api/apps/{app_id}/model-config",
)

_MISS: Any = object()
_PARAM = re.compile(r"\\\{[a-z_]+\\\}")


class RouteTable:
    def __init__(self, templates: Iterable[str], cache_size: int = 65536) -> None:
        self._templates = list(templates)
        parts = []
        for i, template in enumerate(self._templates):
            parts.append(f"(?P<r{i}>{_PARAM.sub('[^/]+', re.escape(template))}/?)")
        self._regex = re.compile("|".join(parts)) if parts else None
        self._cache: dict[str, str | None] = {}
        self._cache_size = cache_size

    def routes(self, paths: list[str | None]) -> list[str | None]:
        """route() for a column of paths (None stays None); cache hits are one C-level map."""
        cache = self._cache
        out = list(map(cache.get, paths, repeat(_MISS)))
        if _MISS in out:
            for i, route in enumerate(out):
                if route is _MISS:
                    path = paths[i]
                    out[i] = None if path is None else self.route(path)
        return out

    def route(self, path: str) -> str | None:
        try:
            return self._cache[path]
        except KeyError:
            pass
        route = None
        if self._regex is not None:
            m = self._regex.fullmatch(path)
            if m is not None and m.lastgroup is not None:
                route = self._templates[int(m.lastgroup[1:])]
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[path] = route
        return route
