"""LIVECell (Edlund et al. 2021): COCO JSON polygons -> records with competition RLE.

    from cellseg.data import livecell
    val = livecell.load("data/LIVECell_dataset_2021", "val", min_cells=10)
    shsy5y = livecell.load(root, "train", cell_types=["SHSY5Y"])

Layouts understood (both searched under ``root``):

- official: ``images/livecell_train_val_images/<CellType>/*.tif``,
  ``images/livecell_test_images/<CellType>/*.tif``,
  ``annotations/LIVECell/livecell_coco_{train,val,test}.json`` and per-type
  ``annotations/LIVECell_single_cells/<celltype>/{train,val,test}.json``;
- Kaggle mirror (``LIVECell_dataset_2021/`` in the competition data): ``annotations`` is a dict
  keyed by id, per-type files are named ``livecell_<celltype>_<split>.json``, images may sit
  flat in the image folders.

Images are found by file name anywhere under ``root/images`` (or ``root``), so the
``<CellType>/`` folder that ``file_name`` lacks is found whichever layout is used. The cell type
is the file-name prefix (``MCF7_Phase_G4_2_02d16h00m_1.tif`` -> ``MCF7``). Duplicate image
entries (same file name, different ids) are dropped, keeping the first; images with fewer than
``min_cells`` annotations can be skipped. Polygons are rasterised at the (height, width) of
their JSON image entry with pycocotools and stored as competition RLE strings.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from cellseg.data.coco import (CELL_TYPES, annotations_by_image,  # noqa: F401 (API)
                               annotations_list, cell_type_of, segmentations_to_rles)
from cellseg.data.record import ImageRecord

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def _annotation_candidates(root: Path, split: str, cell_type: str | None) -> list[Path]:
    if cell_type is None:
        names = [f"livecell_coco_{split}.json"]
        return [root / "annotations" / "LIVECell" / names[0], root / "LIVECell" / names[0],
                root / names[0]]
    low = cell_type.lower()
    return [root / "annotations" / "LIVECell_single_cells" / low / f"{split}.json",
            root / "annotations" / "LIVECell_single_cells" / low / f"livecell_{low}_{split}.json",
            root / "annotations" / "LIVECell_single_cells" / low / split / f"livecell_{low}_{split}.json",
            root / "annotations" / "LIVECell_single_cells" / f"livecell_{low}_{split}.json"]


def _search(root: Path, name: str) -> Path | None:
    found = sorted(p for p in root.rglob(name) if p.is_file())
    return found[0] if found else None


def find_annotation_files(root: str | os.PathLike, split: str = "val",
                          cell_types: Sequence[str] | None = None) -> list[Path]:
    """The JSON file(s) holding ``split``: the combined file, else the per-type files.

    With ``cell_types``, per-type files are preferred (smaller), falling back to the combined
    file (filtered later). Raises FileNotFoundError listing what was looked for.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cell_types:
        per_type = []
        for t in cell_types:
            hit = next((p for p in _annotation_candidates(root, split, t) if p.is_file()), None)
            if hit is None:
                hit = _search(root, f"livecell_{t.lower()}_{split}.json")
            if hit is None:
                break
            per_type.append(hit)
        else:
            return per_type
    combined = next((p for p in _annotation_candidates(root, split, None) if p.is_file()), None)
    combined = combined or _search(root, f"livecell_coco_{split}.json")
    if combined is not None:
        return [combined]
    per_type = []
    for t in CELL_TYPES:
        hit = next((p for p in _annotation_candidates(root, split, t) if p.is_file()), None)
        hit = hit or _search(root, f"livecell_{t.lower()}_{split}.json")
        if hit is not None:
            per_type.append(hit)
    if per_type:
        return per_type
    raise FileNotFoundError(
        f"no LIVECell {split} annotations under {root}: looked for "
        f"annotations/LIVECell/livecell_coco_{split}.json and per-type files "
        f"annotations/LIVECell_single_cells/<celltype>/{split}.json or "
        f"livecell_<celltype>_{split}.json; pass the LIVECell root or annotation_file=")


def index_images(root: str | os.PathLike) -> dict[str, Path]:
    """file name -> path for every image under ``root/images`` (or ``root``); first path wins
    in sorted order (train_val before test)."""
    root = Path(root)
    base = root / "images" if (root / "images").is_dir() else root
    out: dict[str, Path] = {}
    for p in sorted(base.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in out:
            out[p.name] = p
    return out


def _expected_path(root: Path, split: str, file_name: str) -> Path:
    # where the official layout would put it (used in error messages and for missing files)
    folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
    return root / "images" / folder / cell_type_of(file_name) / Path(file_name).name


def read_json(path: str | os.PathLike) -> dict:
    """Load a LIVECell COCO JSON, normalising the Kaggle mirror's dict of annotations to a list."""
    path = Path(path)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{path}: no '{key}' key; is this a COCO annotation file?")
    data["annotations"] = annotations_list(data)
    return data


def load(root: str | os.PathLike, split: str = "val", *,
         annotation_file: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
         cell_types: Sequence[str] | None = None, min_cells: int = 0,
         problems: list[str] | None = None, notes: list[str] | None = None
         ) -> list[ImageRecord]:
    """Load one LIVECell split as records.

    Args:
        root: the LIVECell root (``images/`` + ``annotations/``), official or Kaggle mirror.
        split: "train", "val" or "test" (picks the JSON and, for missing images, the folder).
        annotation_file: explicit JSON file(s) instead of searching ``root``.
        cell_types: keep only these types (case-insensitive, e.g. ``["SHSY5Y"]``).
        min_cells: skip images with fewer annotated cells (LIVECell has a few nearly empty ones).
        problems: when given, missing images and bad annotations are appended here and
            skipped instead of raising (``cellseg data check``).
        notes: when given, receives counts of what was dropped by design (duplicates,
            images under ``min_cells``, degenerate polygons).
    Returns:
        Records sorted as in the JSON (source "livecell", image_id = file stem, cell_type from
        the name prefix, ``meta`` = {"livecell_id", "file_name", "split"}); RLE per cell.
    Raises:
        FileNotFoundError: no annotation file found;
        DataError (a ValueError): images not found or bad annotations, all listed.
    """
    from tqdm import tqdm

    root = Path(root)
    if annotation_file is None:
        files = find_annotation_files(root, split, cell_types)
    elif isinstance(annotation_file, (str, os.PathLike)):
        files = [Path(annotation_file)]
    else:
        files = [Path(f) for f in annotation_file]
    wanted = {t.lower() for t in cell_types} if cell_types else None
    image_index = index_images(root) if root.is_dir() else {}

    collected: list[str] = []
    records: list[ImageRecord] = []
    seen: set[str] = set()
    dropped = {"duplicate image entries": 0, "images under min_cells": 0,
               "empty (degenerate) annotations": 0}
    for path in files:
        data = read_json(path)
        # orphan annotations: the one rule of cellseg.data.coco (skipped, one note)
        by_image = annotations_by_image(data, path.name, notes)
        images = data["images"]
        for img in tqdm(images, desc=f"{path.name}", disable=True if len(images) < 50 else None,
                        leave=False):
            name = Path(str(img["file_name"])).name
            cell_type = cell_type_of(name)
            if wanted is not None and cell_type.lower() not in wanted:
                continue
            if name in seen:  # LIVECell quirk: the same image listed twice under two ids
                dropped["duplicate image entries"] += 1
                continue
            seen.add(name)
            anns = sorted(by_image[img["id"]], key=lambda a: a.get("id", 0))
            if len(anns) < min_cells:
                dropped["images under min_cells"] += 1
                continue
            h, w = int(img["height"]), int(img["width"])
            converted, bad = segmentations_to_rles(anns, h, w)
            collected.extend(f"{path.name}: annotation {ann_id} of {name}: {reason}"
                             for ann_id, reason in bad)
            rles = [r for r in converted if r]
            # degenerate polygons rasterise to nothing
            dropped["empty (degenerate) annotations"] += len(converted) - len(rles) - len(bad)
            if len(rles) < min_cells:
                dropped["images under min_cells"] += 1
                continue
            image_path = image_index.get(name)
            if image_path is None:
                image_path = _expected_path(root, split, name)
                collected.append(f"{path.name}: image {name} not found under {root} "
                                 f"(expected {image_path})")
                continue
            records.append(ImageRecord(
                image_id=Path(name).stem, image_path=image_path, height=h, width=w,
                cell_type=cell_type, source="livecell", rles=tuple(rles),
                meta={"livecell_id": img["id"], "file_name": name, "split": split,
                      "well": _well(name)}))
    if notes is not None:
        notes.extend(f"LIVECell {split}: {n} {what} dropped" for what, n in dropped.items() if n)
    if collected:
        if problems is None:
            from cellseg.data.sartorius import DataError

            raise DataError(f"LIVECell {split} under {root}: {len(collected)} problem(s)",
                            collected)
        problems.extend(collected)
    return records


_WELL = re.compile(r"^(?P<type>[^_]+)_Phase_(?P<well>[A-Z]\d+)_(?P<loc>\d+)_")


def _well(name: str) -> str | None:
    """``<CellType>_<Well>_<Location>``: frames of one time-lapse (a natural fold group)."""
    m = _WELL.match(name)
    return f"{m['type']}_{m['well']}_{m['loc']}" if m else None
