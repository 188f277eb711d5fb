"""`audit-guard verify`: check signed digests, digest continuity and every chain link of the
spans read back, and name each problem.

Problems (tampering, exit 1), each with the chain, seq and where the record was read:
- `record_deleted`: a seq missing between the first record read and the last one a digest
  signed (or read);
- `record_modified`: a record whose content no longer gives its hash, or whose hash is not the
  head a digest signed;
- `record_inserted`: a second record claiming a seq another record holds, an audit record
  without a chain link, one in a chain its instance's digests do not know;
- `record_reordered`: a record that is intact but sits at another seq than the one it claims;
- `digest_missing`: a gap in an instance's digest seqs (or a digest chain broken);
- `digest_forged`: a digest whose signature, hash or link to its predecessor does not hold;
- `digest_key_unknown`: a digest signed by a key not among the public keys given.
Warnings (no tampering): records after the last digest (not signed yet), synthetic finding
spans that are not chained (missing_record markers, error-log-only events).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha256
from operator import methodcaller
from struct import Struct
from sys import intern
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .encoding import CHAIN_HASH, CHAIN_ID, CHAIN_SEQ, genesis, link
from .readers import PackedIds, ReadSpan
from .report import Problem, Report
from .verify_digests import Digest, Signed, check_digests

__all__ = ["Lookup", "Problem", "Record", "Report", "verify"]

SYNTHETIC_SOURCES = frozenset({"nginx_error"})  # findings, not records: not chained
SYNTHETIC_FLAGS = frozenset({"missing_record"})


@dataclass(slots=True, eq=False)  # a record is itself: two copies of a span are two records
class Record(PackedIds):
    """One chain link read. Kept for every record until all links are checked, so packed:
    one bytes object for the two hashes and one for the two ids (~150 bytes a record less)."""

    chain: str
    seq: int
    hashes: bytes  # the chain hash it claims ‖ SHA-256 of its content (32 + 32 bytes)
    where: str
    ids: bytes  # length of the trace id ‖ trace id ‖ span id

    @property
    def hash(self) -> bytes:
        return self.hashes[:32]

    @property
    def digest(self) -> bytes:
        return self.hashes[32:]


def _problem(kind: str, detail: str, r: Record | None = None, **extra: Any) -> Problem:
    if r is None:
        return Problem(kind, detail, **extra)
    return Problem(kind, detail, r.chain, r.seq, r.where, r.trace_id, r.span_id)


# (service, chain id, seq) → the spans holding that link, wherever their time (a backend's
# attribute search: records whose event time is outside the range read).
Lookup = Callable[[str, str, int], list[ReadSpan]]
_MAX_LOOKUPS = 10_000


def verify(spans: Iterable[ReadSpan], keys: dict[str, Ed25519PublicKey],
           from_start: bool = False, lookup: Lookup | None = None) -> Report:
    """`from_start`: the spans are the whole trail (no time range), so chains and digests
    must start at seq 1. `lookup`: asked for each seq missing from the spans read before it
    is reported deleted."""
    report = Report()
    chains: dict[str, dict[int, list[Record]]] = defaultdict(dict)
    services: dict[str, str] = {}
    digests: list[Digest] = []
    synthetic = 0
    for span in spans:
        a = span.attrs
        if "audit.digest.payload" in a:
            digests.append(Digest.of(span))
            continue
        if "audit.source" not in a:
            continue  # not an audit record (a relayed application span)
        record = _record(span, report)
        if record is not None:
            by_seq = chains[record.chain]
            if record.chain not in services:
                services[record.chain] = span.service
            found = by_seq.get(record.seq)
            if found is None:
                by_seq[record.seq] = [record]
            else:
                found.append(record)
            report.records += 1
        elif (a.get("audit.source") in SYNTHETIC_SOURCES
              or SYNTHETIC_FLAGS.intersection(a.get("audit.flags") or ())):
            synthetic += 1
        elif CHAIN_SEQ not in a:
            report.problems.append(Problem(
                "record_inserted", "an audit record without a chain link (audit.chain.*): not "
                "written by an audit-guard with integrity on", where=span.where,
                trace_id=span.trace_id, span_id=span.span_id))
    report.digests = len(digests)
    signed = check_digests(digests, keys, report.problems, from_start)
    if lookup is not None:
        _look_up_gaps(chains, services, signed, lookup, report, from_start)
    for chain_id, by_seq in sorted(chains.items()):
        _check_chain(chain_id, by_seq, signed, report, from_start)
    if synthetic:
        report.warnings.append(f"{synthetic} finding span(s) (missing_record markers, "
                               "error-log events) are not chained and were not checked")
    return report


def _missing(by_seq: dict[int, list[Record]], heads: list[Signed], first: int) -> list[int]:
    top = max([max(by_seq), *(h.last_seq for h in heads)])
    start = min([first, *(h.first_seq for h in heads if h.first_seq is not None)])
    return [seq for seq in range(start, top + 1) if seq not in by_seq]


def _look_up_gaps(chains: dict[str, dict[int, list[Record]]], services: dict[str, str],
                  signed: dict[str, list[Signed]], lookup: Lookup, report: Report,
                  from_start: bool) -> None:
    budget = _MAX_LOOKUPS
    for chain_id, by_seq in chains.items():
        first = 1 if from_start else min(by_seq)
        for seq in _missing(by_seq, signed.get(chain_id, []), first)[:budget]:
            budget -= 1
            for span in lookup(services[chain_id], chain_id, seq):
                record = _record(span, report)
                if record is not None and record.chain == chain_id and record.seq == seq:
                    by_seq.setdefault(seq, []).append(record)
                    report.records += 1


def _record(span: ReadSpan, report: Report) -> Record | None:
    a = span.attrs
    chain, seq, digest = a.get(CHAIN_ID), a.get(CHAIN_SEQ), a.get(CHAIN_HASH)
    if chain is None and seq is None and digest is None:
        return None
    try:
        if not isinstance(chain, str) or not isinstance(seq, int) or seq < 1:
            raise ValueError
        hash_ = bytes.fromhex(str(digest))
        if len(hash_) != 32:
            raise ValueError
    except ValueError:
        report.problems.append(Problem(
            "record_inserted", f"malformed chain attributes (id {chain!r}, seq {seq!r}, hash "
            f"{digest!r})", where=span.where, trace_id=span.trace_id, span_id=span.span_id))
        return None
    return Record(intern(chain), seq, hash_ + span.digest, span.where, span.ids)


def _prevs(chain_id: str, by_seq: dict[int, list[Record]], seq: int) -> list[bytes] | None:
    """The hashes a record at `seq` may follow; None when its predecessor was not read."""
    if seq == 1:
        return [genesis(chain_id)]
    before = by_seq.get(seq - 1)
    return [r.hash for r in before] if before else None


def _check_chain(chain_id: str, by_seq: dict[int, list[Record]],
                 signed: dict[str, list[Signed]], report: Report, from_start: bool) -> None:
    seqs = sorted(by_seq)
    report.chains[chain_id] = {"first_seq": seqs[0], "last_seq": seqs[-1],
                               "records": sum(map(len, by_seq.values()))}
    bad = _broken_links(chain_id, by_seq, seqs)
    bad = _reordered(chain_id, by_seq, bad, report)
    for r in bad:
        if any(o is not r and o not in bad for o in by_seq[r.seq]):
            report.problems.append(_problem(
                "record_inserted", f"a second record claims seq {r.seq} of chain {chain_id}; "
                "its content does not link into the chain", r))
        else:
            report.problems.append(_problem(
                "record_modified", f"seq {r.seq} of chain {chain_id}: the record's content or "
                "hash was changed after it was exported (the link does not hold)", r))
    heads = signed.get(chain_id, [])
    _check_gaps(chain_id, seqs, heads, report, 1 if from_start else seqs[0])
    _check_heads(chain_id, by_seq, heads, {id(r) for r in bad}, report)


_SEQ_BYTES = Struct(">Q").pack
_DIGEST = methodcaller("digest")


def _broken_links(chain_id: str, by_seq: dict[int, list[Record]], seqs: list[int]
                  ) -> list[Record]:
    """The records whose link to their predecessor does not hold (a record whose predecessor
    was not read is not checked here: the gap is reported). A seq held by one record after a
    seq held by one (every seq of an intact chain) is checked in one pass of C-level maps; the
    rest, record by record against every predecessor."""
    single: list[Record] = []
    prevs: list[bytes] = []
    bad: list[Record] = []
    start = [genesis(chain_id)]
    for seq in seqs:
        records = by_seq[seq]
        before = by_seq.get(seq - 1) if seq > 1 else None
        if seq > 1 and before is None:
            continue
        if len(records) == 1 and (before is None or len(before) == 1):
            single.append(records[0])
            prevs.append(start[0] if before is None else before[0].hash)
            continue
        hashes = start if before is None else [r.hash for r in before]
        bad += [r for r in records if not any(link(p, seq, r.digest) == r.hash for p in hashes)]
    linked = map(_DIGEST, map(sha256, map(b"".join, zip(
        prevs, map(_SEQ_BYTES, [r.seq for r in single]), [r.hashes[32:] for r in single],
        strict=True))))
    bad += [r for r, h in zip(single, linked, strict=True) if h != r.hashes[:32]]
    return sorted(bad, key=lambda r: r.seq)


def _reordered(chain_id: str, by_seq: dict[int, list[Record]], bad: list[Record],
               report: Report) -> list[Record]:
    """Of the records whose link fails, those intact at another seq (reordered) and those
    whose own predecessor was the one moved (fine); returns the rest."""
    if not bad:
        return bad
    moved = [r.hash for r in bad]
    claimed = {r.seq for r in bad}
    rest = []
    for r in bad:
        found = None
        for j in sorted(claimed):
            prevs = (_prevs(chain_id, by_seq, j) or []) + moved
            if any(link(p, j, r.digest) == r.hash for p in prevs):
                found = j
                break
        if found is None:
            rest.append(r)
        elif found != r.seq:
            report.problems.append(_problem(
                "record_reordered", f"record claims seq {r.seq} of chain {chain_id} but is "
                f"intact only at seq {found}: its place in the trail was changed", r))
    return rest


def _check_gaps(chain_id: str, seqs: list[int], heads: list[Signed], report: Report,
                first: int) -> None:
    last_signed = max((h.last_seq for h in heads), default=0)
    run: list[int] = []
    for seq in _missing({s: [] for s in seqs}, heads, first):
        if run and seq != run[-1] + 1:
            _report_gap(chain_id, run, report)
            run = []
        run.append(seq)
    _report_gap(chain_id, run, report)
    if seqs[-1] > last_signed:
        report.warnings.append(f"chain {chain_id}: seq {max(last_signed + 1, seqs[0])}.."
                               f"{seqs[-1]} not signed by a digest yet")


def _report_gap(chain_id: str, run: list[int], report: Report) -> None:
    if not run:
        return
    named = ", ".join(map(str, run[:20])) + (" …" if len(run) > 20 else "")
    report.problems.append(Problem(
        "record_deleted", f"{len(run)} record(s) of chain {chain_id} missing: seq {named}",
        chain_id, run[0]))


def _check_heads(chain_id: str, by_seq: dict[int, list[Record]],
                 heads: list[Signed], reported: set[int], report: Report
                 ) -> None:
    """Every head a digest signed must be the hash of the record read at that seq."""
    for h in heads:
        seq = h.last_seq
        found = by_seq.get(seq)
        if not found or any(r.hash == h.head for r in found):
            continue  # deleted (reported as a gap) or intact
        for r in found:
            if id(r) not in reported:
                report.problems.append(_problem(
                    "record_modified", f"seq {seq} of chain {chain_id} is not the head signed "
                    f"by {h.where}", r))
