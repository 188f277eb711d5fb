from __future__ import annotations

import pytest

from processor.config import load_settings
from processor.pipeline import Pipeline


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(load_settings())
