"""Collector config checks: would the pipeline lose or silently skip audit data?

Several files are merged like `otelcol --config a.yaml --config b.yaml` does (maps merged, later
values win, lists replaced). Line numbers are kept per key path so evidence points at the file
and line that set the value. `${env:...}` references are left as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..grammar.sizes import COLLECTOR_BYTE_SIZE
from .findings import Evidence, Finding, Level
from .logrotate_conf import glob_matches

__all__ = ["check_collector", "load_merged", "parse_bytes"]

SUB = "collector"
Lines = dict[tuple[str, ...], tuple[str, int]]
MIN_LOG_SIZE = 64 * 1024
DEPRECATED = {("receivers", "filelog"): "file_log", ("exporters", "otlp"): "otlp_grpc",
              ("exporters", "otlphttp"): "otlp_http",
              ("exporters", "loadbalancing"): "load_balancing"}
NETWORK_EXPORTERS = {"otlp", "otlp_grpc", "otlphttp", "otlp_http", "loadbalancing",
                     "load_balancing"}


def parse_bytes(value: Any) -> int | None:
    """A stanza ByteSize (`max_log_size: 1MiB`) as the collector reads it: a YAML number as
    is, a string by audit_guard.grammar.sizes.COLLECTOR_BYTE_SIZE; None where it refuses it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return COLLECTOR_BYTE_SIZE.parse(value) if isinstance(value, str) else None


def _convert(node: yaml.Node, file: str, path: tuple[str, ...], lines: Lines) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key, value in node.value:
            k = str(key.value)
            lines[(*path, k)] = (file, key.start_mark.line + 1)
            out[k] = _convert(value, file, (*path, k), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, file, path, lines) for v in node.value]
    return yaml.safe_load(yaml.serialize(node))  # scalar: typed as safe_load would type it


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for k, v in new.items():
        base[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k),
                                                                          dict) else v
    return base


def load_merged(paths: list[Path]) -> tuple[dict[str, Any], Lines]:
    merged: dict[str, Any] = {}
    lines: Lines = {}
    for p in paths:
        node = yaml.compose(p.read_text())
        if node is None:
            continue
        data = _convert(node, str(p), (), lines)
        if not isinstance(data, dict):
            raise ValueError(f"{p}: not a YAML mapping")
        _merge(merged, data)
    return merged, lines


def check_collector(paths: list[Path]) -> list[Finding]:
    cfg, lines = load_merged(paths)
    src = str(paths[0]) if paths else "-"

    def ev(path: tuple[str, ...], value: Any = None) -> Evidence:
        file, line = lines.get(path, lines.get(path[:2], (src, None)))
        return Evidence(file, line, None if value is None else f"{'.'.join(path)}: {value}")

    found: list[Finding] = []
    for section in ("receivers", "exporters"):
        for cid, body in (cfg.get(section) or {}).items():
            ctype = cid.split("/", 1)[0]
            new = DEPRECATED.get((section, ctype))
            if new:
                found.append(Finding(
                    "collector.deprecated_name", SUB, Level.WARN,
                    f"{section[:-1]} {cid} uses the deprecated name {ctype!r} (now {new!r})",
                    ev((section, cid), cid),
                    "file_storage names its files after the component id: renaming it later "
                    "(as the alias will require) silently drops saved read offsets and queued "
                    "data, re-reading or losing lines.",
                    f"Rename to {new} now, while its storage can be reset knowingly (or keep "
                    "the name and never switch)."))
            body = body or {}
            if section == "receivers" and ctype in ("file_log", "filelog"):
                found.extend(_file_log(cid, body, ev))
            if section == "exporters" and ctype in NETWORK_EXPORTERS:
                found.extend(_exporter(cid, body, ev))
    found.extend(_batch_before_queue(cfg, ev))
    return found


def _batch_before_queue(cfg: dict[str, Any], ev: Any) -> list[Finding]:
    """A `batch` processor in front of a persistent queue holds records only in memory after
    the receiver moved on (file_log offsets saved, OTLP request acknowledged)."""
    exporters = cfg.get("exporters") or {}
    found: list[Finding] = []
    for name, pipe in ((cfg.get("service") or {}).get("pipelines") or {}).items():
        procs = [p for p in (pipe or {}).get("processors") or []
                 if str(p).split("/", 1)[0] == "batch"]
        durable = [e for e in (pipe or {}).get("exporters") or []
                   if ((exporters.get(e) or {}).get("sending_queue") or {}).get("storage")]
        if procs and durable:
            found.append(Finding(
                "collector.batch_before_queue", SUB, Level.WARN,
                f"pipeline {name}: `{procs[0]}` holds data in memory before the persistent "
                f"queue of {durable[0]}", ev(("service", "pipelines", name), procs[0]),
                "A crash (kill -9, OOM) loses what the batch processor holds: file_log has "
                "already saved the offsets past those lines, and OTLP senders were answered.",
                "Remove the batch processor from the pipeline and batch in the exporter "
                "instead: sending_queue.batch {flush_timeout, sizer: bytes, min_size, max_size} "
                "(see collector-config/audit-guard.yaml)."))
    return found


def _file_log(cid: str, body: dict[str, Any], ev: Any) -> list[Finding]:
    base = ("receivers", cid)
    found: list[Finding] = []
    if body.get("storage"):
        found.append(Finding("collector.file_log_storage", SUB, Level.OK,
                             f"{cid} keeps its offsets", ev((*base, "storage"), body["storage"])))
    else:
        start = body.get("start_at", "end")
        found.append(Finding(
            "collector.file_log_storage", SUB, Level.FAIL if start == "end" else Level.WARN,
            f"{cid} has no storage: read offsets are lost on restart", ev(base, "no storage"),
            f"With start_at: {start}, a restarted collector "
            + ("skips every line written while it was down." if start == "end"
               else "re-reads every file from the start (duplicates)."),
            "Add `storage: file_storage` (a file_storage extension on persistent disk)."))
    size = parse_bytes(body.get("max_log_size", "1MiB"))
    if size is not None and size < MIN_LOG_SIZE:
        found.append(Finding(
            "collector.max_log_size", SUB, Level.WARN, f"{cid}: max_log_size below 64 KiB",
            ev((*base, "max_log_size"), body.get("max_log_size")),
            "Longer lines (a big JSON audit record) are cut or split into pieces that are no "
            "longer valid records.", "Set max_log_size: 1MiB (the default)."))
    include_list = [str(p) for p in body.get("include") or []]
    unrotated = [p for p in include_list if not p.endswith(".1")
                 and not any(glob_matches(q, p + ".1") for q in include_list)]
    if unrotated:
        found.append(Finding(
            "collector.rotated_file", SUB, Level.WARN,
            f"{cid} does not read the rotated name {unrotated[0]}.1",
            ev((*base, "include"), ", ".join(include_list)),
            "After logrotate renames the file the writer goes on writing into <name>.1 until "
            "it reopens, and a copytruncate leaves the unread tail in <name>.1: a reader of the "
            "live name alone loses those lines.",
            f"Add `{unrotated[0]}.1` to include (fingerprints keep it from being read twice; "
            "never a .gz name) and keep delaycompress in logrotate."))
    elif body.get("on_truncate") == "read_whole_file":
        found.append(Finding(
            "collector.on_truncate", SUB, Level.WARN,
            f"{cid}: on_truncate read_whole_file while reading <name>.1",
            ev((*base, "on_truncate"), "read_whole_file"),
            "A poll that sees logrotate's copy half-written (a known fingerprint, shorter than "
            "the saved offset) re-reads it from byte 0: the whole file is sent again, and lines "
            "were lost in the confusion (measured with a 129 MB log).",
            "Set on_truncate: ignore (the default): the copy is read on once it has grown past "
            "the offset, and the truncated file, new content, is read from its start."))
    includes = " ".join(include_list)
    ops = body.get("operators") or []
    types = {str(o.get("type")) for o in ops if isinstance(o, dict)}
    if ("/var/lib/docker/containers" in includes or "container" in types) and \
            "recombine" not in types:
        found.append(Finding(
            "collector.docker_recombine", SUB, Level.WARN,
            f"{cid} reads Docker json-file logs without a recombine operator",
            ev((*base, "include"), includes),
            "Docker splits lines over 16 KiB into pieces (only the last ends with \\n) and the "
            "container parser does not join them: one audit record arrives as broken parts.",
            "Add a recombine operator keyed on file+stream, is_last_entry: body endsWith "
            "\"\\n\" (see collector-config/audit-guard.yaml)."))
    return found


def _exporter(cid: str, body: dict[str, Any], ev: Any) -> list[Finding]:
    base = ("exporters", cid)
    found: list[Finding] = []
    retry = body.get("retry_on_failure") or {}
    if retry.get("enabled", True) is False:
        found.append(Finding(
            "collector.exporter_retry", SUB, Level.FAIL, f"{cid}: retry_on_failure disabled",
            ev((*base, "retry_on_failure", "enabled"), False),
            "One failed send (backend restarting, network blip) drops the batch for good.",
            "Set retry_on_failure.enabled: true and max_elapsed_time: 0."))
    else:
        elapsed = retry.get("max_elapsed_time", "5m (default)")
        if str(elapsed) not in ("0", "0s"):
            found.append(Finding(
                "collector.exporter_retry", SUB, Level.WARN,
                f"{cid}: gives up after max_elapsed_time {elapsed}",
                ev((*base, "retry_on_failure"), f"max_elapsed_time={elapsed}"),
                "An outage longer than that drops the data that was being retried.",
                "Set retry_on_failure.max_elapsed_time: 0 (retry until delivered)."))
    queue = body.get("sending_queue") or {}
    if queue.get("enabled", True) is not False:
        if not queue.get("storage"):
            found.append(Finding(
                "collector.queue_storage", SUB, Level.WARN, f"{cid}: in-memory sending queue",
                ev((*base, "sending_queue"), "no storage"),
                "Everything queued (read from the logs, offset already saved) is lost when the "
                "collector restarts or crashes.",
                "Set sending_queue.storage: file_storage."))
        if queue.get("block_on_overflow", False) is not True:
            found.append(Finding(
                "collector.queue_overflow", SUB, Level.WARN,
                f"{cid}: a full queue rejects new data",
                ev((*base, "sending_queue"), "block_on_overflow=false"),
                "When the backend is slow and the queue fills, new batches are refused and, "
                "after the receiver gives up, dropped.",
                "Set sending_queue.block_on_overflow: true (back-pressure instead of loss)."))
    if not found:
        found.append(Finding("collector.exporter_retry", SUB, Level.OK,
                             f"{cid}: persistent queue, retries until delivered", ev(base)))
    return found
