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
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from itertools import islice, repeat
from pathlib import Path
from struct import Struct

import orjson

from ..correlate.state import StateWriteError
from ..record import RecordBatch
from .encoding import ChainAttributes, genesis

__all__ = ["ChainHead", "ChainStage", "HeadStateError", "NoChain"]

HEAD_FILE = "chain-heads.json"
_SEQ = Struct(">Q").pack  # as encoding.link (inlined: the per-record loop)


class HeadStateError(StateWriteError):
    """The chain heads could not be written: the Export must not be acknowledged."""


@dataclass(slots=True)
class ChainHead:
    seq: int  # the last seq handed out (0: none yet)
    hash: bytes  # hash(seq)


class ChainStage:
    def __init__(self, state_dir: Path | None, remember: int = 50_000,
                 instance_id: str | None = None) -> None:
        self._path = state_dir / HEAD_FILE if state_dir is not None else None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
        self.heads: dict[str, ChainHead] = {}  # chain id → committed head
        self._pending: dict[str, ChainHead] = {}  # chain id → head since the last commit
        # source → trace id + span id → (seq, hash): the records chained recently, oldest
        # first; `_undo`: the keys each call added since the last commit.
        self._seen: dict[str, dict[bytes, tuple[int, bytes]]] = {}
        self._undo: list[tuple[str, list[bytes]]] = []
        self._remember = remember
        self._attrs: dict[str, ChainAttributes] = {}
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
            source, keys = self._undo.pop()
            seen = self._seen[source]
            for key in keys:
                seen.pop(key, None)

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
        for seen in self._seen.values():
            if len(seen) > self._remember:
                for key in list(islice(seen, len(seen) - self._remember)):
                    del seen[key]

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
        Column by column, as the span builder: only the links themselves are a Python loop."""
        source = batch.source
        chain_id = self.chain_id(source)
        attrs = self._attrs.get(chain_id)
        if attrs is None:
            attrs = self._attrs[chain_id] = ChainAttributes(chain_id)
        head = self.head(chain_id)
        seq, prev = head.seq, head.hash
        keys = list(map(bytes.__add__, batch.trace_id, batch.span_id))
        seen = self._seen.setdefault(source, {})
        known: dict[int, tuple[int, bytes]] = {}  # rows re-emitted with their first values
        for i in again:
            first = seen.get(keys[i])
            if first is not None:
                known[i] = first
        new_rows = [i for i in range(len(spans)) if i not in known] if known else None
        fresh = spans if new_rows is None else [spans[i] for i in new_rows]
        hashes = []
        for content in fresh:  # the one sequential part: each link needs the one before
            seq += 1
            prev = sha256(b"".join((prev, _SEQ(seq), sha256(content).digest()))).digest()
            hashes.append(prev)
        seqs = range(seq - len(hashes) + 1, seq + 1)
        suffixes = list(map(b"".join, zip(repeat(attrs.id_bytes), map(attrs.seq, seqs),
                                          repeat(attrs.hash_prefix),
                                          map(str.encode, map(bytes.hex, hashes)))))
        new_keys = keys if new_rows is None else [keys[i] for i in new_rows]
        seen.update(zip(new_keys, zip(seqs, hashes, strict=True), strict=True))
        self._undo.append((source, new_keys))
        if hashes:
            self._pending[chain_id] = ChainHead(seq, prev)
        if new_rows is None:
            return list(map(bytes.__add__, spans, suffixes))
        out = list(spans)
        for i, suffix in zip(new_rows, suffixes, strict=True):
            out[i] = spans[i] + suffix
        for i, (first_seq, first_hash) in known.items():
            out[i] = spans[i] + attrs(first_seq, first_hash)
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
