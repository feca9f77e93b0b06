"""Small I/O helpers shared by every module: atomic writes and image reading.

Outputs are written to a temporary file in the destination folder and renamed into place, so a
crash never leaves a half-written ``submission.csv``, checkpoint or JSON behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from cellseg.errors import InputError, UserError


# errno values that mean "this output cannot be written here", a user's problem to fix
_WRITE_ERRORS = {errno.ENOSPC: ("no space left on device", "free space or choose another folder"),
                 errno.EDQUOT: ("disk quota exceeded", "free space or choose another folder"),
                 errno.EROFS: ("the file system is read-only", "choose a writable folder"),
                 errno.EACCES: ("permission denied", "check the folder's permissions or choose "
                                                     "another folder"),
                 errno.EPERM: ("permission denied", "check the folder's permissions or choose "
                                                    "another folder")}


class OutputError(UserError, OSError):
    """An output could not be written (disk full, read-only or vanished folder); the previous
    file at that path, if any, is untouched."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    On any failure (an exception, a full disk) the temporary file is removed and ``path`` keeps
    its previous content. A full disk, a read-only or unwritable folder raise ``OutputError`` (a
    ``UserError``: one line naming the file). Only a SIGKILL can leave a ``.<name>.*.tmp`` file;
    nothing reads those (``cellseg train`` deletes them from its folder at start).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(exc, path) from exc
    os.close(fd)
    # mkstemp creates 0600 files; give the output the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _output_error(exc, path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _output_error(exc: OSError, path: Path) -> OSError:
    """``exc`` as an ``OutputError`` naming ``path`` when it is a write problem, else unchanged."""
    if isinstance(exc, UserError) or exc.errno not in _WRITE_ERRORS:
        return exc
    what, fix = _WRITE_ERRORS[exc.errno]
    err = OutputError(f"cannot write {path.name}: {what}", where=str(path.parent),
                      fix=f"{fix}; the previous {path.name}, if any, is kept")
    err.errno = exc.errno
    return err


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing that only replaces ``path`` once the block finishes cleanly."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit image (PNG or TIFF) as an (H, W) uint8 array.

    Competition PNGs come back from OpenCV as 3 equal channels; LIVECell TIFFs are 1 channel.
    Raises ``ValueError`` naming the file when it cannot be read.
    """
    import cv2  # lazy: OpenCV import costs ~0.1 s

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError("cannot read image (missing, empty or not an image file)",
                         where=str(path), fix="replace or remove the file")
    if img.ndim == 3:
        img = img[..., 0] if img.shape[2] >= 1 else img
    if img.dtype != np.uint8:
        # 16-bit microscopy exports: rescale to 8 bit rather than truncate
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return img


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Atomically write an image (uint8 or uint16, (H, W) or (H, W, 3) BGR) as PNG."""
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"cannot encode {path} as PNG")
        Path(tmp).write_bytes(buf.tobytes())
