"""Rules that keep CI honest: real-data tests never skip where CELLSEG_STRICT=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_REAL_DATA_TEST = "tests/test_data_cli.py::test_convert_csv_to_coco_and_back_is_exact"


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CELLSEG_STRICT"}
    environ.update(CELLSEG_SHARED_DATA=str(tmp_path / "no-such-folder"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                           "no:cacheprovider", ONE_REAL_DATA_TEST], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_missing_real_data_skips_for_users_and_fails_in_ci(tmp_path):
    user = _pytest(tmp_path)
    assert user.returncode == 0 and "1 skipped" in user.stdout, user.stdout[-800:]
    ci = _pytest(tmp_path, CELLSEG_STRICT="1")
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-800:]  # fails in its fixture
    assert "CELLSEG_STRICT=1 forbids skipping it" in ci.stdout
