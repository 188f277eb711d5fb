"""Container runtime log files → the log lines the application wrote (pure, no I/O).

Two on-disk formats wrap an application's stdout/stderr:

* Docker `json-file` (`/var/lib/docker/containers/<id>/<id>-json.log`), one JSON object per
  physical line: `{"log":"…\\n","stream":"stdout|stderr","attrs":{…},"time":"<RFC3339Nano>"}`.
  Docker reads each stream into a 16 KiB buffer; a longer line is written as several records
  whose `log` lacks the trailing "\\n" (only the last piece has it), and every piece of one
  line carries the SAME `time` (moby daemon/logger/copier.go keeps the first piece's timestamp
  for the whole run, per stream). There is no piece id or ordinal in the file.
* CRI (containerd, CRI-O; `/var/log/pods/<ns>_<pod>_<uid>/<container>/<n>.log`):
  `<RFC3339Nano> <stdout|stderr> <P|F> <content>`; P = partial, F = final piece.

`recombine_docker` / `recombine_cri` turn physical lines into one `ContainerLine` per logical
line. What they guarantee, because an audit trail must show cuts instead of hiding them:

* pieces are joined per stream (stdout and stderr are copied by separate goroutines, so a stderr
  line can sit between the pieces of a stdout line);
* a run of pieces that is never completed — end of input, or (Docker) the next piece of the same
  stream has a different `time`, i.e. the writer exited mid-line and a new run began — is emitted
  with `partial=True`, never dropped or glued to the next line;
* a physical line that is not of the format is kept as its own `ContainerLine` with
  `malformed=True` (stream "", content = the raw line);
* output is ordered by the first physical line of each logical line (the order the application
  started writing them), not by when the last piece arrived.

Times are read by audit_guard.grammar.timestamps.iso8601_ns (integer ns, every digit kept).
Note: Docker cuts at a byte boundary, so a multi-byte UTF-8 character split across two pieces
was already replaced by U+FFFD in the file; that cannot be undone here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

import orjson

from ..grammar import timestamps

__all__ = [
    "CRI",
    "DOCKER",
    "ContainerLine",
    "detect_format",
    "recombine_cri",
    "recombine_docker",
]

DOCKER = "docker"
CRI = "cri"

_STREAMS = frozenset({"stdout", "stderr"})
_MALFORMED_STREAM = ""
_LINE = attrgetter("line")


@dataclass(slots=True)
class ContainerLine:
    line: int  # 1-based physical line of the first piece
    content: str  # the log text, without its trailing newline
    stream: str  # "stdout" / "stderr"; "" for a malformed line
    observed_time_unix_nano: int | None  # the runtime's `time`: when it read the bytes
    partial: bool = False  # a split line that was never completed (a truncated tail)
    attrs: dict[str, str] | None = None  # docker's optional "attrs" (log-opt labels/env)
    malformed: bool = False  # not a line of the runtime's format; content is the raw line


# --------------------------------------------------------------------------------------- time


def _observed_ns(text: str) -> int | None:
    """The runtime's `time` as an observed time: None when it is not one, or out of the range
    a span can carry (audit_guard.grammar.ranges: 1970..2262)."""
    return timestamps.iso8601_ns(text)


# ------------------------------------------------------------------------------------ detect


def detect_format(sample_lines: list[bytes]) -> str | None:
    """DOCKER, CRI or None (neither): the format most of the non-empty sample lines parse as.

    A plain JSON log (an app's own audit log) starts with "{" too; it only counts as Docker when
    the object has Docker's `log`/`stream`/`time` members.
    """
    docker = cri = 0
    for raw in sample_lines:
        text = raw.strip()
        if not text:
            continue
        if text[:1] == b"{":
            if _docker_record(text) is not None:
                docker += 1
        elif _cri_fields(text.decode("utf-8", "replace")) is not None:
            cri += 1
    if docker == 0 and cri == 0:
        return None
    return DOCKER if docker >= cri else CRI


# ------------------------------------------------------------------------------------ docker


def _docker_record(raw: bytes | str) -> tuple[str, str, str, object] | None:
    """(log, stream, time, attrs) of a json-file line, None when it is not one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if obj.__class__ is not dict:
        return None
    log = obj.get("log")
    stream = obj.get("stream")
    time = obj.get("time")
    if (log.__class__ is not str or stream.__class__ is not str or stream not in _STREAMS
            or time.__class__ is not str):
        return None
    return log, stream, time, obj.get("attrs")


def _attrs(value: object) -> dict[str, str] | None:
    if not isinstance(value, dict) or not value:
        return None
    # Docker writes string values only; anything else is kept as its JSON text, not dropped.
    return {str(k): v if isinstance(v, str) else _json_text(v) for k, v in value.items()}


def _json_text(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        return "<nested too deeply>"


def _raw_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:-1] if text.endswith("\n") else text


class _Run:
    """The pieces of one not yet completed logical line of one stream."""

    __slots__ = ("line", "time", "observed", "attrs", "pieces")

    def __init__(
        self, line: int, time: str, observed: int | None, attrs: dict[str, str] | None
    ) -> None:
        self.line = line
        self.time = time
        self.observed = observed
        self.attrs = attrs
        self.pieces: list[str] = []

    def emit(self, stream: str, partial: bool) -> ContainerLine:
        return ContainerLine(self.line, "".join(self.pieces), stream, self.observed, partial,
                             self.attrs)


def recombine_docker(lines: Iterable[tuple[int, bytes | str]]) -> list[ContainerLine]:
    """Docker json-file physical lines `(line number, raw line)` → logical lines.

    Pieces of one stream are joined while they share the run's `time`, until one ends with
    "\\n". A run cut short (end of input, or a same-stream piece with another `time`) is
    emitted with `partial=True`. Empty raw lines are skipped. A record whose `time` does not
    parse is still a line (its `observed_time_unix_nano` is None); the `log` text is what counts.
    """
    out: list[ContainerLine] = []
    pending: dict[str, _Run] = {}
    parse = _docker_record
    for number, raw in lines:
        rec = parse(raw)
        if rec is None:
            text = _raw_text(raw)
            if text.strip():
                out.append(ContainerLine(number, text, _MALFORMED_STREAM, None, malformed=True))
            continue
        log, stream, time, attrs = rec
        run = pending.get(stream)
        if run is not None and run.time != time:
            # Docker keeps one `time` for every piece of a line, so another time means the
            # writer stopped mid-line (exit, restart) and this piece starts something new.
            out.append(run.emit(stream, partial=True))
            del pending[stream]
            run = None
        if log.endswith("\n"):
            if run is None:  # the common case: a whole line in one record
                out.append(ContainerLine(number, log[:-1], stream, _observed_ns(time), False,
                                         _attrs(attrs)))
                continue
            run.pieces.append(log[:-1])
            out.append(run.emit(stream, partial=False))
            del pending[stream]
            continue
        if run is None:
            run = pending[stream] = _Run(number, time, _observed_ns(time), _attrs(attrs))
        run.pieces.append(log)
    return _finish(out, pending)


def _finish(out: list[ContainerLine], pending: dict[str, _Run]) -> list[ContainerLine]:
    for stream, run in pending.items():
        out.append(run.emit(stream, partial=True))
    # A completed run is appended after the lines that came between its pieces: put it back at
    # its first line. Timsort is linear on this nearly sorted list, so no need to track order.
    out.sort(key=_LINE)
    return out


# --------------------------------------------------------------------------------------- CRI


def _cri_fields(text: str) -> tuple[str, str, bool, str, int | None] | None:
    """(time, stream, final, content, time ns) of a CRI line, None when it is not one."""
    parts = text.split(" ", 3)
    if len(parts) < 3:
        return None
    time, stream, tag = parts[0], parts[1], parts[2]
    if stream not in _STREAMS:
        return None
    # The tag field may carry more tags after ":" (CRI spec); the first is P or F.
    tag = tag.split(":", 1)[0] if ":" in tag else tag
    if tag == "F":
        final = True
    elif tag == "P":
        final = False
    else:
        return None
    ns = timestamps.iso8601_ns(time)
    if ns is None and not timestamps.iso8601_form(time):
        return None  # a CRI line whose time is none a span can carry keeps ns None
    return time, stream, final, parts[3] if len(parts) == 4 else "", ns


def recombine_cri(lines: Iterable[tuple[int, bytes | str]]) -> list[ContainerLine]:
    """CRI (containerd / CRI-O) physical lines `(line number, raw line)` → logical lines.

    P pieces of one stream are joined until its F piece; the first piece's time is the line's
    observed time (as the collector's container parser keeps it). A P run left open at the end
    of input is emitted with `partial=True`. Empty raw lines are skipped.
    """
    out: list[ContainerLine] = []
    pending: dict[str, _Run] = {}
    for number, raw in lines:
        text = _raw_text(raw)
        fields = _cri_fields(text)
        if fields is None:
            if text.strip():
                out.append(ContainerLine(number, text, _MALFORMED_STREAM, None, malformed=True))
            continue
        time, stream, final, content, ns = fields
        run = pending.get(stream)
        if final:
            if run is None:
                out.append(ContainerLine(number, content, stream, ns))
                continue
            run.pieces.append(content)
            out.append(run.emit(stream, partial=False))
            del pending[stream]
            continue
        if run is None:
            run = pending[stream] = _Run(number, time, ns, None)
        run.pieces.append(content)
    return _finish(out, pending)
