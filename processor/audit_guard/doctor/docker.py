"""Docker checks: does every line a container writes reach a file the collector reads?

Inputs: the daemon's daemon.json (defaults for new containers) and `docker inspect` output (what
running containers really use: their LogConfig overrides the daemon defaults).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..grammar.sizes import DOCKER_MAX_SIZE
from .app import EnvValues, check_app_env, parse_env_list
from .findings import Evidence, Finding, Level
from .secrets import redact_options

__all__ = ["check_daemon_json", "check_inspect", "parse_size"]

SUB = "docker"
# 100 MB as the daemon counts: max-size goes through go-units FromHumanSize, 1000-based.
MIN_ROTATION = 100 * 1000 * 1000


def parse_size(text: str) -> int | None:
    """Docker's max-size ("10m" = 10,000,000 bytes); None when the daemon would refuse it, or
    for unlimited (-1). The grammar: audit_guard.grammar.sizes.DOCKER_MAX_SIZE."""
    return DOCKER_MAX_SIZE.parse(text)


# A rotation must hold at least this long at the observed rate: a collector down (restart,
# upgrade, backlog) for less than that loses nothing.
MIN_ROTATION_SECONDS = 3600


def observed_rate(log_path: Path) -> float | None:
    """Bytes per second written to a container's json-file log, from the current file and its
    rotated siblings on this host (size over the span of their modification times); None when
    the files are not readable here, span too little time, or grew by nothing."""
    files = [p for p in [log_path, *log_path.parent.glob(log_path.name + ".*")] if p.is_file()]
    if not files:
        return None
    stats = [p.stat() for p in files]
    oldest = min(st.st_mtime for st in stats)
    newest = max(st.st_mtime for st in stats)
    if len(files) < 2 or newest - oldest < 60:
        return None
    # the oldest file's bytes were written before its mtime: count the span of the others
    rate = sum(st.st_size for st in stats if st.st_mtime > oldest) / (newest - oldest)
    return rate or None  # nothing written since: no rate to judge the rotation by


def _rotation_at_rate(opts: dict[str, str], size: int, files: int, rate: float, ev: Evidence,
                      who: str) -> Finding:
    held = size * files / rate
    if held >= MIN_ROTATION_SECONDS:
        return Finding("docker.log_rotation", SUB, Level.OK,
                       f"{who}: rotation holds {held / 3600:.1f} h at the observed "
                       f"{rate * 3600 / 1024**2:.0f} MiB/h", ev)
    return Finding(
        "docker.log_rotation", SUB, Level.WARN,
        f"{who}: rotation holds only {held / 60:.0f} min at the observed "
        f"{rate * 3600 / 1024**2:.0f} MiB/h ({opts['max-size']} x {files})", ev,
        "A collector that is down or behind for longer than that finds the lines rotated away: "
        "they are gone.",
        f"Keep at least an hour: max-size x max-file >= {rate * 3600 / 1024**2:.0f} MiB.")


def _log_findings(driver: str, opts: dict[str, str], src: str, who: str,
                  rate: float | None = None) -> list[Finding]:
    shown = json.dumps(redact_options(opts), sort_keys=True)  # never a token or password
    ev = Evidence(src, None, f"{who}: log-driver={driver} {shown}")
    found: list[Finding] = []
    if driver == "json-file":
        found.append(Finding("docker.log_driver", SUB, Level.OK, f"{who}: json-file", ev))
    elif driver == "local":
        found.append(Finding(
            "docker.log_driver", SUB, Level.WARN, f"{who}: log driver `local`", ev,
            "`docker logs` works, but the files are compressed protobuf: the collector's "
            "file_log/container parser cannot read them.",
            'Use "log-driver": "json-file" with max-size/max-file rotation.'))
    else:
        found.append(Finding(
            "docker.log_driver", SUB, Level.FAIL, f"{who}: log driver `{driver}`", ev,
            f"With `{driver}` nothing is written under /var/lib/docker/containers, so the "
            "collector reads nothing; journald/syslog also rate-limit and may drop bursts "
            "silently, and `none` throws every line away.",
            'Use "log-driver": "json-file" (or ship from the journal with its own checks).'))
    if opts.get("mode") == "non-blocking":
        buf = opts.get("max-buffer-size", "1m (default)")
        found.append(Finding(
            "docker.log_mode", SUB, Level.FAIL, f"{who}: mode non-blocking, buffer {buf}", ev,
            "When the ring buffer is full Docker DROPS the new log line: silently, no error, "
            "no counter. A burst of requests loses audit lines and only gaps show it.",
            'Remove "mode": "non-blocking" (the default `blocking` never drops).'))
    size = parse_size(opts.get("max-size", "")) if driver == "json-file" else None
    if size is None:
        return found
    files = int(opts.get("max-file", "1") or 1)
    if rate is not None:
        found.append(_rotation_at_rate(opts, size, files, rate, ev, who))
    elif size * files < MIN_ROTATION:
        found.append(Finding(
            "docker.log_rotation", SUB, Level.WARN,
            f"{who}: only {size * files // 1024**2} MiB of logs kept "
            f"({opts['max-size']} x {files})", ev,
            "A burst can rotate a file away before the collector has read it (or while it "
            "is down): those lines are gone.",
            'Keep >= 100 MB per container, e.g. "max-size": "50m", "max-file": "5".'))
    return found


def check_daemon_json(path: Path) -> list[Finding]:
    data = json.loads(path.read_text())
    driver = str(data.get("log-driver", "json-file"))
    opts = {k: str(v) for k, v in (data.get("log-opts") or {}).items()}
    return _log_findings(driver, opts, str(path), "daemon")


def _python_findings(c: dict[str, Any], env: EnvValues, src: str, who: str) -> list[Finding]:
    cfg = c.get("Config") or {}
    argv = [*(cfg.get("Entrypoint") or []), *(cfg.get("Cmd") or []),
            c.get("Path") or "", *(c.get("Args") or [])]
    text = " ".join([str(cfg.get("Image", "")), *map(str, argv)]).lower()
    found: list[Finding] = []
    if "python" in text or "gunicorn" in text:
        unbuffered = env.get("PYTHONUNBUFFERED", ("", None))[0] not in ("", "0")
        if not unbuffered and "-u" not in argv:
            found.append(Finding(
                "docker.python_unbuffered", SUB, Level.WARN,
                f"{who}: Python without PYTHONUNBUFFERED", Evidence(src, None, text[:200]),
                "stdout to a pipe is block-buffered: print() output sits in memory and is lost "
                "when the process is killed, and arrives late and out of order otherwise.",
                "Set PYTHONUNBUFFERED=1 in the container environment (or run python -u)."))
    if "gunicorn" in text and "--capture-output" not in text:
        found.append(Finding(
            "docker.gunicorn_capture", SUB, Level.WARN,
            f"{who}: gunicorn without --capture-output", Evidence(src, None, text[:200]),
            "Worker stdout/stderr bypasses gunicorn's logging: print()/tracebacks are not "
            "timestamped, may be buffered and interleave with other lines.",
            "Add --capture-output (with --error-logfile -)."))
    return found


def check_inspect(path: Path, with_app: bool = True) -> list[Finding]:
    data = json.loads(path.read_text())
    containers = data if isinstance(data, list) else [data]
    found: list[Finding] = []
    for c in containers:
        who = str(c.get("Name", "") or c.get("Id", "?")[:12]).lstrip("/")
        log = (c.get("HostConfig") or {}).get("LogConfig") or {}
        opts = {k: str(v) for k, v in (log.get("Config") or {}).items()}
        log_path = c.get("LogPath")
        rate = observed_rate(Path(log_path)) if log_path else None
        found.extend(_log_findings(str(log.get("Type", "json-file")), opts, str(path), who,
                                   rate))
        env = parse_env_list((c.get("Config") or {}).get("Env") or [])
        found.extend(_python_findings(c, env, str(path), who))
        # Dify's settings live in the api container's env: check them when they are there.
        if with_app and any(k in env for k in ("LOG_OUTPUT_FORMAT", "ENABLE_REQUEST_LOGGING",
                                               "ENABLE_OTEL")):
            found.extend(check_app_env(env, f"{path} ({who})"))
    return found
