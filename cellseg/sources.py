"""Several annotated data sources at once, each with its own split.

    from cellseg.sources import load_sources
    records = load_sources(["/data/sartorius", "/data/livecell:val"])

A source spec is ``PATH`` or ``PATH:SPLIT`` (``SPLIT`` in ``SPLITS``; the suffix is read as a
split only when the whole text is not itself an existing path). Without a split, a LIVECell root
gives ``val`` and anything else ``train`` (what ``cellseg score`` has always done), unless the
caller passes ``split=`` for every source without its own. Used by ``cellseg cv``,
``cellseg tune --data``, ``cellseg score --truth`` and the plain-UNet benchmark, so a mixed set of
competition folders and LIVECell JSON/roots needs no symlinks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord

SPLITS: tuple[str, ...] = ("train", "val", "test", "semi", "train_semi_supervised", "unlabeled")


def parse_source(text: str | os.PathLike) -> tuple[str, str | None]:
    """``"path:val"`` -> ``("path", "val")``; ``"path"`` -> ``("path", None)``."""
    text = os.fspath(text)
    path, sep, split = text.rpartition(":")
    if sep and path and split in SPLITS and not Path(text).exists():
        return path, split
    return text, None


def default_split(path: str | os.PathLike) -> str:
    """The split a source gives when none is named: ``val`` for a LIVECell root, else ``train``."""
    from cellseg.data.loaders import detect

    return "val" if detect(path) == "livecell" else "train"


def load_sources(specs: Sequence[str | os.PathLike], *, split: str | None = None,
                 annotated: bool = False) -> list["ImageRecord"]:
    """Records of every source, in order (see the module docstring for the spec syntax).

    Args:
        specs: one or more ``PATH`` / ``PATH:SPLIT`` strings.
        split: the split of every source that names none (None: ``default_split``).
        annotated: keep only images with at least one annotated cell.
    Raises:
        FileNotFoundError: a source does not exist (the message names it).
        ValueError: an image id appears in two sources, or no spec was given.
    """
    from cellseg.data.loaders import load_records

    if not specs:
        raise ValueError("no data source given; pass a competition folder, train.csv, LIVECell "
                         "root or COCO JSON")
    out: list[ImageRecord] = []
    seen: dict[str, str] = {}
    for spec in specs:
        path, own = parse_source(spec)
        if not Path(path).exists():
            raise FileNotFoundError(f"data source {path} does not exist; pass a competition "
                                    f"folder, train.csv, LIVECell root or COCO JSON")
        s = own or split or default_split(path)
        for r in load_records(path, split=s):
            if r.image_id in seen:
                raise ValueError(f"image id {r.image_id} is in both {seen[r.image_id]} and {spec}; "
                                 f"list each source once")
            seen[r.image_id] = str(spec)
            out.append(r)
    if annotated:
        out = [r for r in out if r.rles]
    return out


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")


def list_image_files(paths: Sequence[str | os.PathLike], *, recursive: bool = True,
                     read_size: bool = False) -> list["ImageRecord"]:
    """Unannotated records of every image in ``paths`` (folders, searched recursively, or files).

    ``image_id`` is the file stem; when two files share a stem, the later ones get their folder
    path relative to the given root prefixed (``sub__stem``) so ids stay unique. Sorted by path
    within each given folder. ``read_size=False`` assumes 520x704 and opens nothing (the reader
    checks the real size later).
    Raises FileNotFoundError naming a path that does not exist.
    """
    from cellseg.core import rle as rle_codec
    from cellseg.data.record import ImageRecord

    found: list[tuple[Path, Path]] = []  # (root, file)
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.append((p.parent, p))
        elif p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found += [(p, f) for f in sorted(it)
                      if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise FileNotFoundError(f"image folder or file {p} does not exist; pass folders of "
                                    f"*.png / *.tif images")
    out, seen = [], set()
    for root, f in found:
        image_id = f.stem
        if image_id in seen:
            rel = f.relative_to(root).with_suffix("")
            image_id = "__".join(rel.parts)
            n = 1
            while image_id in seen:
                n, image_id = n + 1, f"{'__'.join(rel.parts)}_{n}"
        seen.add(image_id)
        if read_size:
            from PIL import Image

            with Image.open(f) as im:
                h, w = im.height, im.width
        else:
            h, w = rle_codec.SHAPE
        out.append(ImageRecord(image_id=image_id, image_path=f, height=int(h), width=int(w),
                               source="images"))
    return out
