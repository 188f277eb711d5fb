"""The chain's link loop in C (audit_guard.integrity._links, built by setup.py with OpenSSL's
SHA-256) is the one the chain uses, and gives hashlib's links byte for byte: contents of every
size around SHA-256's 64-byte blocks and its padding boundary (55/56 bytes), empty and large
ones, seqs across every byte of their 8-byte encoding; with the chain attributes appended, the
spans are the Python path's (encoding.ChainAttributes) byte for byte, across every varint
length of the seq; bad arguments are errors, not crashes.

scripts/bootstrap installs gcc and libssl-dev, so a dev setup without the module is a broken
setup: the import below fails the tests rather than skipping them."""

from __future__ import annotations

import os

import pytest

from audit_guard.integrity import _links as native
from audit_guard.integrity import chain
from audit_guard.integrity.encoding import ChainAttributes, genesis
from tests.support.integrity_trail import reference_links as reference

ATTRS = ChainAttributes("inst/nginx")


def links(prev: bytes, first: int, contents: list[bytes]) -> list[bytes]:
    """The C call's links (its first result)."""
    hashes, _ = native.chain_spans(prev, first, contents, ATTRS.id_bytes, ATTRS.seq_key,
                                   ATTRS.hash_prefix)
    return hashes


def test_the_chain_uses_the_native_loop() -> None:
    assert chain._chain_spans is not chain._chain_spans_py
    assert chain._chain_spans.__globals__["_chain_spans_c"] is native.chain_spans


@pytest.mark.parametrize("first", [1, 100, 127, 128, 16_383, 16_384, 2**21 - 3, 2**35 + 5,
                                   2**56 - 2, 2**63 + 1])
def test_native_chained_spans_are_the_python_paths(first: int) -> None:
    attrs = ChainAttributes("3f9a01c2b7de/nginx")
    spans = [b"span %d " % i + os.urandom(i % 700) for i in range(300)]
    prev = genesis("3f9a01c2b7de/nginx")
    assert chain._chain_spans(attrs, prev, first, spans) == chain._chain_spans_py(
        attrs, prev, first, spans)
    hashes, chained = chain._chain_spans(attrs, prev, first, spans)
    assert chained[0] == spans[0] + attrs(first, hashes[0])
    assert chain._chain_spans(attrs, prev, first, []) == ([], [])


SIZES = [0, 1, 31, 55, 56, 63, 64, 65, 119, 120, 128, 460, 4096, 1 << 20]


@pytest.mark.parametrize("first", [1, 255, 256, 65_536, 2**32 + 1, 2**56 - 2, 2**63])
def test_native_links_are_hashlibs(first: int) -> None:
    contents = [os.urandom(size) for size in SIZES]
    prev = genesis(f"inst/{first}")
    assert links(prev, first, contents) == reference(prev, first, contents)
    assert links(prev, first, contents) == chain._links_py(prev, first, contents)


def test_a_chunk_of_spans_and_an_empty_one() -> None:
    contents = [b"span %d " % i + os.urandom(i % 700) for i in range(2000)]
    prev = os.urandom(32)
    assert links(prev, 7, contents) == reference(prev, 7, contents)
    assert links(prev, 7, []) == []


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        links(b"short", 1, [b"x"])
    with pytest.raises(TypeError):
        links(bytes(32), 1, [b"x", "not bytes"])
    with pytest.raises(TypeError):
        links(bytes(32), 1, (b"a tuple",))
    with pytest.raises(OverflowError):
        links(bytes(32), -1, [b"x"])
    with pytest.raises(OverflowError):
        links(bytes(32), 2**64 - 1, [b"x", b"y"])  # the second seq would wrap
    with pytest.raises(ValueError, match="seq_key"):
        native.chain_spans(bytes(32), 1, [b"x"], b"id", b"k" * 101, b"p")
    with pytest.raises(TypeError):
        native.chain_spans(bytes(32), 1, [None], b"id", b"k", b"p")
    assert links(bytes(32), 2**64 - 1, [b"x"]) == reference(bytes(32), 2**64 - 1, [b"x"])
