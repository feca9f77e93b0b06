"""Child processes of long commands (`cellseg cv`, `cellseg pseudo-label`): each training or
pseudo-labelling step runs as its own ``python -m cellseg ...`` with its output in a log file.

    t = run_logged(cmd, out / "train.log", threads=1, what="fold 0 kit training")
    t.wall, t.cpu     # seconds of wall time, and of CPU (user + system) the child used

A step that fails is reported as one line (a ``StepFailed``, a user-visible failure rather than a
bug of the caller): what failed, its exit code, the log's last line and where the full log is.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cellseg.errors import UserError


class StepFailed(UserError):
    """A child ``cellseg`` process exited non-zero; its log holds the details."""


def repo_root() -> Path | None:
    """The source checkout holding ``bench/`` (the plain reference lives there), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "bench" / "plain_unet.py").is_file() else None


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with ``threads`` BLAS/OpenMP threads and the source checkout
    (when there is one) first on ``PYTHONPATH``, so the child runs the same code."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("MPLBACKEND", "Agg")
    root = repo_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class Timing:
    """What a child step cost: ``wall`` seconds, and ``cpu`` seconds (user + system, all its
    threads and its own children): the budget of a CPU training, whatever else ran."""

    wall: float
    cpu: float


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_logged(cmd: list[str], log_path: Path, threads: int, what: str) -> Timing:
    """Run ``cmd`` with its stdout and stderr in ``log_path``; return what it cost (``Timing``).

    Raises ``StepFailed`` (one line: what, exit code, the log's last line, the log's path) when
    the child exits non-zero.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    with open(log_path, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=thread_env(threads))
    if rc != 0:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if len(lines) > 1 else "no output"
        raise StepFailed(f"{what} failed (exit {rc}): {last}", where=f"log {log_path}",
                         fix="read the log, fix the cause, then rerun with --resume")
    return Timing(time.perf_counter() - t0, _children_cpu() - c0)
