"""The digest signing key: Ed25519, from a PEM file made (0600) when absent.

The key id is the first 16 hex digits of SHA-256 over the raw public key. The public key is
written next to the private key (`<key_file>.pub`, PEM) and into the public key directory as
`<key id>.pub`, which is what `audit-guard verify --public-key-dir` reads: keep every key that
ever signed there (rotation adds a file, never replaces one), and old digests stay verifiable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

__all__ = ["KeyFileError", "SigningKey", "key_id", "load_public_keys", "verify_signature"]

log = logging.getLogger(__name__)


class KeyFileError(Exception):
    """The key file cannot be read or made; the message names it and what to do."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    key_id: str

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.private.public_key())

    def sign(self, payload: bytes) -> bytes:
        return self.private.sign(payload)

    @classmethod
    def from_file(cls, key_file: Path, public_key_dir: Path | None = None) -> SigningKey:
        """Load `key_file`, or make it (0600) when absent; publish the public key."""
        if key_file.exists():
            try:
                private = load_pem_private_key(key_file.read_bytes(), password=None)
            except (OSError, ValueError, TypeError) as exc:
                raise KeyFileError(f"integrity.key_file={key_file}: not a readable unencrypted "
                                f"PEM Ed25519 private key: {exc}") from None
            if not isinstance(private, Ed25519PrivateKey):
                raise KeyFileError(f"integrity.key_file={key_file}: not an Ed25519 key "
                                f"(make one with: openssl genpkey -algorithm ed25519)")
        else:
            private = Ed25519PrivateKey.generate()
            blob = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            try:
                key_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
            except OSError as exc:
                raise KeyFileError(f"integrity.key_file={key_file}: cannot create the signing "
                                f"key: {exc}") from None
            log.warning("integrity: made a new Ed25519 digest signing key in %s (mode 0600); "
                        "back it up and keep its public key for verification", key_file)
        key = cls(private, key_id(private.public_key()))
        key.publish(key_file.with_name(key_file.name + ".pub"), public_key_dir)
        return key

    def publish(self, beside: Path, public_key_dir: Path | None) -> None:
        pem = self.public_pem
        try:
            beside.write_bytes(pem)
            if public_key_dir is not None:
                public_key_dir.mkdir(parents=True, exist_ok=True)
                (public_key_dir / f"{self.key_id}.pub").write_bytes(pem)
        except OSError as exc:
            raise KeyFileError(f"integrity: cannot write the public key to {beside} or "
                            f"integrity.public_key_dir={public_key_dir}: {exc}") from None


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id, from PEM files and directories of them (*.pub, *.pem)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        files = (sorted([*path.glob("*.pub"), *path.glob("*.pem")]) if path.is_dir()
                 else [path])
        for file in files:
            try:
                public = load_pem_public_key(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise KeyFileError(f"{file}: not a PEM public key: {exc}") from None
            if isinstance(public, Ed25519PublicKey):
                keys[key_id(public)] = public
    return keys


def verify_signature(public: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    try:
        public.verify(signature, payload)
    except InvalidSignature:
        return False
    return True
