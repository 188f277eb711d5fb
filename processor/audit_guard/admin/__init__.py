"""The admin HTTP port: health, readiness, /metrics, the admin API and the status page."""

from __future__ import annotations

from .app import create_app
from .server import AdminServer, bind_admin_socket
from .state import AdminState

__all__ = ["AdminServer", "AdminState", "bind_admin_socket", "create_app"]
