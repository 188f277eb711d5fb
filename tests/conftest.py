from __future__ import annotations

from collections.abc import Iterator

import pytest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline
from tests.support.otlp_doubles import RecordingDownstream


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(load_settings())


@pytest.fixture
def downstream() -> Iterator[RecordingDownstream]:
    """A recording span backend on a free loopback port (see tests/support/otlp_doubles.py)."""
    d = RecordingDownstream()
    d.server.start()
    yield d
    d.server.stop(0)
