"""logrotate's configuration grammar, read the way logrotate 3.x reads it (config.c, logrotate(8)).

- A line whose first non-blank character is `#` is a comment (nowhere else).
- Outside a block a directive sets a global default; a block copies the defaults in force where
  it starts (so a global after a block does not affect it) and overrides them with its own.
- A block is one or more paths/globs (shell quoting: `"a b"`, `'a'`, `\\ `), then `{`, on the
  same line or a later one; `}` ends it (or the end of the file, as logrotate lets it).
  `/a.log {}` is an empty block.
- A directive is `key`, `key value` or `key = value`; the key is the leading letters.
- `prerotate`/`postrotate`/`firstaction`/`lastaction`/`preremove` take the lines up to
  `endscript` verbatim (they are shell, never parsed as directives).
- `include FILE_OR_DIR` reads the file inline (a directory: its files in name order, skipping
  taboo extensions such as `.dpkg-old`); relative paths are taken from the including file's
  directory. Top-level directives of an included file go on affecting what follows, as in
  logrotate, which passes one set of defaults through every file it reads.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..grammar.sizes import LOGROTATE_SIZE

__all__ = ["Block", "Setting", "glob_matches", "parse_config", "parse_size"]

SCRIPTS = ("prerotate", "postrotate", "firstaction", "lastaction", "preremove")
# logrotate's default taboo list (config.c): files in an included directory ending so are skipped.
TABOO = (".rpmsave", ".rpmorig", "~", ",v", ".disabled", ".dpkg-old", ".dpkg-dist",
         ".dpkg-new", ".dpkg-bak", ".dpkg-del", ".cfsaved", ".ucf-old", ".ucf-dist", ".ucf-new",
         ".rpmnew", ".swp")
# `nofoo` switches `foo` off; these are the flags whose negation logrotate knows.
NEGATABLE = ("compress", "delaycompress", "copytruncate", "copy", "renamecopy", "olddir",
             "dateext", "sharedscripts", "create", "missingok", "mail", "shred", "createolddir",
             "allowhardlink")
FREQUENCIES = ("hourly", "daily", "weekly", "monthly", "yearly")
_DIRECTIVE = re.compile(r"([A-Za-z]+)[ \t]*(?:=[ \t]*)?(.*)")
MAX_INCLUDE_DEPTH = 16  # logrotate's MAX_NESTING


@dataclass(frozen=True)
class Setting:
    """One directive's value and where it was set (the evidence an operator needs)."""

    value: Any
    file: str
    line: int
    text: str  # the directive as written, e.g. "rotate 0"


@dataclass
class Block:
    patterns: list[str]
    file: str
    line: int
    options: dict[str, Setting] = field(default_factory=dict)  # effective: defaults + own
    scripts: dict[str, Setting] = field(default_factory=dict)

    def on(self, name: str) -> bool:
        s = self.options.get(name)
        return bool(s and s.value)


def parse_size(text: str) -> int | None:
    """`100`, `100k`, `10M`, `1G` → bytes as logrotate reads them (k/K, M, G, 1024-based:
    audit_guard.grammar.sizes.LOGROTATE_SIZE); None where logrotate says "unknown unit"."""
    return LOGROTATE_SIZE.parse(text.strip())


def glob_matches(pattern: str, path: str) -> bool:
    """glob(3) semantics for one path: `*`/`?` never cross `/`. Either side may be a glob (the
    audit log may be `postgresql-*.log`): it matches when one, read literally, fits the other."""
    return bool(_glob_regex(pattern).fullmatch(path) or _glob_regex(path).fullmatch(pattern))


def _glob_regex(glob: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in glob[i + 2:]:
            end = glob.index("]", i + 2)
            body = glob[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


class _Reader:
    def __init__(self) -> None:
        self.defaults: dict[str, Setting] = {}
        self.blocks: list[Block] = []

    def read_path(self, path: Path, depth: int = 0) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise ValueError(f"{path}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and not child.name.endswith(TABOO):
                    self.read_file(child, depth)
        else:
            self.read_file(path, depth)

    def read_file(self, path: Path, depth: int) -> None:
        text = path.read_text(encoding="utf-8", errors="replace")
        block: Block | None = None
        script: tuple[str, int, list[str]] | None = None
        pending: list[tuple[int, str]] = []  # path text waiting for its `{`
        where = str(path)
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if script is not None:
                if line.split(None, 1)[:1] == ["endscript"]:
                    name, start, body = script
                    assert block is not None
                    block.scripts[name] = Setting("\n".join(body), where, start, name)
                    script = None
                else:
                    script[2].append(line)
                continue
            if not line or line.startswith("#"):
                continue
            if pending or (block is None and not line[0].isalpha() and line[0] != "}"):
                pending.append((n, line))
                if "{" not in line:
                    continue
                block, rest = self._open(pending, where)
                pending = []
                if rest.startswith("}"):
                    self.blocks.append(block)
                    block = None
                    continue
                if not rest:
                    continue
                line = rest
            if line.startswith("}"):
                if block is None:
                    raise ValueError(f"{where}:{n}: `}}` without an open block")
                self.blocks.append(block)
                block = None
                continue
            script = self._directive(line, n, path, depth, block)
        if script is not None:
            raise ValueError(f"{where}:{script[1]}: {script[0]} without endscript")
        if pending:
            raise ValueError(f"{where}:{pending[0][0]}: log path(s) without a `{{` block")
        if block is not None:  # logrotate accepts a block the file ends in: so do we
            self.blocks.append(block)

    def _directive(self, line: str, n: int, path: Path, depth: int, block: Block | None
                   ) -> tuple[str, int, list[str]] | None:
        """One directive (line n of path); returns the script it opens (postrotate, …)."""
        where = str(path)
        m = _DIRECTIVE.match(line)
        if m is None:
            raise ValueError(f"{where}:{n}: cannot read {line!r}")
        key, value = m.group(1).lower(), m.group(2).strip()
        if key in SCRIPTS:
            if block is None:
                raise ValueError(f"{where}:{n}: {key} is only allowed inside a log block")
            return (key, n, [])
        if key == "include":
            if block is not None:
                raise ValueError(f"{where}:{n}: include inside a log block")
            target = Path(value.strip("\"'")).expanduser()
            self.read_path(target if target.is_absolute() else path.parent / target,
                           depth + 1)
        else:
            options = block.options if block is not None else self.defaults
            _apply(options, key, value, Setting(None, where, n, line))
        return None

    def _open(self, pending: list[tuple[int, str]], where: str) -> tuple[Block, str]:
        text = " ".join(t for _, t in pending)
        head, _, rest = text.partition("{")
        try:
            patterns = shlex.split(head)
        except ValueError as exc:  # unbalanced quote
            raise ValueError(f"{where}:{pending[0][0]}: bad path list {head!r}: {exc}") from None
        if not patterns:
            raise ValueError(f"{where}:{pending[0][0]}: `{{` without a log path before it")
        block = Block(patterns, where, pending[0][0], options=dict(self.defaults))
        return block, rest.strip()


def _apply(options: dict[str, Setting], key: str, value: str, at: Setting) -> None:
    def put(name: str, v: Any) -> None:
        options[name] = Setting(v, at.file, at.line, at.text)

    if key in FREQUENCIES:
        put("frequency", key)
    elif key == "size":
        put("frequency", "size")
        put("size", parse_size(value))
    elif key in ("maxsize", "minsize"):
        put(key, parse_size(value))
    elif key in ("rotate", "start", "maxage", "minage", "shredcycles"):
        try:
            put(key, int(value, 0))
        except ValueError:
            raise ValueError(f"{at.file}:{at.line}: {key} needs a number, got {value!r}") from None
    elif key.startswith("no") and key[2:] in NEGATABLE:
        put(key[2:], False)
    elif key in NEGATABLE:
        put(key, value or True)  # olddir/create/mail carry a value; the rest are flags
    elif key in ("ifempty", "notifempty"):
        put("ifempty", key == "ifempty")
    else:  # extension, addextension, su, compresscmd, dateformat, tabooext, …: kept as text
        put(key, value or True)


def parse_config(paths: list[Path]) -> list[Block]:
    """Every log block of these config files/directories, read in order like `logrotate
    PATH...` does, each with its effective options (global defaults in force + its own)."""
    reader = _Reader()
    for p in paths:
        reader.read_path(p)
    return reader.blocks
