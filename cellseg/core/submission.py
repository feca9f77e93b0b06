"""Write, read and validate ``submission.csv`` (``id,predicted``, one row per predicted cell).

    with SubmissionWriter("submission.csv") as w:       # streaming, atomic
        for image_id, instances in predictions:
            w.add(image_id, instances)                  # Instances or a list of RLE strings
    problems = validate_submission("submission.csv", images="test/")

Rules the writer enforces and the validator checks:

* never an empty RLE for a cell (empty masks are skipped);
* no two masks of one image overlap (the Kaggle scorer rejects overlapping predictions);
* an image appears in one ``add`` call only.

Images with no predicted cell: how Kaggle's scorer treats a test image that has no row is not
documented. ``empty_policy="row"`` (default) writes one row with an empty ``predicted`` field,
as ``sample_submission.csv`` does; ``"skip"`` writes nothing for it. The predictor avoids the
question by keeping at least one cell per image by default. The validator reports such a
placeholder row as a warning, not an error.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.core.masks import Runs, runs_from_instances, runs_from_rles
from cellseg.errors import InputError
from cellseg.io import atomic_path

if TYPE_CHECKING:
    from cellseg.core.instances import Instances

HEADER = ("id", "predicted")
EMPTY_POLICIES = ("row", "skip")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

Cells = Union[Sequence[str], "Instances"]


def instance_rles(inst: "Instances") -> list[str]:
    """Competition RLE of each non-empty instance, encoded from its crop (no dense image)."""
    return [r for r in runs_from_instances(inst).to_rles() if r]


class SubmissionWriter:
    """Stream rows to ``path`` through a temporary file, renamed into place on a clean close.

    On an exception inside the ``with`` block the target file is left untouched (and the
    temporary file removed).

    Args:
        path: the submission.csv to write.
        empty_policy: ``"row"`` (an empty ``predicted`` row for an image with no cell, as
            sample_submission does) or ``"skip"`` (no row).
        shape: (height, width) the RLE strings must fit; None skips the overlap check.
        check_overlap: raise when two masks of one image share a pixel.
    """

    def __init__(self, path: str | os.PathLike, *, empty_policy: str = "row",
                 shape: tuple[int, int] | None = rle_codec.SHAPE,
                 check_overlap: bool = True) -> None:
        if empty_policy not in EMPTY_POLICIES:
            raise ValueError(f"empty_policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}")
        self.path = Path(path)
        self.empty_policy = empty_policy
        self.shape = shape
        self.check_overlap = check_overlap and shape is not None
        self.n_rows = 0
        self.n_images = 0
        self.n_empty_images = 0
        self._seen: set[str] = set()
        self._ctx = None
        self._fh: IO[str] | None = None
        self._csv = None

    def __enter__(self) -> "SubmissionWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._fh = open(tmp, "w", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow(HEADER)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._fh is not None and self._ctx is not None
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())  # a full disk often shows only here
            self._fh.close()
        except BaseException as err:  # the file is incomplete: never rename it into place
            with contextlib.suppress(OSError):
                self._fh.close()
            self._ctx.__exit__(type(err), err, err.__traceback__)  # removes it, may convert err
            raise
        # atomic_path renames only when no exception is passed on
        self._ctx.__exit__(exc_type, exc, tb)
        return False

    def add(self, image_id: str, cells: Cells, *, shape: tuple[int, int] | None = None) -> int:
        """Append the cells of one image; returns the number of rows written.

        Args:
            image_id: the image id (file stem).
            cells: ``Instances`` or a list of competition RLE strings; empty ones are skipped.
            shape: this image's (height, width) if it differs from the writer's.
        """
        if self._csv is None:
            raise RuntimeError("SubmissionWriter.add outside its `with` block")
        image_id = str(image_id)
        if not image_id or "," in image_id:
            raise ValueError(f"bad image id {image_id!r}")
        if image_id in self._seen:
            raise ValueError(f"image {image_id} added twice: give all its cells in one add()")
        self._seen.add(image_id)
        rles = instance_rles(cells) if hasattr(cells, "boxes") else [
            r.strip() for r in cells if r and r.strip()]
        shp = shape or (tuple(cells.image_shape) if hasattr(cells, "image_shape") else self.shape)
        if self.check_overlap and rles:
            try:
                runs = runs_from_rles(rles, shp)
            except rle_codec.RLEError as err:
                raise rle_codec.RLEError(f"image {image_id}: {err}") from None
            if runs.overlapping():
                raise ValueError(f"image {image_id}: predicted masks overlap; remove overlaps "
                                 "(e.g. cellseg.infer postprocessing) before writing")
        self.n_images += 1
        if not rles:
            self.n_empty_images += 1
            if self.empty_policy == "row":
                self._csv.writerow((image_id, ""))
                self.n_rows += 1
                return 1
            return 0
        self._csv.writerows((image_id, r) for r in rles)
        self.n_rows += len(rles)
        return len(rles)


def write_submission(path: str | os.PathLike, items: Iterable[tuple[str, Cells]], *,
                     empty_policy: str = "row",
                     shape: tuple[int, int] | None = rle_codec.SHAPE) -> int:
    """Write ``(image_id, cells)`` pairs to ``path`` atomically; returns the row count."""
    with SubmissionWriter(path, empty_policy=empty_policy, shape=shape) as w:
        for image_id, cells in items:
            w.add(image_id, cells)
    return w.n_rows


def read_submission(path: str | os.PathLike) -> dict[str, list[str]]:
    """``image id -> [RLE, ...]`` from a submission.csv (empty ``predicted`` rows give [])."""
    out: dict[str, list[str]] = {}
    for row_no, cells in _rows(path):
        if row_no == 1:
            if tuple(c.strip() for c in cells) != HEADER:
                raise InputError(f"header is {','.join(cells)!r}, not 'id,predicted'",
                                 where=str(path), fix="write the header 'id,predicted'")
            continue
        if len(cells) != 2:
            raise InputError(f"row {row_no} has {len(cells)} fields, not 2 (id,predicted)",
                             where=str(path), fix="`cellseg validate` lists every bad row")
        image_id, pred = cells[0].strip(), cells[1].strip()
        out.setdefault(image_id, [])
        if pred:
            out[image_id].append(pred)
    return out


def _rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    # row number = line number in the file (header = 1), what an editor shows
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        for cells in reader:
            yield reader.line_num, cells


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """One problem found in a submission. ``row`` is the file line number (header = 1), or
    None for a problem of the whole file (a missing image)."""

    row: int | None
    image_id: str | None
    message: str
    severity: str = "error"  # "error" makes the file invalid; "warning" does not

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "file"
        img = f" image {self.image_id}" if self.image_id else ""
        return f"{self.severity.upper()}: {where}{img}: {self.message}"


def expected_images(images: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``image id -> (height, width)`` for every image file in a folder (sizes from headers).

    A file that cannot be read (truncated, not an image) is still expected in the submission
    (the kernel writes its ``empty_policy`` rows); its size is taken as the competition's
    (520, 704), so its RLEs are still bounds-checked."""
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                out[p.stem] = _image_shape(p)
            except InputError:
                out[p.stem] = rle_codec.SHAPE
    if not out:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return out


def _image_shape(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n":  # IHDR: width, height as big-endian uint32
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    from cellseg.io import read_gray

    return tuple(read_gray(path).shape[:2])  # type: ignore[return-value]


def ids_from_csv(path: str | os.PathLike) -> list[str]:
    """Image ids (first column, header skipped) of a CSV such as sample_submission.csv."""
    ids: dict[str, None] = {}
    for row_no, cells in _rows(path):
        if row_no > 1 and cells and cells[0].strip():
            ids[cells[0].strip()] = None
    return list(ids)


def validate_submission(path: str | os.PathLike, *, images: str | os.PathLike | None = None,
                        ids: Iterable[str] | None = None,
                        shape: tuple[int, int] = rle_codec.SHAPE,
                        image_shapes: Mapping[str, tuple[int, int]] | None = None) -> list[Problem]:
    """Check a submission.csv; returns every problem found (empty list = valid).

    Checks: the header; each row has 2 fields and a known id; each RLE is valid and inside
    its image; no empty RLE beside an image's other rows; no overlapping masks within an
    image; every expected image present. Expected ids (and sizes) come from ``images`` (a
    folder), ``image_shapes`` ({id: (H, W)}) or ``ids`` (all ``shape``), else are not checked.
    """
    shapes: dict[str, tuple[int, int]] | None = None
    if images is not None:
        shapes = expected_images(images)
    elif image_shapes is not None:
        shapes = {str(k): (int(v[0]), int(v[1])) for k, v in image_shapes.items()}
    elif ids is not None:
        shapes = {str(i): shape for i in ids}
    problems: list[Problem] = []
    # image id -> list of (row, starts, lengths) for the overlap check
    per_image: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    empty_rows: dict[str, list[int]] = {}
    n_rows = 0
    for row_no, cells in _rows(path):
        if row_no == 1:
            if tuple(c.strip() for c in cells) != HEADER:
                problems.append(Problem(1, None, f"header must be 'id,predicted', got "
                                                 f"{','.join(cells)!r}"))
            continue
        n_rows += 1
        if len(cells) != 2:
            problems.append(Problem(row_no, cells[0] if cells else None,
                                    f"expected 2 fields (id,predicted), got {len(cells)}"))
            continue
        image_id, pred = cells[0].strip(), cells[1].strip()
        if shapes is not None and image_id not in shapes:
            problems.append(Problem(row_no, image_id, "unknown image id (not a test image)"))
            continue
        per_image.setdefault(image_id, [])
        if not pred:
            empty_rows.setdefault(image_id, []).append(row_no)
            continue
        shp = shapes[image_id] if shapes is not None else shape
        try:
            starts, lengths = rle_codec.parse(pred, shp)
        except rle_codec.RLEError as err:
            problems.append(Problem(row_no, image_id, f"invalid RLE for a {shp[0]}x{shp[1]} "
                                                      f"image: {err}"))
            continue
        if starts.size == 0:
            empty_rows.setdefault(image_id, []).append(row_no)
            continue
        per_image[image_id].append((row_no, starts, lengths))
    for image_id, rows in empty_rows.items():
        if per_image.get(image_id):
            for r in rows:
                problems.append(Problem(r, image_id, "empty RLE: a cell row must have pixels"))
        else:
            problems.append(Problem(rows[0], image_id, "image has no predicted cell (empty "
                                    "placeholder row); Kaggle's handling is undocumented",
                                    severity="warning"))
            for r in rows[1:]:
                problems.append(Problem(r, image_id, "duplicate empty placeholder row"))
    for image_id, entries in per_image.items():
        if len(entries) < 2:
            continue
        row_of = np.array([e[0] for e in entries])
        shp = shapes[image_id] if shapes is not None else shape
        runs = Runs(np.concatenate([e[1] for e in entries]),
                    np.concatenate([e[2] for e in entries]),
                    np.repeat(np.arange(len(entries)), [e[1].size for e in entries]),
                    len(entries), shp)
        if runs.overlapping():
            problems.extend(_overlap_problems(runs, row_of, image_id))
    if shapes is not None:
        for image_id in shapes:
            if image_id not in per_image:
                problems.append(Problem(None, image_id, "image missing: no row for this image"))
    problems.sort(key=lambda p: (p.row is None, p.row or 0))
    return problems


def _overlap_problems(runs: Runs, row_of: np.ndarray, image_id: str) -> list[Problem]:
    """One problem per overlapping pair of rows, on the later row."""
    pairs = {tuple(sorted((int(row_of[a]), int(row_of[b])))) for a, b in runs.overlap_pairs()}
    return [Problem(rb, image_id, f"mask overlaps the mask of row {ra}")
            for ra, rb in sorted(pairs, key=lambda x: (x[1], x[0]))]
