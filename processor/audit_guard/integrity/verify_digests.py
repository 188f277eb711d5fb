"""The digest half of `verify`: signatures, key ids, and each instance's digest chain."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .digest import digest_genesis
from .keys import verify_signature
from .readers import ReadSpan
from .report import Problem

__all__ = ["Digest", "Signed", "check_digests"]


@dataclass(frozen=True, slots=True)
class Signed:
    """A chain head a valid digest signed."""

    first_seq: int | None  # the first seq of the window (None: no record in it)
    last_seq: int
    head: bytes
    where: str  # "digest <instance>#<seq> (<where read>)"


@dataclass(frozen=True)
class Digest:
    where: str
    payload: bytes
    hash_attr: str
    key_id: str
    signature: str

    @classmethod
    def of(cls, span: ReadSpan) -> Digest:
        a = span.attrs
        return cls(span.where, str(a.get("audit.digest.payload", "")).encode(),
                   str(a.get("audit.digest.hash", "")), str(a.get("audit.digest.key_id", "")),
                   str(a.get("audit.digest.signature", "")))


def _problem(kind: str, detail: str, where: str) -> Problem:
    return Problem(kind, detail, where=where or None)


def _valid(d: Digest, keys: dict[str, Ed25519PublicKey], problems: list[Problem]
           ) -> dict[str, Any] | None:
    """The digest's payload when its hash, key and signature hold; else a problem."""
    public = keys.get(d.key_id)
    if public is None:
        problems.append(_problem("digest_key_unknown", f"digest signed by key {d.key_id!r}, "
                                 "which is not among the public keys given", d.where))
        return None
    try:
        signature = bytes.fromhex(d.signature)
        payload = orjson.loads(d.payload)
    except ValueError:
        problems.append(_problem("digest_forged", "digest payload or signature unreadable",
                                 d.where))
        return None
    if (sha256(d.payload).hexdigest() != d.hash_attr or payload.get("key_id") != d.key_id
            or not verify_signature(public, signature, d.payload)):
        problems.append(_problem("digest_forged", f"the signature of key {d.key_id} does not "
                                 "hold for this digest: it was altered or not made by it",
                                 d.where))
        return None
    return dict(payload)


def check_digests(digests: list[Digest], keys: dict[str, Ed25519PublicKey],
                  problems: list[Problem], from_start: bool = False
                  ) -> dict[str, list[Signed]]:
    """Valid digests' chain heads by chain id; digest problems appended to `problems`.
    `from_start`: the input holds the whole trail, so every instance's digests start at 1."""
    by_instance: dict[str, dict[int, list[tuple[Digest, dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(list))
    signed: dict[str, list[Signed]] = defaultdict(list)
    present: dict[str, set[int]] = defaultdict(set)  # refused digests are there, not missing
    for d in digests:
        payload = _valid(d, keys, problems)
        if payload is None:
            _note_present(d, present)
            continue
        instance, seq = str(payload["instance"]), int(payload["seq"])
        by_instance[instance][seq].append((d, payload))
        where = f"digest {instance}#{seq} ({d.where})"
        for chain_id, c in payload["chains"].items():
            signed[chain_id].append(Signed(c.get("first_seq"), int(c["last_seq"]),
                                           bytes.fromhex(c["head"]), where))
    for instance, by_seq in by_instance.items():
        _continuity(instance, by_seq, problems, from_start, present[instance])
    return signed


def _note_present(d: Digest, present: dict[str, set[int]]) -> None:
    try:
        payload = orjson.loads(d.payload)
        present[str(payload["instance"])].add(int(payload["seq"]))
    except (ValueError, KeyError, TypeError):
        pass


def _continuity(instance: str, by_seq: dict[int, list[tuple[Digest, dict[str, Any]]]],
                problems: list[Problem], from_start: bool, present: set[int]) -> None:
    seqs = sorted(by_seq)
    for seq in seqs:  # the same seq signed again by the same key is a retried digest
        signers = {d.key_id for d, _ in by_seq[seq]}
        if len(signers) > 1:
            for d, _ in by_seq[seq]:
                problems.append(_problem(
                    "digest_forged", f"digest {instance}#{seq} exists signed by different keys "
                    f"({', '.join(sorted(signers))}): at most one of them is genuine", d.where))
    for seq in range(1 if from_start else seqs[0], seqs[-1] + 1):
        if seq not in by_seq:
            if seq in present:  # read, but refused (its problem is reported)
                continue
            problems.append(_problem("digest_missing", f"digest {instance}#{seq} is missing "
                                     f"(between #{seq - 1} and the next one read)", ""))
            continue
        if seq == 1:
            prevs = {digest_genesis(instance).hex()}
        elif seq - 1 in by_seq:
            prevs = {sha256(d.payload).hexdigest() for d, _ in by_seq[seq - 1]}
        else:
            continue
        for d, payload in by_seq[seq]:
            if payload.get("prev") not in prevs:
                problems.append(_problem(
                    "digest_forged", f"digest {instance}#{seq} does not follow digest "
                    f"#{seq - 1} (its prev hash differs)", d.where))
