#!/usr/bin/env python3
"""Writes the merge-safe collector fragments from the standalone config, the one source of truth:

- collector-config/audit-guard-fragment.yaml: every component of collector-config/audit-guard.yaml
  under a prefixed id (`file_log/nginx_access` → `file_log/audit_guard_nginx_access`,
  `file_storage` → `file_storage/audit_guard`), its own pipelines (`logs/audit_guard`, …), and
  no `service.extensions` / `service.telemetry`: loaded as one more `--config` into a user's
  collector, a list there would REPLACE the user's list (the collector merges maps key by key
  and replaces lists), and an unprefixed id (`memory_limiter`, `health_check`) would merge into
  the user's own component of that id;
- collector-config/audit-guard-fragment-legacy.yaml: the same under the component names of
  releases before the renames (`filelog`, `otlp`), without the two keys those releases do not
  know — each only where the value written is the behaviour they have anyway.

The text of the standalone file is rewritten (its comments are the documentation of every
setting), then checked against the same rewrite done on the parsed YAML: a reference the text
rewrite missed fails the generation instead of shipping.
tests/unit/deploy/test_collector_fragment.py fails
when a checked-in fragment differs from what this script writes; `--check` does the same from
the command line (exit 1 on drift).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "collector-config"
STANDALONE = "audit-guard.yaml"
PREFIX = "audit_guard"
COMPONENT_SECTIONS = ("extensions", "receivers", "processors", "exporters", "connectors")
PIPELINE_ROLES = ("receivers", "processors", "exporters")
# The user's own health_check listens on 13133 (its default): the fragment's must not collide.
HEALTH_DEFAULT = ("${env:AUDIT_GUARD_COLLECTOR_HEALTH:-127.0.0.1:13133}",
                  "${env:AUDIT_GUARD_COLLECTOR_HEALTH:-127.0.0.1:13134}")
# Header lines of the standalone file that do not apply to a fragment (it sets no telemetry).
STANDALONE_ONLY_ENV = ("AUDIT_GUARD_COLLECTOR_METRICS_HOST", "AUDIT_GUARD_COLLECTOR_METRICS_PORT")
# New component type → the deprecated alias older releases know (core 0.144.0 renamed the OTLP
# exporters, contrib 0.149.0 the file_log receiver; 0.160.0 still accepts every alias).
LEGACY_TYPES = {"file_log": "filelog", "otlp_grpc": "otlp", "otlp_http": "otlphttp",
                "load_balancing": "loadbalancing"}
# file_log keys older releases refuse, with the value that is their fixed behaviour: dropped
# only when the standalone file sets exactly that value (anything else would change behaviour).
LEGACY_DROPPED = {"max_log_size_behavior": ("split", "0.149.0"),
                  "on_truncate": ("ignore", "0.150.0")}
NOTE_END = "(no such key there)"


def prefixed(component_id: str) -> str:
    """`file_log/nginx_access` → `file_log/audit_guard_nginx_access`; `file_storage` and
    `logs/audit` → `file_storage/audit_guard`, `logs/audit_guard`."""
    kind, _, name = component_id.partition("/")
    return f"{kind}/{PREFIX}" if name in ("", "audit") else f"{kind}/{PREFIX}_{name}"


def legacy_name(component_id: str) -> str:
    kind, slash, name = component_id.partition("/")
    return LEGACY_TYPES.get(kind, kind) + slash + name


@dataclass(frozen=True)
class Variant:
    """One fragment file: how ids are renamed and what the file says about itself."""

    filename: str
    rename: Callable[[str], str]
    intro: str
    dropped: Mapping[str, tuple[str, str]] = field(default_factory=dict)


# ------------------------------------------------------------------------------- the rewrite


def id_map(config: Mapping[str, Any], rename: Callable[[str], str]) -> dict[str, str]:
    """Every component id and pipeline id of `config` → its id in the fragment."""
    ids = [cid for section in COMPONENT_SECTIONS for cid in (config.get(section) or {})]
    ids += list(config["service"]["pipelines"])
    return {cid: rename(cid) for cid in ids}


def rewrite_data(config: Mapping[str, Any], ids: Mapping[str, str],
                 dropped: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The fragment as data: what the rewritten text must parse to."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()
                    if not (k in dropped and v == dropped[k][0])}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return ids.get(node, node) if isinstance(node, str) else node

    out: dict[str, Any] = {}
    for section in COMPONENT_SECTIONS:
        if config.get(section):
            out[section] = {ids[cid]: walk(body) for cid, body in config[section].items()}
    health = [cid for cid in out.get("extensions", {}) if cid.startswith("health_check")]
    for cid in health:
        out["extensions"][cid]["endpoint"] = HEALTH_DEFAULT[1]
    out["service"] = {"pipelines": {ids[p]: walk(body)
                                    for p, body in config["service"]["pipelines"].items()}}
    return out


def _rename_text(text: str, ids: Mapping[str, str]) -> str:
    """Named ids (`type/name`) everywhere, comments included; a bare type (`file_storage`) only
    where it is an id — a key of its section or a value — since in prose it names the type."""
    for old in sorted(ids, key=len, reverse=True):
        new = ids[old]
        if "/" in old:
            text = re.sub(rf"(?<![\w/.-]){re.escape(old)}(?![\w/-])", new, text)
        else:
            text = re.sub(rf"(?m)^(  ){re.escape(old)}:", rf"\g<1>{new}:", text)
            text = re.sub(rf"(?m)^(\s+[\w.]+:\s+){re.escape(old)}(\s*(#.*)?)$",
                          rf"\g<1>{new}\g<2>", text)
    return text


def _wrap_comments(text: str, width: int = 100) -> str:
    """Split a comment line the renames made longer than `width` (ids grew by `audit_guard_`)."""
    out = []
    for line in text.split("\n"):
        match = re.match(r"^(\s*# )", line)
        while match and len(line) > width and " " in line[len(match.group(1)):width]:
            cut = line.rindex(" ", len(match.group(1)), width)
            out.append(line[:cut])
            line = match.group(1) + line[cut + 1:]
        out.append(line)
    return "\n".join(out)


def _drop_keys(text: str, dropped: Mapping[str, tuple[str, str]]) -> str:
    """Replace each dropped `key: value` line, and the comment block right above it (which
    explains that key), by one comment saying why it is missing."""
    lines = text.split("\n")
    out: list[str] = []
    for line in lines:
        match = re.match(r"^(\s+)([\w.]+):\s+(\S+)", line)
        if match and match.group(2) in dropped and match.group(3) == dropped[match.group(2)][0]:
            indent, key, value = match.groups()
            while out and out[-1].startswith(indent + "#") and not out[-1].endswith(NOTE_END):
                out.pop()
            since = dropped[key][1]
            out.append(f"{indent}# {key}: {value} is the fixed behaviour before {since} {NOTE_END}")
            continue
        out.append(line)
    return "\n".join(out)


def _split_standalone(text: str) -> tuple[list[str], dict[str, str]]:
    """The header comment lines, and each top-level section's text (its key line included)."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if re.match(r"^\w+:", line))
    sections: dict[str, str] = {}
    current: list[str] = []
    for line in lines[start:]:
        if re.match(r"^\w+:", line) and current:
            sections[current[0].split(":")[0]] = "\n".join(current)
            current = []
        current.append(line)
    sections[current[0].split(":")[0]] = "\n".join(current)
    return lines[:start], sections


def _flow_list(key: str, items: list[str], indent: str) -> list[str]:
    """`key: [a, b, …]` wrapped under 100 columns, continuation aligned after the bracket."""
    lines, line = [], f"{indent}{key}: ["
    pad = " " * len(line)
    for i, item in enumerate(items):
        piece = item + (", " if i < len(items) - 1 else "]")
        if len(line) + len(piece.rstrip()) > 100 and not line.endswith("["):
            lines.append(line.rstrip())
            line = pad
        line += piece
    return [*lines, line]


def _service_text(pipelines: Mapping[str, Any]) -> str:
    lines = [
        "service:",
        "  # No `extensions:` and no `telemetry:` here, on purpose: both hold lists, and a list",
        "  # in a later --config file REPLACES the earlier one (lists are not appended), so they",
        "  # would silently drop your own extensions and metric readers. Add this file's",
        "  # extensions to YOUR `service.extensions` list instead (see the top of this file).",
        "  pipelines:",
    ]
    for pid, body in pipelines.items():
        lines.append(f"    {pid}:")
        for role in PIPELINE_ROLES:
            if role in body:
                lines += _flow_list(role, body[role], "      ")
    return "\n".join(lines) + "\n"


def _header_line(header: list[str], prefix: str, after: int = -1) -> int:
    """Index of the first header line after `after` starting with `prefix`."""
    for i, line in enumerate(header):
        if i > after and line.startswith(prefix):
            return i
    raise ValueError(f"{STANDALONE}: its header has no line starting with {prefix!r}, which "
                     "scripts/collector_fragment.py copies from (update the generator)")


def _header_block(header: list[str], first: str, last: str) -> list[str]:
    """The standalone header's lines from the one starting with `first` up to (without) the
    one starting with `last` ("" = to the end), trailing empty comment lines dropped."""
    start = _header_line(header, first)
    end = _header_line(header, last, after=start) if last else len(header)
    block = header[start:end]
    while block and block[-1].strip() in ("", "#"):
        block.pop()
    return block


def _keep_columns(before: str, after: str) -> str:
    """A table row a rename made longer: take the growth out of the next run of spaces."""
    grow = len(after) - len(before)
    first = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), 0)
    gap = re.compile(r"  +").search(after, first) if grow > 0 else None
    if gap is None:
        return after
    cut = min(grow, len(gap.group()) - 1)
    return after[:gap.start()] + after[gap.start() + cut:]


def header_text(header: list[str], variant: Variant, ids: Mapping[str, str]) -> str:
    """The fragment's header: its own intro, then the standalone header's environment table
    (without the telemetry variables, health on its own port) and loss counters."""
    env = [_keep_columns(line, _rename_text(line, ids)).replace("127.0.0.1:13133",
                                                                 "127.0.0.1:13134")
           for line in _header_block(header, "#   NGINX_ACCESS_LOG", "# Check:")
           if not any(name in line for name in STANDALONE_ONLY_ENV)]
    losses = [*_header_block(header, "# Loss counters", ""),
              "#   (your collector's own internal metrics: named as your service.telemetry says)"]
    gate_start = _header_line(header, "#   The feature gate")
    gate = list(takewhile(lambda line: line.startswith("#   "), header[gate_start:]))
    intro = variant.intro.strip("\n")
    for key, value in {"storage": ids["file_storage"], "health": ids["health_check"],
                       "standalone": STANDALONE, "fragment": variant.filename}.items():
        intro = intro.replace("{" + key + "}", value)
    text = [*intro.split("\n"), *gate, "#",
            "# Environment (every value has a default: `${env:NAME:-default}`):", *env, "#",
            *losses]
    return "\n".join(text) + "\n"


def render(variant: Variant, standalone_text: str) -> str:
    """The fragment file for `variant`, checked against the rewrite of the parsed YAML."""
    config = yaml.safe_load(standalone_text)
    ids = id_map(config, variant.rename)
    header, sections = _split_standalone(standalone_text)
    unknown = set(sections) - {*COMPONENT_SECTIONS, "service"}
    if unknown:
        raise ValueError(f"{STANDALONE}: top-level keys the generator does not know: {unknown}")
    body = [_rename_text(sections[s], ids) for s in COMPONENT_SECTIONS if s in sections]
    body = [_wrap_comments(_drop_keys(text, variant.dropped)) for text in body]
    text = "\n".join([header_text(header, variant, ids), *body,
                      _service_text(rewrite_data(config, ids, {})["service"]["pipelines"])])
    text = text.replace(HEALTH_DEFAULT[0], HEALTH_DEFAULT[1])
    expected = rewrite_data(config, ids, variant.dropped)
    if yaml.safe_load(text) != expected:
        raise ValueError(f"{variant.filename}: the text rewrite of {STANDALONE} does not parse to "
                         "the rewritten data (an id referenced in a way _rename_text misses?)")
    return text


# ------------------------------------------------------------------------------- the variants

FRAGMENT_INTRO = """
# audit-guard's collector pipeline as a MERGE-SAFE FRAGMENT, for a collector you already run.
# GENERATED from {standalone} by scripts/collector_fragment.py: do not edit by hand, edit
# {standalone} and run `.venv/bin/python scripts/collector_fragment.py`.
#
# The receivers, processors, exporters and extensions of {standalone} (the standalone file, for
# running audit-guard's collector on its own), each under an id prefixed with `audit_guard`, in
# pipelines of their own. It sets no `service.extensions` and no `service.telemetry`: the
# collector merges --config files map by map but REPLACES lists, so a list here would silently
# drop yours. Your pipelines, components and telemetry stay exactly as they are
# (tests/unit/deploy/test_collector_fragment.py compares the collector's effective config with and
# without).
#
# Releases: otelcol-contrib 0.150.0 and later (run with 0.151.0 and 0.160.0). `file_log` is the
# receiver's name from contrib 0.149.0, `otlp_grpc` the exporter's from 0.144.0, and
# `on_truncate` exists from 0.150.0 (0.149.0 refuses this file for it). 0.149.0 and older:
# audit-guard-fragment-legacy.yaml.
#
# 1. Add the extensions to YOUR `service.extensions` list, in your own file (a list cannot be
#    extended from another file):
#    service:
#      extensions: [health_check, file_storage, {storage}, {health}]
#    (yours first, unchanged). {storage} is required: it holds the read offsets and
#    both persistent queues; left out, `validate` still passes but the collector refuses to
#    start ("no storage client extension found"), it never falls back to memory.
#    {health} is optional (your own health_check reports on the same collector);
#    it listens on 127.0.0.1:13134, beside the 13133 of health_check's default.
# 2. Check the merge, then run with the feature gate (command line only; it applies to every
#    file_log receiver, yours too: a line reaches the pipeline before its offset is saved):
#      otelcol-contrib validate --config your-config.yaml --config {fragment}
#      otelcol-contrib --config your-config.yaml --config {fragment} \\
#        --feature-gates=stanza.synchronousLogEmitter
"""

LEGACY_INTRO = """
# audit-guard's MERGE-SAFE collector FRAGMENT for otelcol-contrib 0.149.0 and older (run with
# 0.148.0 and 0.149.0, validated with 0.160.0 too). GENERATED from {standalone} by
# scripts/collector_fragment.py: do not edit by hand, edit {standalone} and run
# `.venv/bin/python scripts/collector_fragment.py`.
#
# audit-guard-fragment.yaml under the old component names (`filelog`, `otlp`), without
# `max_log_size_behavior` (0.149.0) and `on_truncate` (0.150.0): the values the fragment sets
# (split, ignore) are what older releases always do. From 0.150.0 on use
# audit-guard-fragment.yaml: these names are deprecated aliases from 0.144.0 (otlp) and 0.149.0
# (filelog) on, a warning at each start.
# Switching to it keeps the read offsets (file_log names its storage `receiver_filelog_<name>`
# under either name) but NOT what waits in the exporters' persistent queues (their storage is
# named after the type: `exporter_otlp_…` vs `exporter_otlp_grpc_…`): switch when
# otelcol_exporter_queue_size is 0.
#
# It sets no `service.extensions` and no `service.telemetry` (a list there would replace yours).
# 1. Add the extensions to YOUR `service.extensions` list, in your own file:
#    service:
#      extensions: [health_check, file_storage, {storage}, {health}]
#    (yours first, unchanged). {storage} is required (offsets, persistent queues);
#    {health} is optional and listens on 127.0.0.1:13134.
# 2. Check the merge, then run with the feature gate (command line only):
#      otelcol-contrib validate --config your-config.yaml --config {fragment}
#      otelcol-contrib --config your-config.yaml --config {fragment} \\
#        --feature-gates=stanza.synchronousLogEmitter
"""

VARIANTS = (
    Variant("audit-guard-fragment.yaml", prefixed, FRAGMENT_INTRO),
    Variant("audit-guard-fragment-legacy.yaml", lambda cid: legacy_name(prefixed(cid)),
            LEGACY_INTRO, LEGACY_DROPPED),
)


SECURE = "audit-guard-secure.yaml"
SECURE_FRAGMENT = "audit-guard-fragment-secure.yaml"
SECURE_INTRO = """
# The secure variant of audit-guard-fragment.yaml: mutual TLS and a bearer token on both hops
# that carry audit records (otlp_grpc/audit_guard_processor, otlp/audit_guard_egress), for a
# collector you already run.
# GENERATED from {secure} by scripts/collector_fragment.py: do not edit by hand,
# edit {secure} and run `.venv/bin/python scripts/collector_fragment.py`.
#
# It sets no `service.extensions` (a list there would replace yours).
# 1. Add the extensions to YOUR `service.extensions` list, in your own file:
#    service:
#      extensions: [health_check, file_storage, file_storage/audit_guard,
#                   bearertokenauth/audit_guard_processor, bearertokenauth/audit_guard_egress]
#    (yours first, unchanged; both tokens are required: a receiver or exporter naming an
#    authenticator that is not running refuses to start).
# 2. Merge it after the fragment, check, run (the processor's side: docs/hardening.md):
#      otelcol-contrib validate --config your-config.yaml --config audit-guard-fragment.yaml \\
#        --config {fragment}
#      otelcol-contrib --config your-config.yaml --config audit-guard-fragment.yaml \\
#        --config {fragment} --feature-gates=stanza.synchronousLogEmitter
"""


def render_secure(standalone_text: str, secure_text: str) -> str:
    """The secure overlay under the fragment's ids, without its `service` section; checked
    against the rewrite of the parsed YAML, as the fragments are."""
    secure = yaml.safe_load(secure_text)
    ids = id_map(yaml.safe_load(standalone_text), prefixed)
    ids |= {cid: prefixed(cid) for section in COMPONENT_SECTIONS
            for cid in (secure.get(section) or {})}
    header, sections = _split_standalone(secure_text)
    env = [_keep_columns(line, _rename_text(line, ids))
           for line in _header_block(header, "# Environment", "")]
    intro = SECURE_INTRO.strip("\n").replace("{secure}", SECURE).replace(
        "{fragment}", SECURE_FRAGMENT)
    body = [_wrap_comments(_rename_text(sections[s], ids))
            for s in COMPONENT_SECTIONS if s in sections]
    text = "\n".join([intro, "#", *env, "", *body]).rstrip("\n") + "\n"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {ids.get(k, k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return ids.get(node, node) if isinstance(node, str) else node

    expected = walk({k: v for k, v in secure.items() if k != "service"})
    if yaml.safe_load(text) != expected:
        raise ValueError(f"{SECURE_FRAGMENT}: the text rewrite of {SECURE} does not parse to "
                         "the rewritten data (an id referenced in a way _rename_text misses?)")
    return text


def fragments(config_dir: Path | None = None) -> dict[str, str]:
    """File name → the text this script writes for it."""
    directory = config_dir or CONFIG_DIR
    standalone = (directory / STANDALONE).read_text(encoding="utf-8")
    out = {v.filename: render(v, standalone) for v in VARIANTS}
    secure = (directory / SECURE).read_text(encoding="utf-8")
    out[SECURE_FRAGMENT] = render_secure(standalone, secure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a checked-in fragment is out of date")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = []
    for name, text in fragments(args.config_dir).items():
        path = args.config_dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(args.config_dir.parent)}")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run scripts/collector_fragment.py)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
