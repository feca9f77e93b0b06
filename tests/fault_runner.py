"""Run ``cellseg ARGS`` with one injected fault (used by tests/test_faults.py).

    CELLSEG_FAULT=kill:step:4 python tests/fault_runner.py train --config unet_tiny ...

CELLSEG_FAULT is ``ACTION:WHERE:N[:MATCH]``:
- WHERE ``step``: the N-th optimiser step (after backward, before the weights change);
  ``fsync``: the N-th fsync of a file whose name matches the regex MATCH (the file is first cut
  to half its size: a torn write); ``validate``: the N-th validation; ``write``: the N-th image
  added to a submission (``SubmissionWriter.add``, i.e. ``cellseg predict`` mid-way).
CELLSEG_FAULT_RANK (optional): inject only in the process of that torchrun RANK.
- ACTION ``kill``: SIGKILL this process there; ``term``: send it SIGTERM and go on (a
  preempted machine); ``enospc``: raise OSError(ENOSPC) there.

The injection lives here, in the tests, not in the kit: the kit's code runs unchanged.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from pathlib import Path


def _act(action: str) -> None:
    if action == "kill":
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    else:
        raise SystemExit(f"unknown fault action {action!r}")


def _counter(n: int):
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n
    return hit


def install(spec: str) -> None:
    """Patch the kit so that the fault ``spec`` happens (see module docstring)."""
    parts = spec.split(":")
    action, where, n = parts[0], parts[1], int(parts[2])
    match = parts[3] if len(parts) > 3 else ""
    hit = _counter(n)
    if where == "step":
        from cellseg.training import engine

        real_step = engine._optimizer_step

        def step(state, clip_norm):
            if hit():
                _act(action)
            return real_step(state, clip_norm)
        engine._optimizer_step = step
    elif where == "fsync":
        real_fsync = os.fsync

        def fsync(fd):
            try:
                name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
            except OSError:
                name = ""
            if re.fullmatch(match, name) and hit():
                size = os.fstat(fd).st_size
                os.ftruncate(fd, size // 2)
                _act(action)
            return real_fsync(fd)
        os.fsync = fsync
    elif where == "validate":
        from cellseg.training import engine

        real_eval = engine.evaluate

        def evaluate(*a, **k):
            if hit():
                _act(action)
            return real_eval(*a, **k)
        engine.evaluate = evaluate
    elif where == "write":
        from cellseg.core.submission import SubmissionWriter

        real_add = SubmissionWriter.add

        def add(self, *a, **k):
            if hit():
                _act(action)
            return real_add(self, *a, **k)
        SubmissionWriter.add = add
    else:
        raise SystemExit(f"unknown fault place {where!r}")


if __name__ == "__main__":
    spec = os.environ.get("CELLSEG_FAULT")
    rank = os.environ.get("CELLSEG_FAULT_RANK")
    if spec and (rank is None or os.environ.get("RANK", "0") == rank):
        install(spec)
    from cellseg.cli import main

    sys.exit(main(sys.argv[1:]))
