"""Write records as a competition-layout folder (``train.csv`` + ``train/<id>.png``).

    from cellseg.export import write_competition_folder
    write_competition_folder(records, "runs/cv/fold_0/train_data")

The competition layout is the one every loader reads (``cellseg train --data DIR``), so a subset of
mixed sources (a cross-validation fold) or a pseudo-labelled set becomes one more training source.
Images from any source (LIVECell TIFF, competition PNG) are written as 8-bit PNG once into an
image store and linked into the folder (copied where links are not possible).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord


def png_of(record: "ImageRecord", store: str | os.PathLike) -> Path:
    """``store/<id>.png``: the record's image as PNG (written once, atomically; reused after)."""
    from cellseg.io import read_gray, write_png

    path = Path(store) / f"{record.image_id}.png"
    if not path.is_file():
        write_png(path, read_gray(record.image_path))
    return path


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() and os.readlink(dst) == os.path.abspath(src):
        return  # already there (two runs sharing an output folder must not race on it)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:  # e.g. a file system without symlinks
        shutil.copyfile(src, dst)


def write_competition_folder(records: Sequence["ImageRecord"], out: str | os.PathLike, *,
                             store: str | os.PathLike | None = None) -> list["ImageRecord"]:
    """Write ``out/train.csv`` (one row per instance, atomically) and ``out/train/<id>.png``,
    plus ``out/ignore.csv`` when a record has ``ignore_rles``.

    Args:
        records: annotated records of any source; ``sample_id`` falls back to the LIVECell well
            (``meta["well"]``) so time-lapse frames of one well stay one fold group.
        store: folder holding the PNG copies (default ``out/train``, i.e. no links).
    Returns:
        The records as they read back from ``out`` (image paths inside it).
    """
    from cellseg.data.sartorius import IGNORE_CSV, write_ignore_csv, write_train_csv

    out = Path(out)
    images = out / "train"
    images.mkdir(parents=True, exist_ok=True)
    written = []
    for r in records:
        dst = images / f"{r.image_id}.png"
        if store is None:
            png_of(r, images)
        else:
            _link(png_of(r, store), dst)
        sample = r.sample_id or (r.meta or {}).get("well")
        written.append(dataclasses.replace(r, image_path=dst, sample_id=sample))
    write_train_csv(written, out / "train.csv")
    ignore = out / IGNORE_CSV
    if any(r.ignore_rles for r in written):
        write_ignore_csv(written, ignore)
    elif ignore.is_file():  # a folder rewritten without regions must not keep stale ones
        ignore.unlink()
    return written
