"""The integrity part of `serve`: the chain stage handed to the pipeline, and the digest ticker.

A digest is built, handed on and committed under the pipeline lock, so it signs exactly the
committed heads: no Export is half-way through while it is made. A failed hand-off is logged
and tried again at the next tick (the window then covers both intervals); the digest at
shutdown is the last thing sent before the exporter closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..handoff import DownstreamRejected, Retryable, SpanSink
from .chain import ChainStage
from .digest import DigestWriter
from .keys import SigningKey

__all__ = ["Integrity"]

log = logging.getLogger(__name__)


class Integrity:
    def __init__(self, state_dir: Path, key: SigningKey, interval_s: float,
                 remember: int = 50_000) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.chain = ChainStage(state_dir, remember)
        self.digests = DigestWriter(key, self.chain.instance_id, state_dir)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: SpanSink | None = None
        self._lock: threading.Lock | None = None
        self._totals: Callable[[], dict[str, float]] = dict

    def start(self, sink: SpanSink, lock: threading.Lock,
              totals: Callable[[], dict[str, float]]) -> None:
        self._sink, self._lock, self._totals = sink, lock, totals
        self._thread = threading.Thread(target=self._run, name="integrity-digest", daemon=True)
        self._thread.start()
        log.info("integrity: chains %s/<source>, digests every %gs signed by key %s",
                 self.chain.instance_id, self.interval_s, self.digests.key.key_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.emit()

    def emit(self, final: bool = False, deadline_s: float = 10.0) -> bool:
        """Build, hand on and commit one digest; False (logged) when it could not be."""
        if self._sink is None or self._lock is None:
            return False
        if not self._lock.acquire(timeout=deadline_s):
            log.warning("integrity: the pipeline stayed busy; the digest waits for the next "
                        "tick")
            return False
        try:
            built = self.digests.build(self.chain.heads, self._totals(), time.time_ns(), final)
            self._sink.export(built.request, 1, time.monotonic() + deadline_s)
            self.digests.commit(built)
        except (Retryable, DownstreamRejected, OSError) as exc:
            log.warning("integrity: digest %d not handed on (%s); it is made again, over a "
                        "longer window, at the next tick", built.state.seq, exc)
            return False
        finally:
            self._lock.release()
        return True

    def stop(self) -> None:
        """The final digest (after the last Export), then no more ticks. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 15)
        self.emit(final=True)
