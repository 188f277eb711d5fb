"""Trust boundaries on the OTLP hops (issue #13): TLS, mutual TLS and bearer tokens.

`audit-guard serve` runs with a server certificate, a client CA (mutual TLS) and a bearer
token; certificates are made at test time (tests/support/tls_certs.py). Refused: a plaintext
client, a
client without a certificate or with one from another CA, a call without the token or with a
wrong one (UNAUTHENTICATED) — and a forged app record from such a client never reaches
reconciliation. Then the whole chain with the real collector and the shipped secure variant
(collector-config/audit-guard-secure.yaml): mTLS + bearer on collector → processor and on
processor → otlp/egress.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from audit_guard.config import ConfigError, load_settings
from demo.backends import collector_config_path, start_collector
from demo.procs import ManagedProcess, free_port, port_open, tool_path, wait_until
from tests.support.otlp_doubles import RecordingDownstream, logs_request
from tests.support.tls_certs import Pki, make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOKEN = "t0k3n-for-the-collector-hop-0123456789"
EGRESS_TOKEN = "t0k3n-for-the-egress-hop-9876543210"
RID = "4bf92f3577b34da6a3ce929d0e0e4736"
NGINX = orjson.dumps({"msec": f"{time.time():.3f}", "request_id": RID, "request_method": "POST",
                      "request_uri": "/v1/chat-messages", "status": "200", "user_id": "u1",
                      "app_id": "a1", "request_completion": "OK", "upstream_status": "200",
                      "upstream_bytes_received": "2048"}).decode()
APP = orjson.dumps({"ts": "2026-12-02T00:00:00Z", "severity": "INFO", "trace_id": RID,
                    "message": "audit", "user_id": "u1", "app_id": "a1",
                    "path": "/v1/chat-messages", "method": "POST", "status": 200}).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def serve_env(pki: Pki, otlp: int, downstream: int, **extra: str) -> dict[str, str]:
    return {"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
            "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
            "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream}",
            "AUDIT_GUARD_SERVER__TLS__CERT_FILE": str(pki.server_cert),
            "AUDIT_GUARD_SERVER__TLS__KEY_FILE": str(pki.server_key),
            "AUDIT_GUARD_SERVER__TLS__CLIENT_CA_FILE": str(pki.ca),
            "AUDIT_GUARD_SERVER__BEARER_TOKEN": TOKEN,
            "AUDIT_GUARD_RECONCILE__WINDOW_S": "2", **extra}


@pytest.fixture
def secured(pki: Pki, tmp_path: Path) -> Iterator[tuple[int, RecordingDownstream]]:
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    proc = ManagedProcess("serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
                          env=serve_env(pki, otlp, downstream.port)).start()
    try:
        proc.wait_ready(lambda: port_open(otlp), 60)
        yield otlp, downstream
    finally:
        proc.stop()
        downstream.server.stop(None)


def export(port: int, request: object, *, tls: tuple[Path, Path, Path] | None,
           token: str | None, timeout: float = 10) -> grpc.StatusCode:
    """One logs Export; the status it ends with. `tls`: (CA, client cert, client key)."""
    target = f"127.0.0.1:{port}"
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        ca, cert, key = tls
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(
            ca.read_bytes(), key.read_bytes() if key else None,
            cert.read_bytes() if cert else None))
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(request, timeout=timeout,
                                                             metadata=metadata)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()


def test_who_may_send(secured: tuple[int, RecordingDownstream], pki: Pki) -> None:
    port, downstream = secured
    request = logs_request(NGINX)
    good = (pki.ca, pki.client_cert, pki.client_key)
    # Not even a TLS handshake, or one without the right client certificate: no call at all.
    assert export(port, request, tls=None, token=TOKEN, timeout=3) == grpc.StatusCode.UNAVAILABLE
    assert export(port, request, tls=(pki.ca, None, None), token=TOKEN,
                  timeout=3) == grpc.StatusCode.UNAVAILABLE
    assert export(port, request, tls=(pki.ca, pki.other_client_cert, pki.other_client_key),
                  token=TOKEN, timeout=3) == grpc.StatusCode.UNAVAILABLE
    # The right certificate but no token, or a wrong one.
    assert export(port, request, tls=good, token=None) == grpc.StatusCode.UNAUTHENTICATED
    assert export(port, request, tls=good,
                  token=TOKEN[:-1] + "x") == grpc.StatusCode.UNAUTHENTICATED
    assert downstream.spans() == []  # nothing refused was processed
    # Both: accepted, the span sent on.
    assert export(port, request, tls=good, token=TOKEN) == grpc.StatusCode.OK
    assert len(downstream.spans()) == 1


def test_a_forged_app_record_never_reaches_reconciliation(
        secured: tuple[int, RecordingDownstream], pki: Pki) -> None:
    """An audited request comes through the collector's hop; someone on the network sends the
    app record that would close it, without the token: refused, so the request is still
    reported missing after the window (2 s)."""
    port, downstream = secured
    good = (pki.ca, pki.client_cert, pki.client_key)
    assert export(port, logs_request(APP.replace(RID, "0" * 31 + "1"), source="app"), tls=good,
                  token=TOKEN) == grpc.StatusCode.OK  # an app stream exists: reconciliation on
    assert export(port, logs_request(NGINX), tls=good, token=TOKEN) == grpc.StatusCode.OK
    forged = logs_request(APP, source="app")
    assert export(port, forged, tls=good, token="forged-token-0123456789") == \
        grpc.StatusCode.UNAUTHENTICATED

    def missing() -> bool:
        return any(s.trace_id.hex() == RID and s.span_id != bytes.fromhex(RID[:16])
                   and any(a.key == "audit.missing" for a in s.attributes)
                   for s in downstream.spans())

    wait_until(missing, 20, "the request reported missing")


def test_bad_security_settings_fail_at_start_with_the_key(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="server.bearer_token is 5 characters"):
        load_settings(server={"bearer_token": "short"})
    with pytest.raises(ConfigError, match=r"needs both cert_file and key_file") as err:
        load_settings(server={"tls": {"cert_file": str(pki.server_cert)}})
    with pytest.raises(ConfigError, match="exporter.insecure is true"):
        load_settings(exporter={"tls": {"ca_file": str(pki.ca)}})
    with pytest.raises(ConfigError, match="is not a readable file"):
        load_settings(server={"tls": {"cert_file": str(tmp_path / "nope.pem"),
                                      "key_file": str(pki.server_key)}})
    secret = "a-long-but-leaked-secret-value"
    with pytest.raises(ConfigError) as err:
        load_settings(server={"bearer_token": secret, "bearer_token_file": str(pki.ca)})
    assert secret not in str(err.value)  # a secret never shows in an error message


def test_the_whole_chain_with_mtls_and_bearer_on_both_hops(tmp_path: Path, pki: Pki) -> None:
    """nginx log → collector ⇒ serve ⇒ collector otlp/egress → trace backend, where ⇒ is
    mutual TLS + bearer token: the shipped secure variant over the shipped config."""
    tool_path("otelcol-audit-guard")  # no skip: a missing collector is a failure
    backend = RecordingDownstream()
    backend.server.start()
    otlp = free_port()
    log = tmp_path / "access.log"
    log.write_text(NGINX + "\n")
    collector_env = {
        "AUDIT_GUARD_PROCESSOR_TOKEN": TOKEN, "AUDIT_GUARD_EGRESS_TOKEN": EGRESS_TOKEN,
        "AUDIT_GUARD_TLS_CA": str(pki.ca),
        # One certificate for the collector's both roles: it names 127.0.0.1 (server) and is
        # signed by the CA the processor trusts for clients.
        "AUDIT_GUARD_COLLECTOR_TLS_CERT": str(pki.server_cert),
        "AUDIT_GUARD_COLLECTOR_TLS_KEY": str(pki.server_key),
        "AUDIT_GUARD_PROCESSOR_TLS_NAME": "localhost",
    }
    # The collector first (its exporter retries until the processor listens): the processor
    # is told where its otlp/egress receiver is.
    collector, endpoints = start_collector(
        tmp_path / "collector", access_log=log, processor_endpoint=f"127.0.0.1:{otlp}",
        traces_endpoint=f"127.0.0.1:{backend.port}", vts_target=f"127.0.0.1:{free_port()}",
        overlays=[collector_config_path().with_name("audit-guard-secure.yaml")],
        extra_env=collector_env)
    egress = endpoints.egress_port
    serve = ManagedProcess(
        "serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
        env=serve_env(pki, otlp, egress, **{
            "AUDIT_GUARD_EXPORTER__INSECURE": "false",
            "AUDIT_GUARD_EXPORTER__TLS__CA_FILE": str(pki.ca),
            "AUDIT_GUARD_EXPORTER__TLS__CERT_FILE": str(pki.client_cert),
            "AUDIT_GUARD_EXPORTER__TLS__KEY_FILE": str(pki.client_key),
            "AUDIT_GUARD_EXPORTER__BEARER_TOKEN": EGRESS_TOKEN}))
    try:
        serve.start().wait_ready(lambda: port_open(otlp), 60)
        wait_until(lambda: any(s.trace_id.hex() == RID for s in backend.spans()), 90,
                   "the span at the backend through both secured hops")
        # The egress hop refuses a client with the right certificate but without the token.
        channel = grpc.secure_channel(f"127.0.0.1:{egress}", grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()))
        try:
            with pytest.raises(grpc.RpcError) as refused:
                trace_service_pb2_grpc.TraceServiceStub(channel).Export(
                    trace_service_pb2.ExportTraceServiceRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            channel.close()
    finally:
        collector.stop()
        serve.stop()
        backend.server.stop(None)


def test_a_rotated_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    """server.tls files replaced while serving: the next connection gets the new certificate."""
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(old.server_cert.read_bytes())
    key.write_bytes(old.server_key.read_bytes())
    downstream = RecordingDownstream()
    downstream.server.start()
    otlp = free_port()
    env = {"AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{otlp}",
           "AUDIT_GUARD_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
           "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{downstream.port}",
           "AUDIT_GUARD_SERVER__TLS__CERT_FILE": str(cert),
           "AUDIT_GUARD_SERVER__TLS__KEY_FILE": str(key)}
    proc = ManagedProcess("serve", [sys.executable, "-m", "audit_guard.cli", "serve"], tmp_path,
                          env=env).start()
    try:
        proc.wait_ready(lambda: port_open(otlp), 60)
        request = logs_request(NGINX)
        assert export(otlp, request, tls=(old.ca, None, None), token=None) == grpc.StatusCode.OK
        assert export(otlp, request, tls=(new.ca, None, None), token=None,
                      timeout=3) == grpc.StatusCode.UNAVAILABLE
        key.write_bytes(new.server_key.read_bytes())
        cert.write_bytes(new.server_cert.read_bytes())
        wait_until(lambda: export(otlp, request, tls=(new.ca, None, None), token=None,
                                  timeout=3) == grpc.StatusCode.OK, 20,
                   "the new certificate on a new connection")
        assert export(otlp, request, tls=(old.ca, None, None), token=None,
                      timeout=3) == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.stop()
        downstream.server.stop(None)
