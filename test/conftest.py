"""Shared fixtures: the ../shared data folder (skips when absent)."""
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / 'shared'


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """The ../shared folder beside the repo; skips the test when it is not there."""
    if not (SHARED_DIR / 'data').is_dir():
        pytest.skip('../shared/data is absent')
    return SHARED_DIR
