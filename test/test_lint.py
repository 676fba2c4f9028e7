"""The linters ROS packages ship (ament_flake8, ament_pep257), configured in setup.cfg."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ['segvec3d_ros', 'test', 'scripts', 'launch', 'setup.py']


def _lint(tool: str) -> subprocess.CompletedProcess:
    # From the repo root, so that both tools read its setup.cfg.
    return subprocess.run([sys.executable, '-m', tool, *PATHS], cwd=ROOT,
                          capture_output=True, text=True)


def test_flake8():
    result = _lint('flake8')
    assert result.returncode == 0, result.stdout + result.stderr


def test_pep257():
    result = _lint('pydocstyle')
    assert result.returncode == 0, result.stdout + result.stderr
