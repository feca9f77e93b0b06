"""One run per output folder: ``<out>/.lock`` holds the owner's pid and host.

    with RunLock(out, log=log):      # raises RunLockedError when a live run owns ``out``
        ...train...

``cellseg train`` takes the lock before it reads any data, so a second run into the same
``--out`` (with or without ``--resume``) refuses at once instead of writing its checkpoints
beside the first run's. The lock file is created with ``O_CREAT | O_EXCL`` (atomic on local file
systems) and holds ``{"pid", "host", "started", "pid_start"}`` as JSON. A lock whose pid is not
alive on this host (or now belongs to a later process: ``pid_start`` differs) is stale (a run killed with -9, a crashed machine's leftover after a reboot): it is replaced
and a note says so. A lock written on another host cannot be checked from here: it is refused,
and the message says how to remove it when that run is known to be dead. The lock is removed
when the run ends (done, stopped, or failed with an exception); only kill -9 leaves it behind.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from cellseg.errors import UserError

LOCK_NAME = ".lock"


class RunLockedError(UserError):
    """Another live run owns the output folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``; None elsewhere): tells the lock's
    owner from a later process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5), after "pid (comm)"


def _owner_alive(lock: dict[str, Any]) -> bool:
    pid = lock["pid"]
    if not _pid_alive(pid):
        return False
    started = lock.get("pid_start")
    now = _start_time(pid)
    return started is None or now is None or now == started


def read_lock(out: str | os.PathLike) -> dict[str, Any] | None:
    """The lock's content, ``{}`` when unreadable (half-written), None when there is no lock."""
    path = Path(out) / LOCK_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """Exclusive ownership of a run folder by this process (see module docstring).

    ``resume`` only changes the message (a ``--resume`` of a running run is refused too).
    """

    def __init__(self, out: str | os.PathLike, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.resume, self.log = resume, log
        self.owned = False

    def acquire(self) -> None:
        """Take the lock, replacing a stale one; raise ``RunLockedError`` when a live run has it."""
        self.out.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "pid_start": _start_time(os.getpid())}
        for _ in range(3):  # a stale lock removed by us may be taken by a racing run: retry
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing(me)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.owned = True
            return
        raise RunLockedError(f"could not take the lock of {self.out}", where=str(self.path),
                             fix="another run keeps taking it; choose another --out")

    def _handle_existing(self, me: dict[str, Any]) -> None:
        other = read_lock(self.out)
        if other is None:
            return  # removed between our open and our read: try again
        pid, host = other.get("pid"), other.get("host")
        if not other:
            # a lock being written this instant, or left empty by a kill mid-write: give a
            # writer time to finish before calling it stale
            time.sleep(0.2)
            other = read_lock(self.out)
            if other is None:
                return
            pid, host = other.get("pid"), other.get("host")
        if isinstance(pid, int) and host == me["host"] and not _owner_alive(other):
            self.log(f"note: replacing a stale lock {self.path} (pid {pid} on {host} is not "
                     f"running: killed or crashed, started {other.get('started', '?')})")
            self.path.unlink(missing_ok=True)
            return
        if not other:
            self.log(f"note: replacing an unreadable lock {self.path}")
            self.path.unlink(missing_ok=True)
            return
        action = "--resume of a running run" if self.resume else "another run into the same --out"
        if host == me["host"]:
            fix = (f"wait for pid {pid} to finish (or stop it with kill -TERM {pid}, which "
                   f"writes last.pt), or choose another --out")
        else:
            fix = (f"if that run is dead, delete {self.path}; else choose another --out")
        raise RunLockedError(f"refused: {action}; {self.out} is in use by pid {pid} on host "
                             f"{host} (since {other.get('started', '?')})",
                             where=str(self.path), fix=fix)

    def release(self) -> None:
        """Remove the lock when it is still ours."""
        if not self.owned:
            return
        self.owned = False
        other = read_lock(self.out)
        if other and other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def refresh(self) -> None:
        """Rewrite a lock that vanished with its folder (the folder was deleted mid-run)."""
        if self.owned and not self.path.exists():
            self.owned = False
            self.acquire()

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
