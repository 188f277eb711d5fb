# audit-guard processor image (also runs the demo upstream in compose.yaml).
#
#   docker build -f processor.Dockerfile -t audit-guard-processor .
#   docker run --rm -e AUDIT_GUARD_SERVER__LISTEN=0.0.0.0:4327 audit-guard-processor
#
# Configuration is by environment (AUDIT_GUARD_*, nested with `__`) or a YAML file named by
# AUDIT_GUARD_CONFIG / `serve --config`; see processor/audit_guard/config.py.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the wheel is built from. README.md* is optional (a glob matching nothing is allowed):
# pyproject names it as the long description, and setuptools only warns when it is missing.
WORKDIR /src
COPY pyproject.toml setup.py README.md* ./
COPY processor ./processor
# [serve]: gRPC, the OpenTelemetry SDK and the admin HTTP port (the base install is replay and
# doctor only; the demo upstream needs nothing more). gcc and OpenSSL's headers build the C
# extensions (setup.py: the integrity chain's, the nginx format's decoder) and leave in the same
# layer: at run time they need only libcrypto, which the image's Python already links.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && pip install ".[serve]" \
 && apt-get purge -y --auto-remove gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/* /src
# The demo upstream (compose.yaml's `upstream`, a stand-in for Dify's API) is not in the wheel: its
# two modules (standard library only) sit beside it and run as `python -m demo.upstream` from here.
COPY demo/__init__.py demo/upstream.py demo/upstream_answers.py /opt/audit-guard-demo/demo/

# Non-root, fixed uid so volume ownership is predictable. /var/log/app and /var/lib/audit-guard
# exist in the image owned by that user, so a named volume mounted there (the demo upstream's app
# log; the processor's reconcile.state_dir) starts out writable: Docker gives a new, empty named
# volume the owner of the directory it is mounted over.
RUN groupadd --system --gid 10002 audit-guard \
    && useradd --system --uid 10002 --gid audit-guard --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin audit-guard \
    && mkdir -p /var/log/app /var/lib/audit-guard \
    && chown audit-guard:audit-guard /var/log/app /var/lib/audit-guard
USER 10002:10002
WORKDIR /

# OTLP/gRPC in (logs and metrics from the collector); gRPC health is served on the same port.
EXPOSE 4327
CMD ["audit-guard", "serve"]
