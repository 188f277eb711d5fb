"""The hash chain stage: every exported audit record gets `audit.chain.id/seq/hash`.

One chain per source per processor instance (`<instance id>/<source>`): a source's records come
in order through one pipeline lock, so its chain never waits for another source, and a verifier
can say which stream lost a record. Several instances each have their own chains (the instance
id is made once and kept in the head file).

Delivery rules, like the duplicates stage: heads advance in a pending state that `commit` makes
durable (the head file, written and fsynced before the Export is acknowledged) and `rollback`
forgets, so a retried Export gets the same seqs and hashes. A record seen again (a resent
request after a crash between hand-off and commit's acknowledgement, a re-read) is re-emitted
with the chain values it had the first time, from a bounded memory of recent records; one
beyond that memory gets a new link (it is exported again, under the same span id).

Cost (docs/integrity.md#cost): the links and the attributes are made by one C call a chunk
(`_links.chain_spans`, setup.py: OpenSSL's SHA-256 on one reused context), ~0.55 µs a record;
the pipeline with the chain costs ~1 µs a record more than without. Where the extension was not
built, the same values come from the Python path below (~1.4 µs alone: two hashlib calls a
record, ~0.3 µs of set-up each), which is also the reference the C code is tested against.
"""

from __future__ import annotations

import logging
import os
import secrets
from binascii import hexlify
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import repeat
from pathlib import Path
from struct import Struct

import orjson

from ..correlate.state import StateWriteError
from ..record import RecordBatch
from ..span_encoding import varint
from .encoding import ChainAttributes, genesis
from .recent import RecentRecords, Run

log = logging.getLogger(__name__)

__all__ = ["ChainHead", "ChainStage", "HeadStateError", "NoChain"]

HEAD_FILE = "chain-heads.json"
# encoding.link's parts, as C functions for map: seq as 8 bytes big-endian, SHA-256, digest.
_SEQ = Struct(">Q").pack
_SHA256 = sha256
_DIGEST = type(sha256()).digest


class HeadStateError(StateWriteError):
    """The chain heads could not be written: the Export must not be acknowledged."""


@dataclass(slots=True)
class ChainHead:
    seq: int  # the last seq handed out (0: none yet)
    hash: bytes  # hash(seq)


class ChainStage:
    def __init__(self, state_dir: Path | None, remember: int = 50_000,
                 instance_id: str | None = None) -> None:
        if _chain_spans is _chain_spans_py:
            log.warning("integrity: the chain's C extension (audit_guard.integrity._links) was "
                        "not built when audit-guard was installed (no C compiler or OpenSSL "
                        "headers): chaining runs its Python loop, the same values at ~1 µs a "
                        "record more; reinstall with gcc and libssl-dev present to build it")
        self._path = state_dir / HEAD_FILE if state_dir is not None else None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.heads: dict[str, ChainHead] = {}  # chain id → committed head
        self._pending: dict[str, ChainHead] = {}  # chain id → head since the last commit
        self._chains: dict[str, _Chain] = {}  # source → its attribute bytes, recent records
        self._undo: list[_Chain] = []  # the chain each call added a run to since the commit
        self._remember = remember
        self.instance_id = self._load(instance_id)

    # -- state -------------------------------------------------------------------------------
    def _load(self, instance_id: str | None) -> str:
        if self._path is not None and self._path.exists():
            state = orjson.loads(self._path.read_bytes())
            for chain_id, (seq, digest) in state["heads"].items():
                self.heads[chain_id] = ChainHead(seq, bytes.fromhex(digest))
            return str(state["instance"])
        return instance_id or secrets.token_hex(6)

    def chain_id(self, source: str) -> str:
        return f"{self.instance_id}/{source}"

    def head(self, chain_id: str) -> ChainHead:
        """The head as the next link sees it (pending changes included)."""
        found = self._pending.get(chain_id) or self.heads.get(chain_id)
        return found if found is not None else ChainHead(0, genesis(chain_id))

    def savepoint(self) -> tuple[dict[str, ChainHead], int]:
        return dict(self._pending), len(self._undo)

    def rollback(self, savepoint: tuple[dict[str, ChainHead], int] | None = None) -> None:
        pending, undo = savepoint if savepoint is not None else ({}, 0)
        self._pending = dict(pending)
        while len(self._undo) > undo:
            self._undo.pop().recent.drop_last()

    def commit(self) -> None:
        """Make the pending heads durable (before the Export is acknowledged)."""
        if not self._pending:
            self._undo.clear()
            return
        heads = {**self.heads, **self._pending}
        self._write(heads)
        self.heads = heads
        self._pending = {}
        self._undo.clear()
        for chain in self._chains.values():
            chain.recent.trim(self._remember)

    def _write(self, heads: dict[str, ChainHead]) -> None:
        if self._path is None:
            return
        blob = orjson.dumps({"instance": self.instance_id,
                             "heads": {c: [h.seq, h.hash.hex()] for c, h in heads.items()}})
        tmp = self._path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:
            raise HeadStateError(f"cannot save the audit chain heads to {self._path}: {exc}"
                                 ) from exc

    # -- the stage ---------------------------------------------------------------------------
    def __call__(self, batch: RecordBatch, spans: list[bytes], again: Sequence[int] = ()
                 ) -> list[bytes]:
        """The batch's spans with their chain attributes appended; `again`: rows that are
        records seen before (they keep their first chain values when still remembered).

        Column by column at C level (`map`/`zip` over C functions); the one per-record Python
        loop makes the links, because each link needs the one before (see Cost above)."""
        source = batch.source
        chain = self._chains.get(source)
        if chain is None:
            chain = self._chains[source] = _Chain(self.chain_id(source))
        head = self.head(chain.id)
        seq, prev = head.seq, head.hash
        known = self._known(chain.recent, batch, again) if again else None
        if known:
            new_rows = [i for i in range(len(spans)) if i not in known]
            fresh = [spans[i] for i in new_rows]
            trace_ids = [batch.trace_id[i] for i in new_rows]
            span_ids = [batch.span_id[i] for i in new_rows]
        else:
            fresh, trace_ids, span_ids = spans, list(batch.trace_id), list(batch.span_id)
        first = seq + 1
        hashes, chained = _chain_spans(chain.attrs, prev, first, fresh)
        if hashes:
            seq += len(hashes)
            self._pending[chain.id] = ChainHead(seq, hashes[-1])
            chain.recent.add(Run(first, trace_ids, span_ids, hashes))
            self._undo.append(chain)
        if not known:
            return chained
        out = list(spans)
        for i, span in zip(new_rows, chained, strict=True):
            out[i] = span
        for i, (first_seq, first_hash) in known.items():
            out[i] = spans[i] + chain.attrs(first_seq, first_hash)
        return out

    @staticmethod
    def _known(recent: RecentRecords, batch: RecordBatch, again: Sequence[int]
               ) -> dict[int, tuple[int, bytes]]:
        """Rows of `again` still remembered → the (seq, hash) they were chained with."""
        known = {}
        for i in again:
            first = recent.find(batch.trace_id[i] + batch.span_id[i])
            if first is not None:
                known[i] = first
        return known


@dataclass(slots=True)
class _Chain:
    """What the stage keeps per chain besides its head."""

    id: str
    attrs: ChainAttributes = field(init=False)
    recent: RecentRecords = field(init=False, default_factory=RecentRecords)

    def __post_init__(self) -> None:
        self.attrs = ChainAttributes(self.id)


def _links_py(prev: bytes, first: int, contents: list[bytes]) -> list[bytes]:
    """hash(first) … hash(first + len(contents) - 1) after `prev` = hash(first - 1):
    encoding.link(prev, seq, SHA-256(content)), one per content, in order.

    The content digests and the `seq ‖ digest` tails are made by C-level maps; the links are
    a plain loop without Python function calls (a C-level feedback map, `hashes.extend(map(…,
    iter(hashes), tails))`, was measured: 4 % slower than this loop on CPython 3.11). The same
    loop in C (`_links.chain_spans`, setup.py) is what runs where it was built: 0.47 µs a
    record against 1.1 here, most of the difference hashlib's set-up per call."""
    tails = map(bytes.__add__, map(_SEQ, range(first, first + len(contents))),
                map(_DIGEST, map(_SHA256, contents)))
    hashes = []
    append = hashes.append
    for tail in tails:
        prev = _DIGEST(_SHA256(prev + tail))
        append(prev)
    return hashes


def _chain_spans_py(attrs: ChainAttributes, prev: bytes, first: int, spans: list[bytes]
                    ) -> tuple[list[bytes], list[bytes]]:
    """(the links of `spans` after `prev`, each span with its chain attributes)."""
    hashes = _links_py(prev, first, spans)
    return hashes, _with_attributes(attrs, first, spans, hashes)


try:  # the same in C, one call a chunk (setup.py; tests/unit/integrity/test_links_native.py)
    from ._links import chain_spans as _chain_spans_c

    def _chain_spans(attrs: ChainAttributes, prev: bytes, first: int, spans: list[bytes]
                     ) -> tuple[list[bytes], list[bytes]]:
        return _chain_spans_c(prev, first, spans, attrs.id_bytes, attrs.seq_key,  # type: ignore[no-any-return]
                              attrs.hash_prefix)
except ImportError:  # installed without a C compiler or OpenSSL's headers (setup.py)
    _chain_spans = _chain_spans_py


# Seq attributes of up to 128 consecutive seqs differ in one byte only, the varint's first
# (seq's low 7 bits; 0x80 set when more bytes follow, i.e. seq >= 128).
_LOW_ONLY = [bytes((j,)) for j in range(128)]
_LOW_MORE = [bytes((j | 0x80,)) for j in range(128)]


def _with_attributes(attrs: ChainAttributes, first: int, spans: list[bytes],
                     hashes: list[bytes]) -> list[bytes]:
    """Each span ‖ its chain attributes (`attrs(seq, hash)`), seqs from `first`: per run of
    seqs sharing all but the low varint byte, one b"".join a record at C level."""
    hexes = list(map(hexlify, hashes))
    out: list[bytes] = []
    done = 0
    while done < len(spans):
        seq = first + done
        base = seq & ~0x7F
        count = min(base + 0x80 - seq, len(spans) - done)
        whole = attrs.seq(base)  # the run's seq attribute, low 7 bits 0
        low_at = len(whole) - len(varint(base))
        before = attrs.id_bytes + whole[:low_at]
        after = whole[low_at + 1:] + attrs.hash_prefix
        lows = (_LOW_MORE if base else _LOW_ONLY)[seq - base:seq - base + count]
        out.extend(map(b"".join, zip(spans[done:done + count], repeat(before), lows,
                                     repeat(after), hexes[done:done + count])))
        done += count
    return out


class NoChain:
    """The chain stage when integrity is off: spans pass unchanged, nothing to commit."""

    def savepoint(self) -> None:
        return None

    def rollback(self, savepoint: object = None) -> None:
        pass

    def commit(self) -> None:
        pass

    def __call__(self, batch: RecordBatch, spans: list[bytes], again: Sequence[int] = ()
                 ) -> list[bytes]:
        return spans
