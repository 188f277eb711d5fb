"""The package installs cleanly (issue #17): a small base install, optional extras.

- Every module the code imports is declared in pyproject.toml: processor/ in the base
  dependencies or an extra, tests/ and scripts/ in those or the [test] extra (checked on the AST,
  lazy imports included, mapped to distributions through this venv's metadata).
- A command whose extra is missing says so in one line (from the source tree: a meta-path finder
  hides the extra's modules).
- e2e: the wheel, installed WITHOUT extras into a fresh venv (no system site-packages), runs
  `audit-guard replay` on an Nginx log and `doctor --help` and doctor's file checks; `serve`
  prints the one-line hint for [serve], `doctor --postgres` the one for [postgres].

The fresh venv gets its packages from .cache/wheelhouse (git-ignored), offline, pinned to the
versions this venv has; only when that misses a wheel is it filled from the package index (pip
download), once, so later runs need no network.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[3]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
# Ours, not distributions: the package, the test helpers (tests/support/faults/*, tests/*.py
# imported as
# top-level modules when a test file runs as a script) and the scripts' own imports of each other.
LOCAL_MODULES = {"audit_guard", "demo", "tests", "conftest"} | {
    p.stem for root in ("tests", "scripts", "demo") for p in (REPO / root).rglob("*.py")}
SERVE_HINT = "pip install 'audit-guard[serve]'"
POSTGRES_HINT = "pip install 'audit-guard[postgres]'"
NGINX_LINES = (
    {"msec": "1764165600.100", "request_id": "4bf92f3577b34da6a3ce929d0e0e4701",
     "request_method": "GET", "request_uri": "/v1/datasets/d1/documents?page=1", "status": "200",
     "user_id": "u1", "app_id": "a1", "request_completion": "OK", "body_bytes_sent": 10,
     "sent_http_content_length": "10", "request_time": "0.250"},
    {"msec": "1764165600.300", "request_id": "4bf92f3577b34da6a3ce929d0e0e4702",
     "request_method": "POST", "request_uri": "/v1/chat-messages", "status": "200",
     "user_id": "", "app_id": "a1", "request_completion": "", "body_bytes_sent": 10,
     "sent_http_content_length": "100", "request_time": "0.250"},
)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)[1])


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    return names - {"audit-guard"}


def _third_party_imports(roots: Iterable[Path]) -> dict[str, set[str]]:
    """Imported module → the files that import it, for every import outside the stdlib and
    this repository (at any depth: function-level and TYPE_CHECKING imports count too)."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL_MODULES:
                        found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def _providers() -> dict[str, set[str]]:
    """Module prefix → the distributions that install files under it: the top-level name, and
    for a namespace shared by several distributions (google, opentelemetry) its second level
    too (google.rpc is googleapis-common-protos, google.protobuf is protobuf)."""
    out: dict[str, set[str]] = {}
    for top, dists in metadata.packages_distributions().items():
        out.setdefault(top, set()).update(_normalize(d) for d in dists)
        if len(dists) < 2:
            continue
        for dist in set(dists):
            for file in metadata.distribution(dist).files or ():
                parts = Path(file).parts
                if len(parts) > 2 and parts[0] == top:
                    out.setdefault(f"{top}.{parts[1]}", set()).add(_normalize(dist))
    return out


def _undeclared(roots: Sequence[Path], declared: set[str]) -> list[str]:
    providers = _providers()
    problems = []
    for module, files in sorted(_third_party_imports(roots).items()):
        top, _, rest = module.partition(".")
        second = f"{top}.{rest.partition('.')[0]}"
        dists = providers.get(second) or providers.get(top, set())
        if not dists & declared:
            provider = ", ".join(sorted(dists)) or "no installed distribution"
            problems.append(f"{module} (from {provider}) imported by {sorted(files)[:3]}")
    return problems


def test_every_module_the_package_imports_is_declared() -> None:
    assert _undeclared([REPO / "processor"], _declared("serve", "postgres")) == []


def test_every_module_the_tests_and_scripts_import_is_declared() -> None:
    roots = [REPO / "tests", REPO / "scripts", REPO / "demo"]
    assert _undeclared(roots, _declared("serve", "postgres", "test")) == []


def test_the_test_extra_pulls_every_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "audit-guard[all]" in extras["test"]  # scripts/bootstrap installs .venv with .[test]
    assert set(extras) - {"all", "test"} == {"serve", "postgres"}
    assert extras["all"] == ["audit-guard[serve,postgres]"]


# Runs audit-guard from the source tree with some modules made unimportable.
_BLOCKED_RUN = textwrap.dedent("""
    import sys
    blocked = sys.argv[1].split(",")
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Hide())
    from audit_guard.cli import main
    sys.exit(main(sys.argv[2:]))
""")
SERVE_MODULES = ("grpc,grpc_health,grpc_status,google.rpc,fastapi,starlette,uvicorn,"
                 "opentelemetry.sdk")


@pytest.mark.parametrize(("blocked", "argv", "code", "hint"), [
    (SERVE_MODULES, ["serve"], 2, SERVE_HINT),
    (SERVE_MODULES, ["resend", "--dry-run"], 2, SERVE_HINT),
    (SERVE_MODULES, ["replay", "--export", "127.0.0.1:9", "{log}"], 2, SERVE_HINT),
    # config.py checks exporter.permanent_codes against gRPC's names (a lazy `import grpc`)
    (SERVE_MODULES, ["replay", "--config", "{config}", "{log}"], 2, SERVE_HINT),
    ("psycopg", ["doctor", "--postgres", "dbname=audit"], 3, POSTGRES_HINT),
])
def test_a_command_without_its_extra_says_which_in_one_line(
    tmp_path: Path, blocked: str, argv: list[str], code: int, hint: str
) -> None:
    log, config = _nginx_log(tmp_path), tmp_path / "config.yaml"
    config.write_text("exporter:\n  permanent_codes: [INVALID_ARGUMENT]\n")
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_RUN, blocked,
         *(a.format(log=log, config=config) for a in argv)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "AUDIT_GUARD_CONFIG"},
    )
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and hint in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _nginx_log(directory: Path) -> Path:
    log = directory / "access.log"
    log.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in NGINX_LINES))
    return log


# ----------------------------------------------------------------------------- fresh venv (e2e)


def _run(argv: Sequence[str | Path], *, cwd: Path, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VIRTUAL_ENV", "AUDIT_GUARD_CONFIG")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**clean, **(env or {})})


def _pip(*args: str | Path, cwd: Path, offline: bool) -> subprocess.CompletedProcess[str]:
    # Offline: only the wheelhouse (pip hands --no-index/--find-links on to build isolation).
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)} if offline else {}
    return _run([sys.executable, "-m", "pip", *args], cwd=cwd, timeout=240, env=env)


def _offline_else_fill(args: Sequence[str | Path], fill: Sequence[str | Path], cwd: Path) -> None:
    """Runs pip `args` from the wheelhouse alone; when that fails, downloads `fill` into the
    wheelhouse (the package index's one use) and tries once more."""
    result = _pip(*args, cwd=cwd, offline=True)
    if result.returncode != 0:
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        fetched = _pip("download", "-q", "--only-binary=:all:", "-d", WHEELHOUSE, *fill,
                       cwd=cwd, offline=False)
        assert fetched.returncode == 0, f"pip download {fill}:\n{fetched.stderr}"
        result = _pip(*args, cwd=cwd, offline=True)
    assert result.returncode == 0, f"pip {' '.join(map(str, args))}:\n{result.stderr}"


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of what it is made of (never in the shared work tree)."""
    stage = tmp_path / "src"
    stage.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, stage / name)
    shutil.copytree(REPO / "processor", stage / "processor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    backend = PYPROJECT["build-system"]["requires"]
    _offline_else_fill(["wheel", "--no-deps", "-q", "-w", dist, stage], backend, tmp_path)
    (wheel,) = dist.glob("audit_guard-*.whl")
    return wheel


def _constraints(tmp_path: Path) -> Path:
    """This venv's versions, so the fresh venv gets the same ones (and the wheelhouse holds
    them after one download)."""
    pins = sorted({f"{_normalize(d.metadata['Name'])}=={d.version}"
                   for d in metadata.distributions()
                   if _normalize(d.metadata["Name"]) not in ("audit-guard", "pip", "setuptools")})
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    # No pip of its own (this venv's pip installs into it with --python) and no system
    # site-packages: the base dependencies must come from the wheel's metadata alone.
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    constraints = _constraints(tmp_path)
    _offline_else_fill(
        ["--python", venv / "bin" / "python", "install", "-q", "-c", constraints, wheel],
        ["-c", constraints, wheel], tmp_path)
    for stale in WHEELHOUSE.glob("audit_guard-*.whl"):  # pip download copies the wheel too
        stale.unlink()
    return venv


def _installed(venv: Path) -> set[str]:
    listed = _run([venv / "bin" / "python", "-c",
                   "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] "
                   "for d in m.distributions()))"], cwd=venv)
    return {_normalize(n) for n in listed.stdout.split()}


@pytest.mark.e2e
@pytest.mark.timeout(600)  # the first run fills the wheelhouse from the index
def test_the_wheel_without_extras_replays_and_doctors_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = _fresh_venv(tmp_path, _build_wheel(tmp_path))
    installed = _installed(venv)
    assert "audit-guard" in installed
    assert not installed & _declared("serve", "postgres") - _declared(), (
        f"the base install pulled an extra's package: {installed & _declared('serve')}")
    cli = venv / "bin" / "audit-guard"

    replayed = _run([cli, "replay", _nginx_log(tmp_path)], cwd=tmp_path)
    assert replayed.returncode == 1, replayed.stderr  # the second request is cut short
    lines = [orjson.loads(line) for line in replayed.stdout.splitlines()]
    assert [(r["line"], r["source"]) for r in lines] == [(1, "nginx"), (2, "nginx")]
    assert lines[0]["flags"] == [] and "truncated:request_incomplete" in lines[1]["flags"]

    helped = _run([cli, "doctor", "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "--nginx-conf" in helped.stdout, helped.stderr
    checked = _run([cli, "doctor", "--nginx-conf", _nginx_conf(tmp_path), "--collector-config",
                    REPO / "collector-config" / "audit-guard.yaml", "--json"], cwd=tmp_path)
    assert checked.returncode in (0, 1, 2), checked.stderr  # a verdict, not a usage error (3)
    assert orjson.loads(checked.stdout)["findings"]

    for argv, code, hint in ((["serve"], 2, SERVE_HINT),
                             (["doctor", "--postgres", "dbname=audit"], 3, POSTGRES_HINT)):
        result = _run([cli, *argv], cwd=tmp_path)
        assert result.returncode == code and result.stderr.count("\n") == 1, result.stderr
        assert hint in result.stderr, result.stderr


def _nginx_conf(directory: Path) -> Path:
    conf = directory / "nginx.conf"
    conf.write_text(textwrap.dedent("""
        events {}
        http {
            log_format audit escape=json '{"msec":"$msec","request_id":"$request_id"}';
            server {
                listen 8080;
                access_log /var/log/nginx/audit.log audit;
                location / { proxy_pass http://127.0.0.1:8000; }
            }
        }
    """))
    return conf


def test_wheelhouse_is_git_ignored() -> None:
    ignored = _run(["git", "check-ignore", "-q", WHEELHOUSE / "x.whl"], cwd=REPO)
    assert ignored.returncode == 0, "put the wheelhouse under an ignored directory"
