"""Loads an nginx configuration (files on disk or `nginx -T` output) into one include-resolved tree.

crossplane does the lexing and parsing; includes are resolved here rather than by crossplane so
that both sources work the same way: on disk they are globbed, in `nginx -T` output they are
matched against the `# configuration file PATH:` sections nginx printed. Every directive keeps
the file and line it came from, which is the evidence an operator needs to find it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crossplane

__all__ = ["Directive", "NginxConfigError", "load_dump", "load_file"]

_SECTION = re.compile(r"^# configuration file (.+):\s*$")


class NginxConfigError(ValueError):
    """The configuration could not be read or parsed (a usage problem, not a finding)."""


@dataclass
class Directive:
    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None

    def value(self) -> str:
        return " ".join([self.name, *self.args]).strip()


def _parse_one(path: Path) -> list[dict[str, Any]]:
    # check_ctx/check_args off: an included snippet (e.g. a location body) has no context of its
    # own, and third-party directives (vhost_traffic_status) are unknown to crossplane.
    result = crossplane.parse(
        str(path), single=True, comments=False, check_ctx=False, check_args=False,
    )
    config = result["config"][0]
    if config["errors"]:
        err = config["errors"][0]
        raise NginxConfigError(f"{path}:{err.get('line')}: {err.get('error')}")
    return list(config["parsed"])


class _Loader:
    def __init__(self, parsed: dict[str, list[dict[str, Any]]], prefix: str, on_disk: bool):
        self.parsed = parsed
        self.prefix = prefix  # relative includes are relative to the main file's directory
        self.on_disk = on_disk

    def _targets(self, pattern: str) -> list[str]:
        full = pattern if os.path.isabs(pattern) else os.path.join(self.prefix, pattern)
        if self.on_disk:
            return sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        return sorted(p for p in self.parsed if fnmatch.fnmatch(p, full))

    def _get(self, path: str) -> list[dict[str, Any]]:
        if path not in self.parsed:
            if not self.on_disk:
                raise NginxConfigError(f"include {path}: not in the nginx -T output")
            try:
                self.parsed[path] = _parse_one(Path(path))
            except OSError as exc:
                raise NginxConfigError(f"include {path}: {exc}") from exc
        return self.parsed[path]

    def build(self, raw: list[dict[str, Any]], file: str, depth: int = 0) -> list[Directive]:
        if depth > 20:
            raise NginxConfigError(f"{file}: includes nested too deep (a loop?)")
        out: list[Directive] = []
        for item in raw:
            name = item["directive"]
            if name == "#":  # comments between the string parts of a log_format
                continue
            if name == "include" and item.get("args"):
                for target in self._targets(item["args"][0]):
                    out.extend(self.build(self._get(target), target, depth + 1))
                continue
            block = item.get("block")
            out.append(Directive(
                name=name, args=list(item.get("args", [])), file=file, line=item["line"],
                block=None if block is None else self.build(block, file, depth),
            ))
        return out


def load_file(path: Path) -> list[Directive]:
    """The tree of nginx.conf at `path`, with includes resolved from disk."""
    if not path.is_file():
        raise NginxConfigError(f"{path}: no such file")
    main = str(path.resolve())
    loader = _Loader({main: _parse_one(Path(main))}, os.path.dirname(main), on_disk=True)
    return loader.build(loader.parsed[main], main)


def load_dump(path: Path) -> list[Directive]:
    """The tree of an `nginx -T` output saved in `path` (files named as nginx printed them)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise NginxConfigError(f"{path}: {exc}") from exc
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match:
            current = sections.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    if not sections:
        raise NginxConfigError(f"{path}: no '# configuration file ...:' sections (not nginx -T?)")
    parsed: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ag-doctor-") as tmp:
        for i, (name, lines) in enumerate(sections.items()):
            part = Path(tmp) / f"{i}.conf"
            part.write_text("\n".join(lines) + "\n")
            try:
                parsed[name] = _parse_one(part)
            except NginxConfigError as exc:
                raise NginxConfigError(str(exc).replace(str(part), name)) from exc
    main = next(iter(sections))
    loader = _Loader(parsed, os.path.dirname(main), on_disk=False)
    return loader.build(parsed[main], main)
