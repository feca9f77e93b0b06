"""COCO JSON <-> records, and COCO segmentations -> competition RLE.

    from cellseg.data import coco
    data = coco.records_to_coco(records)                 # dict, json.dump-able
    records = coco.coco_to_records(data, "data/sartorius/train")

COCO JSON written here uses compressed COCO RLE segmentations (``cellseg.core.coco_rle.rle_to_coco``,
identical to pycocotools' own encoding), one category (``cell``, id 1), ``iscrowd`` 0, tight
``bbox`` [x, y, w, h] and integer ``area`` in pixels. Image entries carry ``file_name``,
``width``, ``height`` and, beyond the COCO standard, ``cell_type``, ``sample_id``, ``source``
and ``meta`` (the remaining train.csv columns), so a train.csv survives the round trip
train.csv -> COCO JSON -> train.csv byte for byte.

Reading accepts polygon segmentations (LIVECell), uncompressed and compressed RLE, and the
Kaggle LIVECell mirror's shape (``annotations`` as a dict keyed by id).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.core import coco_rle
from cellseg.core.masks import runs_from_rles
from cellseg.data.record import ImageRecord
from cellseg.errors import InputError

CATEGORY = {"id": 1, "name": "cell", "supercategory": "cell"}


# LIVECell's cell types and file-name convention live here, not in ``livecell``, because any COCO
# file with LIVECell-style names gets its cell type from them (and livecell imports this module)
CELL_TYPES: tuple[str, ...] = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")


def cell_type_of(file_name: str) -> str:
    """Cell type from a LIVECell file name prefix, canonical spelling (``shsy5y_...`` -> SHSY5Y)."""
    prefix = Path(file_name).name.split("_", 1)[0]
    canonical = {t.lower(): t for t in CELL_TYPES}
    return canonical.get(prefix.lower(), prefix)


def annotations_list(coco: Mapping[str, Any]) -> list[dict]:
    """``coco["annotations"]`` as a list; the Kaggle LIVECell mirror stores a dict keyed by id
    (pycocotools crashes on it)."""
    anns = coco.get("annotations", [])
    return list(anns.values()) if isinstance(anns, Mapping) else list(anns)


def annotations_by_image(coco: Mapping[str, Any], name: str,
                         notes: list[str] | None = None) -> dict[Any, list[dict]]:
    """``{image id: [annotations]}`` for every entry of ``coco["images"]`` (in file order).

    The one rule for orphan annotations (an ``image_id`` with no image entry), whichever loader
    reads the file (a COCO JSON named directly, a LIVECell folder, ``cellseg data check``): they
    belong to no image, so no record changes by dropping them; they are skipped and ONE note
    counts them (``name``: the file, in the note). The note goes to ``notes`` when given (``data
    check`` prints it), else to ``warnings.warn``. Never an error.
    """
    per_image: dict[Any, list[dict]] = {img["id"]: [] for img in coco.get("images", [])}
    orphans = []
    for ann in annotations_list(coco):
        target = per_image.get(ann.get("image_id"))
        if target is None:
            orphans.append(ann)
        else:
            target.append(ann)
    if orphans:
        msg = (f"{name}: {len(orphans)} annotation(s) refer to images not in the file (e.g. "
               f"annotation {orphans[0].get('id')} -> image {orphans[0].get('image_id')!r}); "
               "skipped")
        if notes is not None:
            notes.append(msg)
        else:
            import warnings

            warnings.warn(msg, stacklevel=3)
    return per_image


def _to_coco_rle(segmentation: Any, height: int, width: int) -> dict | None:
    """One COCO segmentation -> a pycocotools RLE dict of (height, width); None when empty."""
    from pycocotools import mask as mask_utils  # lazy: keep `import cellseg` light

    if isinstance(segmentation, Mapping):
        size = segmentation.get("size") or [height, width]
        if [int(v) for v in size] != [int(height), int(width)]:
            raise ValueError(f"RLE size {list(size)} != image size {[height, width]}")
        return {"size": [int(height), int(width)], "counts": segmentation["counts"]}
    # polygons with fewer than 3 points are dropped: pycocotools would read 4 numbers as a box
    polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
        return None
    rles = mask_utils.frPyObjects(polygons, int(height), int(width))
    return mask_utils.merge(rles) if len(rles) > 1 else rles[0]


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> str:
    """One COCO segmentation (polygon list, uncompressed or compressed RLE) -> competition RLE.

    Polygons are rasterised by pycocotools (``frPyObjects(seg, h, w)``, merged), exactly as COCO
    evaluation does; polygons with fewer than 3 points are ignored. Returns ``""`` when nothing
    is left (the caller drops the instance).
    """
    coco = _to_coco_rle(segmentation, height, width)
    return "" if coco is None else coco_rle.from_coco(coco)


def segmentations_to_rles(annotations: Sequence[Mapping], height: int, width: int
                          ) -> tuple[list[str], list[tuple[Any, str]]]:
    """The segmentations of one image's annotations -> competition RLE strings, vectorised.

    Returns:
        ``(rles, problems)``: one string per annotation in order (``""`` for an empty one or a
        bad one) and ``[(annotation id, reason), ...]`` for the bad ones.
    """
    problems: list[tuple[Any, str]] = []
    cocos: list[dict | None] = []
    for ann in annotations:
        try:
            cocos.append(_to_coco_rle(ann["segmentation"], height, width))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            problems.append((ann.get("id"), f"bad segmentation ({err})"))
            cocos.append(None)
    keep = [i for i, c in enumerate(cocos) if c is not None]
    out = [""] * len(cocos)
    try:
        for i, r in zip(keep, coco_rle.coco_to_rles([cocos[i] for i in keep])):
            out[i] = r
    except (ValueError, TypeError):  # find the culprit(s), one at a time
        for i in keep:
            try:
                out[i] = coco_rle.from_coco(cocos[i])
            except (ValueError, TypeError) as err:
                problems.append((annotations[i].get("id"), f"bad segmentation ({err})"))
    return out, problems


def records_to_coco(records: Sequence[ImageRecord], *, image_root: str | os.PathLike | None = None,
                    image_ids: Sequence[int] | None = None, polygons: bool = False) -> dict:
    """Records -> a COCO JSON dict (images numbered 1.., annotations numbered 1..).

    ``file_name`` is the image path relative to ``image_root`` when given (and under it), else
    the bare file name. Empty RLEs are skipped.

    Args:
        image_ids: the COCO image ids, one per record (default 1..N; LIVECell's are not).
        polygons: write each cell as its outline polygon (``mask_polygon``, LIVECell's format)
            instead of compressed COCO RLE; ``bbox`` and ``area`` stay the mask's.
    """
    from tqdm import tqdm

    images, annotations = [], []
    root = Path(image_root).resolve() if image_root is not None else None
    n_cells = sum(r.n_instances for r in records)
    bar = tqdm(total=n_cells, desc="to COCO", unit="cell", disable=True if n_cells < 5000 else None,
               leave=False)
    if image_ids is not None and len(image_ids) != len(records):
        raise ValueError(f"records_to_coco got {len(image_ids)} image ids for {len(records)} "
                         f"records")
    ids = range(1, len(records) + 1) if image_ids is None else [int(i) for i in image_ids]
    for img_id, rec in zip(ids, records):
        path = Path(rec.image_path)
        name = path.name
        if root is not None:
            try:
                name = path.resolve().relative_to(root).as_posix()
            except ValueError:
                pass
        entry = {"id": img_id, "file_name": name, "width": int(rec.width),
                 "height": int(rec.height), "cell_type": rec.cell_type,
                 "sample_id": rec.sample_id, "source": rec.source, "image_key": rec.image_id}
        if rec.meta:
            entry["meta"] = {k: _plain(v) for k, v in rec.meta.items()}
        images.append(entry)
        rles = [r for r in rec.rles if r.strip()]
        # one vectorised pass per image for segmentations, boxes and areas
        runs = runs_from_rles(rles, rec.shape)
        boxes, areas = runs.boxes(), runs.areas
        if polygons:
            segs = [[mask_polygon(box, crop)] for box, crop in runs.crops()]
        else:
            segs = coco_rle.rles_to_coco(rles, rec.shape)
        boxes[:, 2:] -= boxes[:, :2]  # COCO [x, y, w, h]
        for seg, box, area in zip(segs, boxes.tolist(), areas.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": img_id, "category_id": CATEGORY["id"],
                "segmentation": seg, "area": area, "bbox": box, "iscrowd": 0})
        bar.update(rec.n_instances)
    bar.close()
    return {"info": {"description": "written by cellseg"}, "images": images,
            "annotations": annotations, "categories": [dict(CATEGORY)]}


def mask_polygon(box: Sequence[int], mask: np.ndarray) -> list[float]:
    """The outline of a crop mask (the (h, w) bool mask of ``box`` x0, y0, x1, y1) as a COCO
    polygon ``[x1, y1, x2, y2, ...]`` in image coordinates; the largest part's outline when the
    mask has several.

    Contours are traced on a 4x nearest-neighbour upscale and mapped back, so the polygon follows
    pixel EDGES (within 1/8 px) rather than pixel centres. pycocotools treats pixel x as the
    interval [x, x + 1), so rasterising the polygon gives back nearly the same mask even for
    cells a few pixels wide.
    """
    import cv2  # lazy: only polygon output needs it

    up = cv2.resize(np.asarray(mask, np.uint8), None, fx=4, fy=4,
                    interpolation=cv2.INTER_NEAREST)
    up = np.pad(up, 1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, 2.0, True)[:, 0, :].astype(np.float64)  # 2 px at 4x = 0.5 px
    xy = (c - 1 + 0.5) / 4 + (int(box[0]), int(box[1]))  # -1: the padding; +0.5: 4x centre
    return [round(float(v), 2) for v in xy.ravel()]


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


class _ImageFinder:
    """``root/name``, else ``root/<cell type>/name`` (LIVECell's per-type folders), else the
    first file of that name anywhere under ``root`` (indexed once, on first need)."""

    def __init__(self, root: Path):
        self.root = root
        self._index: dict[str, Path] | None = None

    def __call__(self, name: str, cell_type: str | None) -> Path:
        direct = self.root / name
        if direct.exists():
            return direct
        if cell_type is not None and (self.root / cell_type / Path(name).name).exists():
            return self.root / cell_type / Path(name).name
        if self._index is None:
            self._index = {}
            if self.root.is_dir():
                for p in sorted(self.root.rglob("*")):
                    self._index.setdefault(p.name, p)
        return self._index.get(Path(name).name, direct)


def _cell_type(img: Mapping[str, Any]) -> str | None:
    """The entry's ``cell_type``, else a LIVECell name prefix (``MCF7_Phase_...`` -> MCF7)."""
    if img.get("cell_type"):
        return str(img["cell_type"])
    guess = cell_type_of(str(img.get("file_name", "")))
    return guess if guess in CELL_TYPES else None


def coco_to_records(coco: Mapping[str, Any] | str | os.PathLike,
                    image_root: str | os.PathLike | None = None, *,
                    source: str | None = None, min_cells: int = 0,
                    notes: list[str] | None = None) -> list[ImageRecord]:
    """COCO JSON (dict or file path) -> records, in the order of ``coco["images"]``.

    Args:
        coco: the JSON dict or a path to it.
        image_root: folder the ``file_name`` entries are relative to (default: the JSON's
            folder when a path is given, else the current folder).
        source: record source; default the image entry's ``source`` or ``"coco"``.
        min_cells: skip images with fewer annotations.
        notes: receives the note about orphan annotations (``annotations_by_image``: skipped,
            never an error); without it the note goes through ``warnings.warn``.
    Returns:
        One record per image; ``image_id`` is the entry's ``image_key`` (written by
        ``records_to_coco``) or the file stem; cell type from the entry's ``cell_type`` or a
        LIVECell file-name prefix; images found as ``root/file_name``, ``root/<type>/name`` or
        by name anywhere under ``root``.
    Raises:
        cellseg.errors.InputError (a ValueError): not JSON, or a bad segmentation (the message
            names the annotation id).
    """
    coco_name = None
    if not isinstance(coco, Mapping):
        path = coco_name = Path(coco)
        with open(path) as fh:
            try:
                coco = json.load(fh)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc})", where=str(path),
                                 fix="pass a COCO annotation file") from None
        if image_root is None:
            image_root = path.parent
    root = Path(image_root) if image_root is not None else Path(".")
    find_image = _ImageFinder(root)
    per_image = annotations_by_image(coco, name=Path(coco_name).name if coco_name else "the COCO "
                                     "file", notes=notes)
    records = []
    for img in coco.get("images", []):
        anns = sorted(per_image[img["id"]], key=lambda a: a.get("id", 0))
        h, w = int(img["height"]), int(img["width"])
        converted, problems = segmentations_to_rles(anns, h, w)
        if problems:
            ann_id, reason = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputError(f"bad segmentation of annotation {ann_id} of image "
                             f"{img.get('file_name')}: {reason}{more}",
                             fix="`cellseg data check` lists every problem")
        rles = [r for r in converted if r]
        if len(rles) < min_cells:
            continue
        name = str(img["file_name"])
        cell_type = _cell_type(img)
        meta = dict(img.get("meta") or {})
        meta.setdefault("coco_id", img["id"])
        records.append(ImageRecord(
            image_id=str(img.get("image_key") or Path(name).stem),
            image_path=find_image(name, cell_type), height=h, width=w,
            cell_type=cell_type, source=source or img.get("source") or "coco",
            sample_id=img.get("sample_id"), rles=tuple(rles), meta=meta))
    return records
