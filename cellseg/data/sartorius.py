"""The competition folder: ``train.csv`` + ``train/``, ``test/``, ``train_semi_supervised/``.

    from cellseg.data import sartorius
    records = sartorius.load_train("data/sartorius", fill_holes=True)   # list[ImageRecord]
    test = sartorius.list_test("data/sartorius")                         # no annotations

``train.csv`` has one row per CELL: ``id`` (the image id, file ``train/<id>.png``),
``annotation`` (competition RLE, see ``cellseg.core.rle``), ``width``, ``height``, ``cell_type``,
``plate_time``, ``sample_date``, ``sample_id``, ``elapsed_timedelta``. Every row is validated:
errors name the file, the 1-based data row (its line in the file is row + 1, after the header)
and the image id, e.g. ``train.csv row 17 (line 18, id 0030fd0e6378): overlapping runs ...``.
All bad rows are collected first and reported together, so one run shows every problem.

A minimal CSV with only ``id`` and ``annotation`` (a hand-made subset, a predictions file) is
accepted: width/height default to 704/520 and the other columns to None, silently and by
design (further columns may be present; width and height come together). Without ``id`` or
``annotation`` it is an error naming the file and the missing columns.

An optional ``ignore.csv`` beside ``train.csv`` (``id``, ``annotation``, ``width``, ``height``)
lists regions of its images that training leaves out of the loss (``ImageRecord.ignore_rles``):
``cellseg pseudo-label --ignore-dropped`` writes the teacher's unsure cells there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.data.record import ImageRecord
from cellseg.errors import InputError

COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height", "cell_type", "plate_time",
                            "sample_date", "sample_id", "elapsed_timedelta")
REQUIRED: tuple[str, ...] = ("id", "annotation")
META_COLUMNS: tuple[str, ...] = ("plate_time", "sample_date", "elapsed_timedelta")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
# regions a training run must neither learn as cells nor as background (pseudo-labels' unsure
# cells), beside train.csv
IGNORE_CSV = "ignore.csv"
IGNORE_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height")
MAX_LISTED = 10  # problems spelled out in an exception message; the rest are counted


class DataError(InputError):
    """Bad data files; ``problems`` holds every message (the exception text shows the first)."""

    def __init__(self, summary: str, problems: Sequence[str]):
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{summary}\n  {shown}{more}")
        self.problems = list(problems)


def _csv_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "train.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the competition folder (with train.csv "
                                f"and train/) or the train.csv file itself")
    return path


def read_train_csv(path: str | os.PathLike, *, problems: list[str] | None = None,
                   validate_rle: bool = True):
    """Read and validate ``train.csv`` (or the ``train.csv`` inside a competition folder).

    Args:
        path: the CSV file or the folder holding it.
        problems: when given, row problems are appended here and the bad rows dropped instead
            of raising (``cellseg data check`` lists them all at the end).
        validate_rle: decode-check every RLE (vectorised: ~1 s for the full 73,585 rows).
    Returns:
        A pandas DataFrame with the 9 ``COLUMNS`` (missing metadata filled with None, width
        and height as int64), one row per cell, in file order; the index is the 1-based row.
    Raises:
        DataError: missing required columns, or bad rows (all of them listed) when
            ``problems`` is None.
    """
    import pandas as pd  # lazy: pandas costs ~0.3 s to import

    path = _csv_path(path)
    # everything as text: ids like "1e10..." must not become floats, and text columns must
    # round-trip byte for byte (cellseg data convert)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} is empty (no header)",
                        [f"{path} is empty; a train.csv starts with the header "
                         f"{','.join(COLUMNS)}"]) from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path.name}: missing column(s) {', '.join(missing)}",
                        [f"{path} has columns {list(df.columns)}; a train.csv needs "
                         f"{', '.join(COLUMNS)} (at least id and annotation)"])
    if ("width" in df.columns) != ("height" in df.columns):
        have, lack = ("width", "height") if "width" in df.columns else ("height", "width")
        raise DataError(f"{path.name}: missing column(s) {lack}",
                        [f"{path} has a {have} column but no {lack}: give both (or neither, "
                         f"for the default {rle_codec.SHAPE[1]}x{rle_codec.SHAPE[0]})"])
    for col in COLUMNS:
        if col not in df.columns:
            default = {"width": str(rle_codec.SHAPE[1]), "height": str(rle_codec.SHAPE[0])}
            df[col] = default.get(col, None)
    df = df[list(COLUMNS)].copy()
    df.index = pd.RangeIndex(1, len(df) + 1)  # 1-based data row number

    collected: list[str] = []

    def where(row: int, image_id: str) -> str:
        return f"{path.name} row {row} (line {row + 1}, id {image_id})"

    bad_rows: set[int] = set()
    ids = df["id"].str.strip()
    df["id"] = ids
    for row in df.index[ids == ""]:
        collected.append(f"{where(row, '?')}: empty id")
        bad_rows.add(row)
    sizes = {}
    for col in ("width", "height"):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna() | (num <= 0) | (num != num.round())
        for row in df.index[bad]:
            collected.append(f"{where(row, df.at[row, 'id'])}: {col} {df.at[row, col]!r} is not "
                             f"a positive integer")
            bad_rows.add(row)
        sizes[col] = num.fillna(0).astype("int64")
    df["width"], df["height"] = sizes["width"], sizes["height"]
    empty = df["annotation"].str.strip() == ""
    for row in df.index[empty]:
        collected.append(f"{where(row, df.at[row, 'id'])}: empty annotation (an instance needs at "
                         f"least one pixel; drop the row)")
        bad_rows.add(row)

    # one size, cell type and sample per image
    for col in ("width", "height", "cell_type", "sample_id"):
        if df[col].isna().all():
            continue
        n_values = df.groupby("id", sort=False)[col].nunique(dropna=False)
        for image_id in n_values.index[n_values > 1]:
            rows = df.index[df["id"] == image_id]
            values = sorted(map(str, df.loc[rows, col].unique()))
            collected.append(f"{path.name} rows {rows[0]}-{rows[-1]} (id {image_id}): "
                             f"{col} differs between rows of one image: {values}")
            bad_rows.update(rows)

    if validate_rle:
        ok = df.index[~df.index.isin(list(bad_rows))]
        for (h, w), group in df.loc[ok].groupby(["height", "width"], sort=False):
            for i, msg in rle_codec.find_errors(group["annotation"].tolist(), (int(h), int(w))):
                row = int(group.index[i])
                collected.append(f"{where(row, group.at[row, 'id'])}: {msg}")
                bad_rows.add(row)

    if collected:
        collected.sort(key=_row_key)
        if problems is None:
            raise DataError(f"{path}: {len(collected)} bad row(s); fix or drop them", collected)
        problems.extend(collected)
        df = df.drop(index=sorted(bad_rows))
    return df


def _row_key(message: str) -> int:
    # sort problems by row number for a readable listing
    match = re.search(r" rows? (\d+)", message)
    return int(match.group(1)) if match else 0


def _optional(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = str(value)
    return value if value != "" else None


def records_from_frame(df, image_dir: str | os.PathLike, *, fill_holes: bool = False,
                       source: str = "sartorius") -> list[ImageRecord]:
    """Group a validated train.csv frame (``read_train_csv``) into one record per image.

    Records come in order of first appearance in the CSV; RLEs keep the row order.
    """
    from tqdm import tqdm

    image_dir = Path(image_dir)
    records = []
    groups = df.groupby("id", sort=False)
    for image_id, rows in tqdm(groups, total=groups.ngroups, desc="train.csv images",
                               disable=True if groups.ngroups < 50 else None, leave=False):
        first = rows.iloc[0]
        h, w = int(first["height"]), int(first["width"])
        rles = tuple(rows["annotation"].str.strip())
        if fill_holes:
            rles = tuple(fill_holes_many(rles, (h, w)))
        records.append(ImageRecord(
            image_id=str(image_id), image_path=image_dir / f"{image_id}.png", height=h, width=w,
            cell_type=_optional(first["cell_type"]), source=source,
            sample_id=_optional(first["sample_id"]), rles=rles,
            meta={c: _optional(first[c]) for c in META_COLUMNS}))
    return records


def load_train(path: str | os.PathLike, *, fill_holes: bool = False,
               ids: Iterable[str] | None = None) -> list[ImageRecord]:
    """Load the annotated training images.

    Args:
        path: competition folder (``train.csv`` + ``train/``) or a ``train.csv`` file (images
            are looked up in its sibling ``train/`` folder; they are not opened here).
        fill_holes: fill enclosed holes in every mask (``scipy.ndimage.binary_fill_holes`` on the
            mask's bounding box) and re-encode; training wants solid cells.
        ids: keep only these image ids (in the CSV's order).
    Returns:
        One ``ImageRecord`` per image (source "sartorius"), ``rles`` in row order, ``cell_type``,
        ``sample_id`` and ``meta`` (plate_time, sample_date, elapsed_timedelta) kept.
    Raises:
        DataError: bad rows, all listed with row numbers; FileNotFoundError: no train.csv.
    """
    csv = _csv_path(path)
    df = read_train_csv(csv)
    if ids is not None:
        wanted = [str(i) for i in ids]
        unknown = sorted(set(wanted) - set(df["id"]))
        if unknown:
            raise KeyError(f"{csv}: unknown image id(s) {unknown[:5]}"
                           f"{' ...' if len(unknown) > 5 else ''}")
        df = df[df["id"].isin(wanted)]
    records = records_from_frame(df, csv.parent / "train", fill_holes=fill_holes)
    ignore = csv.parent / IGNORE_CSV
    return attach_ignore(records, ignore) if ignore.is_file() else records


def attach_ignore(records: Sequence[ImageRecord], path: str | os.PathLike) -> list[ImageRecord]:
    """Give each record the regions ``path`` (an ``ignore.csv``: ``id``, ``annotation``,
    ``width``, ``height``, one row per region, validated as ``train.csv`` is) lists for its image
    (``ImageRecord.ignore_rles``). A row whose image is not among ``records`` or whose size
    differs is an error naming the row: the file belongs to that folder's ``train.csv``."""
    import dataclasses

    path = Path(path)
    df = read_train_csv(path)
    by_id = {r.image_id: r for r in records}
    problems = []
    for row, image_id, h, w in zip(df.index, df["id"], df["height"], df["width"]):
        rec = by_id.get(image_id)
        if rec is None:
            problems.append(f"{path.name} row {row} (line {row + 1}, id {image_id}): no such image "
                            f"in train.csv beside it; delete the row (or the file)")
        elif (int(h), int(w)) != rec.shape:
            problems.append(f"{path.name} row {row} (line {row + 1}, id {image_id}): size {w}x{h} "
                            f"but train.csv says {rec.width}x{rec.height}")
    if problems:
        raise DataError(f"{path}: {len(problems)} bad row(s); fix or drop them", problems)
    regions = df.groupby("id", sort=False)["annotation"].agg(lambda a: tuple(a.str.strip()))
    return [dataclasses.replace(r, ignore_rles=regions[r.image_id]) if r.image_id in regions
            else r for r in records]


def write_ignore_csv(records: Sequence[ImageRecord], path: str | os.PathLike) -> int:
    """Write the records' ``ignore_rles`` as ``ignore.csv`` (``attach_ignore``'s input), atomically;
    returns the number of rows."""
    import csv

    from cellseg.io import atomic_open

    n = 0
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(IGNORE_COLUMNS)
        for rec in records:
            if not rec.rles:  # an image without cells has no train.csv row to belong to
                continue
            for r in rec.ignore_rles:
                writer.writerow([rec.image_id, r, rec.width, rec.height])
                n += 1
    return n


def fill_holes_many(rles: Sequence[str], shape: tuple[int, int]) -> list[str]:
    """Fill the enclosed holes of every mask (as ``scipy.ndimage.binary_fill_holes`` per mask).

    Fast path: a mask whose every image row holds a single run cannot enclose a hole (a hole
    pixel needs mask pixels left and right of it in its row), so only masks with a row of two
    or more runs (one parse of all strings finds them) are rasterised, on their bounding box.
    Unchanged masks keep their original string.
    """
    h, w = int(shape[0]), int(shape[1])
    rles = list(rles)
    if not rles:
        return []
    starts, lengths, n_pairs = rle_codec.parse_many(rles, (h, w))
    first_row = starts // w
    last_row = (starts + lengths - 1) // w
    owner = np.repeat(np.arange(len(rles)), n_pairs)
    # candidates: two consecutive runs of one mask in the same row, or a run wrapping a row
    same_row = np.zeros(len(starts), bool)
    same_row[1:] = (owner[1:] == owner[:-1]) & (first_row[1:] == last_row[:-1])
    suspect = same_row | (first_row != last_row)
    out = list(rles)
    for i in np.unique(owner[suspect]).tolist():
        out[i] = fill_rle_holes(rles[i], (h, w))
    return out


def fill_rle_holes(rle: str, shape: tuple[int, int]) -> str:
    """Fill the enclosed holes of one mask, working on its bounding box only (O(box), not O(H*W)).

    Same result as ``scipy.ndimage.binary_fill_holes`` on the full image: background is
    4-connected, and a hole touching the box edge would touch the background outside the box.
    Implemented as "background not connected to the padded border", one ``ndimage.label`` call
    (binary_fill_holes iterates dilations and is ~10x slower).
    """
    from scipy import ndimage

    h, w = shape
    idx = rle_codec.indices(rle, shape)
    if idx.size == 0:
        return rle
    rows, cols = np.divmod(idx, w)
    r0, c0 = int(rows.min()), int(cols.min())
    # one pixel of background padding all round: the outside is then one connected component
    crop = np.zeros((int(rows.max()) - r0 + 3, int(cols.max()) - c0 + 3), dtype=bool)
    crop[rows - r0 + 1, cols - c0 + 1] = True
    background, _ = ndimage.label(~crop)  # default structure: 4-connectivity, as fill_holes
    filled = background != background[0, 0]
    n_filled = int(np.count_nonzero(filled))
    if n_filled == idx.size:
        return rle
    rr, cc = np.nonzero(filled)  # row-major order, so the global indices come out ascending
    return rle_codec.encode_indices((rr + r0 - 1) * w + (cc + c0 - 1))


def write_train_csv(records: Sequence[ImageRecord], path: str | os.PathLike) -> int:
    """Write records as a competition ``train.csv`` (9 columns, one row per instance), atomically.

    Returns the number of rows. Inverse of ``load_train`` (byte-identical on the real file).
    """
    import csv

    from cellseg.io import atomic_open

    n = 0
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for rec in records:
            meta = dict(rec.meta or {})
            fixed = [rec.width, rec.height, rec.cell_type or "", meta.get("plate_time") or "",
                     meta.get("sample_date") or "", rec.sample_id or "",
                     meta.get("elapsed_timedelta") or ""]
            for r in rec.rles:
                writer.writerow([rec.image_id, r, *fixed])
                n += 1
    return n


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header (PIL opens lazily: no pixel decoding)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib/scikit-image
        from cellseg.io import read_gray

        return read_gray(path).shape  # type: ignore[return-value]


def list_images(folder: str | os.PathLike, *, source: str = "sartorius",
                read_size: bool = True) -> list[ImageRecord]:
    """Every ``*.png`` / ``*.tif`` / ``*.tiff`` in ``folder`` (not recursive), sorted by name.

    Records have no annotations; ``image_id`` is the file stem; height and width come from the
    file header (``read_size=False``: assume 520x704 and open nothing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for p in paths:
        h, w = _image_size(p) if read_size else rle_codec.SHAPE
        out.append(ImageRecord(image_id=p.stem, image_path=p, height=int(h), width=int(w),
                               source=source))
    return out


def list_test(root: str | os.PathLike) -> list[ImageRecord]:
    """The test images of a competition folder (``root/test``; the hidden set at submit time)."""
    return list_images(Path(root) / "test")


def list_semi_supervised(root: str | os.PathLike) -> list[ImageRecord]:
    """The unlabeled ``root/train_semi_supervised`` images (for pseudo labels)."""
    return list_images(Path(root) / "train_semi_supervised")
