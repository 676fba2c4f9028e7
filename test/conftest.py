"""Shared fixtures and options.

../shared data (skips when absent), a running segvec3d-up, the long soak run.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ros_harness import UpClient

SHARED_DIR = Path(__file__).resolve().parents[1].parent / 'shared'


def pytest_addoption(parser: pytest.Parser) -> None:
    """--soak-seconds: the long soak run, which also writes docs/RELIABILITY.md."""
    parser.addoption('--soak-seconds', type=float, default=None,
                     help='run test_soak.py this long and write its figures into '
                          'docs/RELIABILITY.md (default: a short run that writes nothing)')


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float | None:
    """Value of the --soak-seconds option, None for the short CI run."""
    return request.config.getoption('--soak-seconds')


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    """Path of the ../shared folder beside the repo; skips the test when it is not there."""
    if not (SHARED_DIR / 'data').is_dir():
        pytest.skip('../shared/data is absent')
    return SHARED_DIR


@pytest.fixture(scope='module')
def system() -> Iterator[UpClient]:
    """segvec3d-up answering from scenes of any age, and a client recording its outputs.

    Its queries always answer (min_score 0): the tests that use it check transport, scene
    consistency and bad input on synthetic boxes, which no grounding label fits well.
    """
    # Imported here: only the real-DDS tests need rclpy and the built messages.
    from ros_harness import UpClient
    try:
        up = UpClient('-p', 'max_scene_age:=0.0', '-p', 'min_score:=0.0')
    except RuntimeError as error:
        pytest.fail(str(error))
    yield up
    _, output = up.stop()
    assert 'Traceback' not in output, output
