"""LIVECell loading: the real val sample, the Kaggle-mirror shape, duplicates, min_cells, RLE input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cellseg.core import rle
from cellseg.core import coco_rle
from cellseg.data import livecell
from cellseg.data.coco import segmentation_to_rle
from cellseg.data.loaders import detect, load_records

VAL_JSON = Path("annotations/LIVECell/livecell_coco_val.json")


@pytest.fixture(scope="module")
def real(shared_livecell):
    return livecell.load(shared_livecell, "val")


@pytest.fixture(scope="module")
def val_json(shared_livecell):
    with open(shared_livecell / VAL_JSON) as fh:
        return json.load(fh)


def mirror_root(tmp_path: Path, shared: Path, data: dict, per_type: bool = True) -> Path:
    """A Kaggle-mirror-shaped root: images linked flat, annotations as a dict keyed by id."""
    root = tmp_path / "LIVECell_dataset_2021"
    flat = root / "images" / "livecell_train_val_images"
    flat.mkdir(parents=True)
    for img in data["images"]:
        src = next((shared / "images").rglob(img["file_name"]))
        os.symlink(src, flat / img["file_name"])
    data = dict(data, annotations={str(a["id"]): a for a in data["annotations"]})
    if per_type:  # one file per cell type, Kaggle's naming
        for t in {livecell.cell_type_of(i["file_name"]) for i in data["images"]}:
            keep = [i for i in data["images"] if livecell.cell_type_of(i["file_name"]) == t]
            ids = {i["id"] for i in keep}
            anns = {k: a for k, a in data["annotations"].items() if a["image_id"] in ids}
            folder = root / "annotations" / "LIVECell_single_cells" / t.lower()
            folder.mkdir(parents=True)
            (folder / f"livecell_{t.lower()}_val.json").write_text(
                json.dumps(dict(data, images=keep, annotations=anns)))
    else:
        (root / "annotations").mkdir()
        (root / "annotations" / "livecell_coco_val.json").write_text(json.dumps(data))
    return root


def test_real_val_sample(real, val_json):
    assert len(real) == 5 and sum(r.n_instances for r in real) == 1243
    assert sorted(r.cell_type for r in real) == ["BT474", "BT474", "Huh7", "MCF7", "MCF7"]
    for rec in real:
        assert rec.source == "livecell" and rec.shape == (520, 704)
        assert rec.image_path.parent.name == rec.cell_type  # <CellType>/ folder inserted
        assert rec.image_path.is_file() and rec.image_id == rec.image_path.stem
    # spot-check rasterisation against pycocotools on the full image
    from pycocotools import mask as mask_utils

    first = real[0]
    anns = sorted((a for a in val_json["annotations"] if a["image_id"] == first.meta["livecell_id"]),
                  key=lambda a: a["id"])
    for ann, text in list(zip(anns, first.rles))[:40]:
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 520, 704)))
        assert np.array_equal(rle.decode(text), ref.astype(bool))


def test_kaggle_mirror_per_type_files_load_identically(tmp_path, shared_livecell, real, val_json):
    root = mirror_root(tmp_path, shared_livecell, val_json, per_type=True)
    mirrored = livecell.load(root, "val")
    key = lambda r: r.image_id  # noqa: E731 - per-type files come in type order
    assert [(r.image_id, r.cell_type, r.rles) for r in sorted(mirrored, key=key)] == \
        [(r.image_id, r.cell_type, r.rles) for r in sorted(real, key=key)]
    only = livecell.load(root, "val", cell_types=["mcf7"])
    assert {r.cell_type for r in only} == {"MCF7"} and len(only) == 2


def test_kaggle_mirror_combined_dict_file(tmp_path, shared_livecell, real, val_json):
    root = mirror_root(tmp_path, shared_livecell, val_json, per_type=False)
    assert detect(root) == "livecell"
    mirrored = load_records(root, "val")
    assert [r.rles for r in mirrored] == [r.rles for r in real]


def test_duplicates_min_cells_and_rle_segmentations(tmp_path, shared_livecell, val_json):
    data = json.loads(json.dumps(val_json))
    dup = dict(data["images"][1], id=999_999_999)  # same file name, another id
    data["images"].append(dup)
    # the duplicate's annotations, written as RLE instead of polygons
    h, w = dup["height"], dup["width"]
    src = [a for a in data["annotations"] if a["image_id"] == data["images"][1]["id"]]
    for k, a in enumerate(src):
        coco = coco_rle.rle_to_coco(segmentation_to_rle(a["segmentation"], h, w), (h, w))
        data["annotations"].append(dict(a, id=10**9 + k, image_id=dup["id"], segmentation=coco))
    # a degenerate polygon (2 points) must be dropped, not read as a box
    data["annotations"].append(dict(src[0], id=2 * 10**9, segmentation=[[1.0, 1.0, 5.0, 5.0]]))
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    notes: list[str] = []
    recs = livecell.load(shared_livecell, "val", annotation_file=path, notes=notes)
    assert len(recs) == 5 and sum(r.n_instances for r in recs) == 1243
    assert any("1 duplicate image entries" in n for n in notes)
    assert any("1 empty (degenerate)" in n for n in notes)
    # the duplicate's RLE segmentations decode to the same cells as the polygons
    data["images"] = [dup]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == dup["id"]]
    path.write_text(json.dumps(data))
    from_rle = livecell.load(shared_livecell, "val", annotation_file=path)
    by_poly = [r for r in recs if r.image_id == from_rle[0].image_id][0]
    assert from_rle[0].rles == by_poly.rles
    # min_cells: 73 (Huh7) and 108 (MCF7) are below 150
    kept = livecell.load(shared_livecell, "val", min_cells=150)
    assert sorted(r.n_instances for r in kept) == [174, 177, 711]


def test_missing_images_are_listed(tmp_path, val_json):
    path = tmp_path / "val.json"
    path.write_text(json.dumps(val_json))
    with pytest.raises(ValueError, match="5 problem"):
        livecell.load(tmp_path, "val", annotation_file=path)
    problems: list[str] = []
    assert livecell.load(tmp_path, "val", annotation_file=path, problems=problems) == []
    assert len(problems) == 5 and "MCF7_Phase_G4_2_02d16h00m_1.tif not found" in problems[0]


def test_no_annotations_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="livecell_coco_train.json"):
        livecell.load(tmp_path, "train")


def test_cell_type_of():
    assert livecell.cell_type_of("SHSY5Y_Phase_B10_1_00d04h00m_1.tif") == "SHSY5Y"
    assert livecell.cell_type_of("skbr3_Phase_x.tif") == "SkBr3"


def test_official_json_read_as_plain_coco(shared_livecell, real):
    # a LIVECell JSON given straight to load_records: cell types from names, images found
    recs = load_records(shared_livecell / VAL_JSON, image_root=shared_livecell / "images")
    assert [(r.image_id, r.cell_type, r.rles) for r in recs] == \
        [(r.image_id, r.cell_type, r.rles) for r in real]
    assert all(r.image_path == x.image_path for r, x in zip(recs, real))
