"""TLS and bearer tokens on audit-guard's two OTLP ends (issue #13).

- The receiver: TLS from PEM files, mutual TLS when a client CA is set, the files read again
  when they change (gRPC asks for the certificate configuration at each new connection; a
  changed file is picked up then, without a restart). A bearer token, when set, must come with
  every call as `authorization: Bearer <token>` — what the collector's `bearertokenauth`
  extension sends — else the call is refused UNAUTHENTICATED before any record is read. The
  gRPC health service stays open (probes carry no token).
- The exporter: TLS with a custom CA, a client certificate and an expected server name; the
  token sent with every request.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ..config import ClientTLSConfig, ServerTLSConfig

__all__ = ["BearerTokenInterceptor", "client_credentials", "server_credentials"]

log = logging.getLogger(__name__)

_OPEN_SERVICES = ("/grpc.health.v1.Health/",)


class _CertificateFiles:
    """The server's PEM files and when they last changed."""

    def __init__(self, config: ServerTLSConfig) -> None:
        assert config.cert_file is not None and config.key_file is not None
        self._paths = [config.cert_file, config.key_file, config.client_ca_file]
        self._stamp = self._stamps()

    def _stamps(self) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            out.append((st.st_mtime_ns, st.st_size) if st is not None else None)
        return out

    def configuration(self) -> Any:
        cert, key, client_ca = (p.read_bytes() if p is not None else None for p in self._paths)
        return grpc.ssl_server_certificate_configuration([(key, cert)],
                                                         root_certificates=client_ca)

    def fetch(self) -> Any:
        """gRPC's callback at each new connection: a new configuration when a file changed."""
        stamp = self._stamps()
        if stamp == self._stamp or None in stamp[:2]:
            return None  # unchanged (or a file is being replaced right now): keep the current
        try:
            configuration = self.configuration()
        except (OSError, ValueError) as exc:
            log.error("server.tls: the changed certificate files cannot be read (%s); still "
                      "serving the previous certificate", exc)
            return None
        self._stamp = stamp
        log.info("server.tls: certificate files changed; new connections use the new ones")
        return configuration


def server_credentials(config: ServerTLSConfig) -> grpc.ServerCredentials:
    """TLS (mutual when client_ca_file is set) for the receiver, reloaded on file change."""
    files = _CertificateFiles(config)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch,
        require_client_authentication=config.client_ca_file is not None)


def client_credentials(config: ClientTLSConfig) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(root_certificates=read(config.ca_file),
                                        private_key=read(config.key_file),
                                        certificate_chain=read(config.cert_file))


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses, UNAUTHENTICATED, every call (but health checks) without the bearer token."""

    def __init__(self, token: str, on_refused: Callable[[], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._on_refused = on_refused

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token (authorization: Bearer <token>; "
                          "see server.bearer_token)")

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith(_OPEN_SERVICES):
            return continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return continuation(handler_call_details)
                break
        if self._on_refused is not None:
            self._on_refused()
        return self._refusal
