"""logrotate checks: does rotating the audit logs lose lines before the collector read them?

The shipped collector config reads every audit log under its live name AND `<name>.1` (plain
text), telling the two apart by fingerprint. So a rotation loses nothing when the first rotated
file is `<name>.1` in the same directory, stays uncompressed until the next rotation, and the
writer moves to the new file. These checks fail on the settings that break one of those:

- `compress` without `delaycompress`: `<name>.1` becomes `.1.gz` at once; what was not read yet
  (the rename→reopen window, or the tail of a copy) is gone for a plain-text reader;
- rename rotation of an nginx log without a postrotate that reopens (`nginx -s reopen`,
  `kill -USR1`, `invoke-rc.d nginx rotate`, …) and without `copytruncate`: nginx keeps writing
  to `.1`, then `.2.gz`, which nothing reads;
- `rotate 0`: the rotated file is deleted at once (logrotate's default when no `rotate` is set);
- a first rotated name other than `<name>.1` (`olddir`, `dateext`, `extension`, `addextension`,
  `start N`): the collector never sees the rotated file;
- "faster than the collector": the rate is not in the config, so this is judged statically
  (documented choice): `hourly`, or `size`/`maxsize` below 10 MiB, warn — a collector or
  processor that is down or backed up for longer than one rotation period finds the lines two
  rotations back (`.2`, `.2.gz`), which it does not read.
- `copytruncate` warns: lines written between logrotate's copy and its truncate are lost by
  logrotate itself (its man page says so); prefer rename + reopen where the writer can reopen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .findings import Evidence, Finding, Level
from .logrotate_conf import Block, Setting, glob_matches, parse_config

__all__ = ["DEFAULT_AUDIT_LOGS", "DEFAULT_CONFIG", "AuditLog", "audit_logs_from_collector",
           "check_logrotate"]

SUB = "logrotate"
DEFAULT_CONFIG = Path("/etc/logrotate.conf")
MIN_ROTATION_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class AuditLog:
    path: str  # a path or a glob, as the collector's `include` names it
    source: str  # nginx_access | nginx_error | app | pgaudit | other

    @property
    def nginx(self) -> bool:
        return self.source.startswith("nginx")


# The shipped collector config's defaults (collector-config/audit-guard.yaml). Container logs are
# left out: Docker and the kubelet rotate those themselves (see the docker checks).
DEFAULT_AUDIT_LOGS = (
    AuditLog("/var/log/nginx/audit.json.log", "nginx_access"),
    AuditLog("/var/log/nginx/error.log", "nginx_error"),
    AuditLog("/var/log/app/audit.json.log", "app"),
    AuditLog("/var/log/postgresql/postgresql-*.log", "pgaudit"),
)
_ENV_REF = re.compile(r"\$\{env:(\w+)(?::-([^}]*))?\}")
# A postrotate that makes nginx reopen its logs: `nginx -s reopen|reload`, USR1 (or HUP: a
# reload reopens too) by kill/pkill/killall/docker kill, or the init script's rotate/reload.
_REOPEN = re.compile(
    r"nginx\b[^\n;|&]*?\s-s\s*(?:reopen|reload)"
    r"|(?:kill|pkill|killall|docker\s+kill|docker\s+compose\s+kill)\b[^\n]*"
    r"(?:-USR1|-s\s*USR1|--signal[ =]\S*USR1|-HUP|-s\s*HUP|SIGUSR1|SIGHUP|-10\b|-1\b)"
    r"|(?:invoke-rc\.d|service|/etc/init\.d/)\s*nginx\s+(?:rotate|reload|restart)"
    r"|systemctl\s+(?:reload|restart|kill\s+[^\n]*USR1)[^\n]*nginx",
    re.IGNORECASE,
)


def audit_logs_from_collector(cfg: dict[str, object]) -> list[AuditLog]:
    """The files the collector's file_log receivers read (env references resolved from this
    environment, else their defaults), without the `.1` entries and the container logs."""
    found: list[AuditLog] = []
    receivers = cfg.get("receivers")
    if not isinstance(receivers, dict):
        return found
    for cid, body in receivers.items():
        if not str(cid).startswith(("file_log", "filelog")) or not isinstance(body, dict):
            continue
        ops = body.get("operators") or []
        if any(isinstance(o, dict) and o.get("type") == "container" for o in ops):
            continue
        source = str((body.get("resource") or {}).get("audit.source") or "other")
        includes = [_resolve(str(p)) for p in body.get("include") or []]
        found.extend(AuditLog(p, source) for p in includes
                     if not (p.endswith(".1") and p[:-2] in includes))
    return found


def _resolve(text: str) -> str:
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", text)


def _ev(s: Setting | None, block: Block, value: str | None = None) -> Evidence:
    if s is None:
        return Evidence(block.file, block.line, value or " ".join(block.patterns))
    return Evidence(s.file, s.line, value or s.text)


def _check_block(block: Block, logs: list[AuditLog]) -> list[Finding]:
    names = ", ".join(a.path for a in logs)
    found = [*_compress(block, names), *_rotate_count(block, names),
             *_rotated_name(block, names), *_reopen(block, logs, names),
             *_copytruncate(block, names), *_frequency(block, names)]
    if not found:
        found.append(Finding("logrotate.rotation", SUB, Level.OK,
                             f"{names}: rotation keeps <name>.1 readable and reopens",
                             _ev(None, block)))
    return found


def _compress(block: Block, names: str) -> list[Finding]:
    """compress without delaycompress."""
    opt = block.options.get
    found: list[Finding] = []
    if block.on("compress") and not block.on("delaycompress"):
        found.append(Finding(
            "logrotate.compress", SUB, Level.FAIL,
            f"{names}: compressed at once (compress without delaycompress)",
            _ev(opt("compress"), block, "compress, no delaycompress"),
            "logrotate gzips <name>.1 right after rotating it: lines the collector had not "
            "read yet (those nginx wrote between the rename and its reopen, or the tail of a "
            "busy file) exist only inside the .gz, which the collector does not read.",
            "Add `delaycompress` to the block (keeps <name>.1 plain text until the next "
            "rotation)."))
    return found


def _rotate_count(block: Block, names: str) -> list[Finding]:
    """rotate 0, or no rotate at all."""
    opt = block.options.get
    found: list[Finding] = []
    rotate = opt("rotate")
    if rotate is None or rotate.value == 0:
        unset = rotate is None
        found.append(Finding(
            "logrotate.rotate_count", SUB, Level.WARN if unset else Level.FAIL,
            f"{names}: " + ("no `rotate` in the files read (logrotate's default is 0)" if unset
                            else "rotate 0 deletes the rotated file at once"),
            _ev(rotate, block, "rotate unset" if unset else None),
            "With 0 kept files the rotated log is removed at rotation: whatever the collector "
            "had not read from it yet, and every line written before the writer reopened, is "
            "gone." + (" (A global `rotate` in a config file not read here may apply: pass "
                       "/etc/logrotate.conf to check with it.)" if unset else ""),
            "Keep at least two: `rotate 7` (with delaycompress, .1 stays readable)."))
    return found


def _rotated_name(block: Block, names: str) -> list[Finding]:
    """A first rotated name other than <name>.1 next to the log."""
    opt = block.options.get
    found: list[Finding] = []
    moved = [block.options[k] for k in ("olddir", "dateext", "extension", "addextension")
             if block.on(k)]
    start = opt("start")
    if start is not None and start.value != 1:
        moved.append(start)
    if moved:
        found.append(Finding(
            "logrotate.rotated_name", SUB, Level.FAIL,
            f"{names}: the rotated file is not named <name>.1 next to the log",
            _ev(moved[0], block),
            "The collector reads the live file and <name>.1 in the same directory. Rotated "
            "elsewhere or under another name, the file is never read: lines written before "
            "the writer reopened (or not yet read at the copy) are lost.",
            "Remove " + ", ".join(f"`{m.text}`" for m in moved) + " (or add the rotated "
            "name to the collector's file_log `include`, never a compressed one)."))
    return found


def _reopen(block: Block, logs: list[AuditLog], names: str) -> list[Finding]:
    """Rename rotation without making the writer reopen its log."""
    renames = not (block.on("copytruncate") or block.on("copy"))
    found: list[Finding] = []
    if renames and any(a.nginx for a in logs):
        script = block.scripts.get("postrotate")
        if script is None or not _REOPEN.search(str(script.value)):
            found.append(Finding(
                "logrotate.reopen", SUB, Level.FAIL,
                f"{names}: renamed without telling nginx to reopen its logs",
                _ev(script, block, (script.text + ": " + str(script.value)[:120]) if script
                    else "no postrotate, no copytruncate"),
                "After the rename nginx keeps writing into <name>.1 (its open file) until it "
                "is told to reopen; at the next rotation that file becomes .2/.2.gz, which the "
                "collector does not read: lines are lost, and the live file stays empty.",
                "Add to the block:  sharedscripts / postrotate / "
                "  nginx -s reopen  (or: invoke-rc.d nginx rotate, kill -USR1 $(cat "
                "/run/nginx.pid)) / endscript"))
    elif renames and "postrotate" not in block.scripts:
        found.append(Finding(
            "logrotate.reopen", SUB, Level.WARN,
            f"{names}: renamed with no postrotate script",
            _ev(None, block, "no postrotate, no copytruncate"),
            "Unless the writer notices the rename by itself (e.g. Python's WatchedFileHandler), "
            "it keeps writing into <name>.1 and then .2, which the collector does not read.",
            "Add a postrotate that makes the writer reopen its log, or use copytruncate."))
    return found


def _copytruncate(block: Block, names: str) -> list[Finding]:
    """copytruncate's own loss window."""
    opt = block.options.get
    found: list[Finding] = []
    if block.on("copytruncate"):
        found.append(Finding(
            "logrotate.copytruncate", SUB, Level.WARN,
            f"{names}: copytruncate loses the lines written between copy and truncate",
            _ev(opt("copytruncate"), block),
            "logrotate copies the file, then truncates it: a line written in between is in "
            "neither file (logrotate(8) says so). The collector itself copes: it reads the "
            "unread tail from <name>.1 and the truncated file from its start.",
            "Where the writer can reopen its log (nginx can), rotate by rename with a "
            "postrotate that reopens instead."))
    return found


def _frequency(block: Block, names: str) -> list[Finding]:
    freq = block.options.get("frequency")
    small = [s for s in (block.options.get("maxsize"),
                         freq and freq.value == "size" and block.options.get("size"))
             if isinstance(s, Setting) and isinstance(s.value, int)
             and s.value < MIN_ROTATION_SIZE]
    if freq is not None and freq.value == "hourly":
        small.insert(0, freq)
    if not small:
        return []
    return [Finding(
        "logrotate.frequency", SUB, Level.WARN,
        f"{names}: rotated often ({small[0].text})", _ev(small[0], block),
        "The collector reads the live file and <name>.1 only. If it (or the processor behind "
        "it) is down or backed up for longer than one rotation period, the lines rotated twice "
        "meanwhile (.2, .2.gz) are never read.",
        "Rotate daily, or by size no smaller than 10M (`maxsize 100M`), so one period covers "
        "any outage you plan for.")]


def check_logrotate(paths: list[Path] | None, audit_logs: list[AuditLog] | None = None
                    ) -> list[Finding]:
    """Check the logrotate blocks that rotate the audit logs. `paths`: config files or
    directories read in order (None: /etc/logrotate.conf, which includes /etc/logrotate.d);
    `audit_logs`: the files the collector reads (None: the shipped config's defaults)."""
    paths = paths or [DEFAULT_CONFIG]
    logs = list(audit_logs or DEFAULT_AUDIT_LOGS)
    blocks = parse_config(paths)
    found: list[Finding] = []
    covered: set[AuditLog] = set()
    for block in blocks:
        mine = [a for a in logs if any(glob_matches(p, a.path) for p in block.patterns)]
        if mine:
            covered.update(mine)
            found.extend(_check_block(block, mine))
    for log in logs:
        if log not in covered:
            found.append(Finding(
                "logrotate.coverage", SUB, Level.WARN,
                f"{log.path}: no logrotate block in the files read rotates it",
                Evidence(", ".join(map(str, paths)), None, log.path),
                "A log that is never rotated grows until the disk is full; then the writer "
                "fails and lines are lost (unless it rotates its own files).",
                "Add a block for it (see docs/collector.md, Log rotation): daily, rotate 7, "
                "compress, delaycompress, and a postrotate that makes the writer reopen."))
    return found
