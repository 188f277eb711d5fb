"""Replay's input: log files read, their formats detected, their lines parsed in chunks."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from .. import flags
from ..pipeline import CHUNK_ROWS, Pipeline
from ..record import RecordBatch
from ..sources import container, detect, journald

__all__ = ["SOURCES", "ReplayError", "batches", "detect_file", "overrides",
           "parse_source_options", "read_lines"]

SOURCES = ("auto", *detect.FORMATS)
CONTAINER_FORMATS = (container.DOCKER, container.CRI, detect.JOURNALD)
_SAMPLE = 50  # lines a format is decided on


class ReplayError(Exception):
    """A usage or input problem, worded for the operator; exit code 2."""


def _open(path: Path) -> IO[bytes]:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) for every non-empty line."""
    with _open(path) as fh:
        try:
            for number, line in enumerate(fh, 1):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield number, line
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ReplayError(f"cannot read {path}: {exc}") from None


def _sample(path: Path) -> list[bytes]:
    sample = []
    for _, line in read_lines(path):
        sample.append(line)
        if len(sample) >= _SAMPLE:
            break
    return sample


def parse_source_options(values: Sequence[str]) -> tuple[str, dict[Path, str]]:
    """`--source` values → (the format for every file, {file: its own format}).

    Each value is FORMAT (all files) or FORMAT=FILE (that file; repeatable)."""
    every: str | None = None
    per_file: dict[Path, str] = {}
    accepted = ", ".join(detect.FORMATS)
    for value in values:
        fmt, eq, name = value.partition("=")
        if fmt not in SOURCES or (eq and fmt == "auto"):
            raise ReplayError(f"--source {value}: unknown format {fmt!r}; accepted formats: "
                              f"{accepted}, as FORMAT (every file; auto, the default, detects "
                              "each) or FORMAT=FILE (that file)")
        if not eq:
            if every is not None and every != fmt:
                raise ReplayError(f"--source {every} and --source {fmt}: give one format for "
                                  "every file, and FORMAT=FILE for the files that differ")
            every = fmt
            continue
        if not name:
            raise ReplayError(f"--source {value}: no file after '='; write FORMAT=FILE")
        path = Path(name)
        if per_file.get(path, fmt) != fmt:
            raise ReplayError(f"--source gives {path} two formats: {per_file[path]} and {fmt}")
        per_file[path] = fmt
    return every or "auto", per_file


def detect_file(path: Path, forced: str = "auto", given_as: str = "") -> detect.Detection:
    """The format of a log file from its first lines (or `forced`, named by `given_as`)."""
    sample = _sample(path)
    found = (detect.detect(sample) if forced == "auto"
             else detect.forced(forced, sample, given_as or f"--source {forced}"))
    if found.format is None:
        hint = (f". Name its format with --source FORMAT={path} (FORMAT: "
                f"{', '.join(detect.FORMATS)})" if found.forceable else "")
        raise ReplayError(f"{path}: {found.label}: {found.why}{hint}")
    return found


def _chunks(path: Path) -> Iterator[tuple[list[int], list[bytes]]]:
    numbers: list[int] = []
    lines: list[bytes] = []
    for number, line in read_lines(path):
        numbers.append(number)
        lines.append(line)
        if len(lines) >= CHUNK_ROWS:
            yield numbers, lines
            numbers, lines = [], []
    if lines:
        yield numbers, lines


def batches(path: Path, found: detect.Detection, pipeline: Pipeline) -> Iterator[RecordBatch]:
    """Parsed (not yet checked) batches of one file."""
    source = found.format
    assert source is not None  # detect_file raises for an undecided file
    if source == "pgaudit":
        # Multi-line entries (TAB continuations, quoted newlines): the whole file at once.
        numbered = list(read_lines(path))
        yield pipeline.parse("pgaudit", [line for _, line in numbered],
                             numbers=[number for number, _ in numbered])
        return
    if source not in CONTAINER_FORMATS:
        for numbers, lines in _chunks(path):
            yield pipeline.parse(source, lines, numbers=numbers)
        return
    if source == detect.JOURNALD:  # JSON lines or export format (binary-safe: not by line)
        with _open(path) as fh:
            try:
                data = fh.read()
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise ReplayError(f"cannot read {path}: {exc}") from None
        entries = journald.recombine(journald.entries(data))
    else:
        entries = detect.recombine(source, list(read_lines(path)))
    inner = found.inner or "app"  # an empty wrapped sample: the lines after it are read as app
    for start in range(0, len(entries), CHUNK_ROWS):
        chunk = entries[start:start + CHUNK_ROWS]
        batch = pipeline.parse(inner, [e.content for e in chunk], numbers=[e.line for e in chunk])
        batch.observed_time_unix_nano = [e.observed_time_unix_nano for e in chunk]
        for i, entry in enumerate(chunk):
            if entry.partial:
                batch.truncation_reasons.setdefault(i, []).append(flags.PARTIAL_LINE)
            if entry.malformed:
                batch.add_flag(i, flags.MALFORMED)
        yield batch


def overrides(files: list[Path], file_sources: Mapping[Path, str]) -> dict[Path, str]:
    """{file as given on the command line: its forced format}; an override must name one of
    the files (compared after resolving, so ./a.log names a.log)."""
    given = {p.resolve(): p for p in files}
    out: dict[Path, str] = {}
    for path, fmt in file_sources.items():
        if fmt not in detect.FORMATS:
            raise ReplayError(f"--source {fmt}={path}: unknown format {fmt!r}; accepted "
                              f"formats: {', '.join(detect.FORMATS)}")
        if path.resolve() not in given:
            raise ReplayError(f"--source {fmt}={path}: {path} is not one of the files to "
                              f"replay ({', '.join(map(str, files))})")
        out[given[path.resolve()]] = fmt
    return out


