"""One entry point for every data source: ``load_records(path, split)``.

    from cellseg.data.loaders import load_records
    load_records("data/sartorius")                       # competition folder: train.csv images
    load_records("data/sartorius", "test")               # its test/ images (no annotations)
    load_records("data/sartorius/train.csv")             # the CSV itself
    load_records("data/LIVECell_dataset_2021", "val")    # LIVECell root (official or Kaggle mirror)
    load_records("coco.json")                            # COCO JSON (images next to it)

Detection order: a ``.csv`` file; a ``.json`` file; a folder with ``train.csv`` or ``test/``
(competition); a folder with LIVECell annotations or image folders; a folder of images.
"""

from __future__ import annotations

import os
from pathlib import Path

from cellseg.data.record import ImageRecord
from cellseg.errors import InputError

SEMI_SPLITS = ("semi", "train_semi_supervised", "unlabeled")


def detect(path: str | os.PathLike) -> str:
    """Kind of data at ``path``: "csv", "coco", "competition", "livecell" or "images"."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix == ".json":
            return "coco"
        raise InputError(f"unknown data file type {suffix or '(no suffix)'!r}", where=str(path),
                         fix="pass a .csv (train.csv), a .json (COCO) or a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "train.csv").is_file() or ((path / "test").is_dir() and (path / "train").is_dir()):
        return "competition"
    if (path / "annotations").is_dir() or any(
            (path / "images" / d).is_dir()
            for d in ("livecell_train_val_images", "livecell_test_images")):
        return "livecell"
    if any(p.suffix.lower() in (".png", ".tif", ".tiff") for p in path.iterdir()):
        return "images"
    raise InputError(
        "not a known data layout", where=str(path),
        fix="pass a competition folder (train.csv, train/, test/), a LIVECell root (images/, "
            "annotations/), a COCO .json, a train.csv or a folder of images")


def load_records(path: str | os.PathLike, split: str = "train", *, fill_holes: bool = False,
                 min_cells: int = 0, image_root: str | os.PathLike | None = None
                 ) -> list[ImageRecord]:
    """Load records from any supported layout (see the module docstring).

    Args:
        path: file or folder.
        split: competition: "train" (annotated), "test", "semi" (train_semi_supervised);
            LIVECell: "train", "val", "test". Ignored for CSV/COCO/image folders.
        fill_holes: competition only: fill mask holes (``sartorius.load_train``).
        min_cells: LIVECell/COCO only: skip images with fewer cells.
        image_root: COCO only: folder the ``file_name`` entries are relative to (default: the
            JSON's folder).
    """
    from cellseg.data import coco, livecell, sartorius

    path = Path(path)
    kind = detect(path)
    if kind == "csv":
        return sartorius.load_train(path, fill_holes=fill_holes)
    if kind == "coco":
        return coco.coco_to_records(path, image_root, min_cells=min_cells)
    if kind == "images":
        return sartorius.list_images(path)
    if kind == "competition":
        if split == "train":
            return sartorius.load_train(path, fill_holes=fill_holes)
        if split == "test":
            return sartorius.list_test(path)
        if split in SEMI_SPLITS:
            return sartorius.list_semi_supervised(path)
        raise ValueError(f"competition folder {path}: split must be 'train', 'test' or 'semi', "
                         f"got {split!r}")
    return livecell.load(path, split, min_cells=min_cells)
