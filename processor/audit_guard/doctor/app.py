"""App (Dify) settings: is the app's own log a usable audit source?

The settings come from an env file (`--app-env`, the docker compose `.env` style) or from the
`Config.Env` of `docker inspect`; both end up as {name: (value, line)} so evidence can point at
the line when there is one.
"""

from __future__ import annotations

from pathlib import Path

from .findings import Evidence, Finding, Level

__all__ = ["EnvValues", "check_app_env", "parse_env_file", "parse_env_list"]

SUB = "app"
EnvValues = dict[str, tuple[str, int | None]]
TRUE = {"1", "true", "yes", "on"}
# The app's defaults for the settings checked here (what an unset variable means).
DEFAULTS = {"LOG_OUTPUT_FORMAT": "text", "ENABLE_REQUEST_LOGGING": "false",
            "ENABLE_OTEL": "false", "OTEL_SAMPLING_RATE": "0.1"}


def parse_env_file(path: Path) -> EnvValues:
    """KEY=VALUE lines; `#` comments, `export ` and surrounding quotes are accepted."""
    values: EnvValues = {}
    for n, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:  # inline comment, only outside quotes (docker compose rules)
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = (value, n)
    return values


def parse_env_list(env: list[str]) -> EnvValues:
    return {k: (v, None) for k, _, v in (e.partition("=") for e in env)}


def check_app_env(env: EnvValues, source: str) -> list[Finding]:
    def ev(key: str) -> Evidence:
        value, line = env.get(key, (None, None))
        shown = f"{key}={value}" if value is not None else f"{key} unset (default {DEFAULTS[key]})"
        return Evidence(source, line, shown)

    def get(key: str) -> str:
        return env.get(key, (DEFAULTS[key], None))[0].strip()

    found: list[Finding] = []
    fmt = get("LOG_OUTPUT_FORMAT")
    if fmt.lower() == "json":
        found.append(Finding("app.log_format", SUB, Level.OK, "app logs JSON",
                             ev("LOG_OUTPUT_FORMAT")))
    else:
        found.append(Finding(
            "app.log_format", SUB, Level.WARN, f"app logs in {fmt!r} format, not JSON",
            ev("LOG_OUTPUT_FORMAT"),
            "Text lines carry no identity (tenant/user) and split stack traces over many "
            "lines; the JSON format has trace_id and identity{} that join the nginx line.",
            "Set LOG_OUTPUT_FORMAT=json.",
        ))
    if get("ENABLE_REQUEST_LOGGING").lower() in TRUE:
        found.append(Finding("app.request_logging", SUB, Level.OK, "request logging on",
                             ev("ENABLE_REQUEST_LOGGING")))
    else:
        found.append(Finding(
            "app.request_logging", SUB, Level.WARN, "ENABLE_REQUEST_LOGGING is off",
            ev("ENABLE_REQUEST_LOGGING"),
            "Without it the app writes no line per request: nothing on the app side confirms "
            "that a request nginx logged reached it, or with which status.",
            "Set ENABLE_REQUEST_LOGGING=true.",
        ))
    if get("ENABLE_OTEL").lower() in TRUE:
        raw = get("OTEL_SAMPLING_RATE")
        try:
            rate = float(raw)
        except ValueError:
            rate = 0.0
        if rate < 1.0:
            found.append(Finding(
                "app.otel_sampling", SUB, Level.WARN,
                f"OpenTelemetry samples {raw} of requests", ev("OTEL_SAMPLING_RATE"),
                "The sampler is parent-based: a request whose traceparent says unsampled (flags "
                "00), or that arrives without one, is recorded only at this rate; its spans and "
                "trace ids are missing from the app side.",
                "Set OTEL_SAMPLING_RATE=1.0, and let nginx send `traceparent …-01` "
                "(otel/nginx/audit_location.conf).",
            ))
        else:
            found.append(Finding("app.otel_sampling", SUB, Level.OK, "OpenTelemetry samples all",
                                 ev("OTEL_SAMPLING_RATE")))
    return found
