"""The `integrity` section of the configuration (see docs/integrity.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .config_otlp import Seconds

__all__ = ["IntegrityConfig"]


class IntegrityConfig(BaseModel):
    """Tamper evidence: every exported audit record carries its place in a hash chain
    (audit.chain.id/seq/hash, one chain per source per instance), and a digest span signed with
    Ed25519 vouches for the chain heads and the window's completeness counts every
    digest_interval_s and at shutdown. `audit-guard verify` checks them."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(
        False, description="Chain the exported records and emit signed digests. Needs "
        "integrity.state_dir.")
    state_dir: Path | None = Field(
        None, description="Where the chain heads (chain-heads.json) and the last digest "
        "(digest-state.json) are kept, so a restart continues the chains. Unset: "
        "<reconcile.state_dir>/integrity when reconcile.state_dir is set.")
    key_file: Path | None = Field(
        None, description="The Ed25519 signing key (PEM, PKCS#8, unencrypted). Made with mode "
        "0600 when absent (a warning says so); its public key is written beside it as "
        "<key_file>.pub. Unset: <state_dir>/signing-key.pem.")
    public_key_dir: Path | None = Field(
        None, description="Every public key that ever signed, as <key id>.pub: the current one "
        "is added at start. Keep the old ones after a rotation so old digests stay verifiable "
        "(audit-guard verify --public-key DIR). Unset: <state_dir>/public-keys.")
    digest_interval_s: Seconds = Field(
        60.0, description="How often a signed digest is emitted (and once at shutdown).")

    @model_validator(mode="after")
    def _paths(self) -> IntegrityConfig:
        if self.key_file is not None and self.key_file.is_dir():
            raise ValueError(f"key_file ({self.key_file}) is a directory; name a file")
        return self
