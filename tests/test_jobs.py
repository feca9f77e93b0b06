"""Child processes of `cv` / `pseudo-label`: a failed step is one line naming its log."""

from __future__ import annotations

import sys

import pytest

from cellseg.cli import user_message
from cellseg.jobs import StepFailed, run_logged, thread_env


def test_run_logged_returns_seconds_and_keeps_the_output(tmp_path):
    log = tmp_path / "a" / "train.log"
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('hello')"
    t = run_logged([sys.executable, "-c", spin], log, threads=1, what="step")
    assert t.wall >= t.cpu * 0.5 and t.cpu >= 0.3 and log.read_text().splitlines()[-1] == "hello"


def test_failed_step_is_one_user_line_with_the_log(tmp_path):
    log = tmp_path / "train.log"
    code = "import sys; print('epoch 1'); sys.exit('cellseg train: batch_size must be >= 1')"
    with pytest.raises(StepFailed) as err:
        run_logged([sys.executable, "-c", code], log, threads=1, what="fold 2 kit training")
    line = user_message(err.value)
    assert line is not None and "\n" not in line
    assert "fold 2 kit training failed (exit 1)" in line and "batch_size must be >= 1" in line
    assert str(log) in line


def test_thread_env_sets_every_thread_variable():
    env = thread_env(3)
    assert {env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")} == {"3"}
