"""Synthetic generator: determinism, realism statistics, both layouts read back by the loaders."""

from __future__ import annotations

import csv
import filecmp
import json
import re

import numpy as np
import pytest

from cellseg.core import rle as rle_codec
from cellseg.data import synthetic
from cellseg.data.synthetic import render, scene

SMALL = (128, 128)

# per 520x704 image; real train.csv means: shsy5y 337, astro 80, cort 34 cells per image
COUNT_RANGE = {"shsy5y": (120, 460), "astro": (15, 110), "cort": (10, 95),
               "A172": (50, 210), "BT474": (100, 400), "MCF7": (130, 460), "SHSY5Y": (70, 310)}
# median cell area (px): real shsy5y sample 268; astro cells are large, cort small and round
AREA_RANGE = {"shsy5y": (150, 450), "astro": (700, 3500), "cort": (120, 400)}


def test_render_is_deterministic_per_seed():
    img1, masks1 = render("cort", 3, SMALL)
    img2, masks2 = render("cort", 3, SMALL)
    assert img1.tobytes() == img2.tobytes()
    assert len(masks1) == len(masks2) and all((a == b).all() for a, b in zip(masks1, masks2))
    img3, _ = render("cort", 4, SMALL)
    assert img1.tobytes() != img3.tobytes()
    # a sequence seed and the cell type both change the result too
    assert scene("cort", (3, 1), SMALL)[0].tobytes() != img1.tobytes()
    assert render("shsy5y", 3, SMALL)[0].tobytes() != img1.tobytes()


@pytest.mark.parametrize("cell_type", list(synthetic.MORPHOLOGIES))
def test_small_render_has_valid_masks(cell_type):
    image, masks = render(cell_type, 0, SMALL)
    assert image.shape == SMALL and image.dtype == np.uint8
    assert len(masks) >= 1
    assert all(m.shape == SMALL and m.dtype == bool and m.any() for m in masks)


def test_tiny_frames_always_get_a_cell():
    for cell_type in synthetic.MORPHOLOGIES:
        for seed in range(8):
            image, masks = render(cell_type, seed, (40, 48))
            assert image.shape == (40, 48) and masks and all(m.any() for m in masks)


@pytest.mark.parametrize("cell_type", list(synthetic.MORPHOLOGIES))
def test_full_size_statistics(cell_type):
    image, cells = scene(cell_type, 11)
    assert image.shape == (520, 704) and image.dtype == np.uint8
    # real images: mean 128.0, std 6.6-14.7 (../shared/data); noise + cells, not a flat field
    assert 126 <= image.mean() <= 130
    assert 2.5 <= image.std() <= 20
    lo, hi = COUNT_RANGE[cell_type]
    assert lo <= len(cells) <= hi, f"{cell_type}: {len(cells)} cells"
    areas = np.array([c.mask.sum() for c in cells])
    assert (areas >= 20).all()
    if cell_type in AREA_RANGE:
        lo, hi = AREA_RANGE[cell_type]
        assert lo <= np.median(areas) <= hi, f"{cell_type}: median area {np.median(areas)}"
    cover = np.zeros(image.shape, np.int16)
    for c in cells:
        h, w = c.mask.shape
        cover[c.y0:c.y0 + h, c.x0:c.x0 + w] += c.mask
    overlap = (cover > 1).sum() / max(1, (cover > 0).sum())
    assert overlap < 0.05, "masks must be mostly disjoint"
    if cell_type in ("shsy5y", "astro"):  # like train.csv, a few masks overlap a neighbour
        assert (cover > 1).any()
    # cells have bright halos: the ring just outside the masks is brighter than the background
    import cv2

    inside = cover > 0
    ring = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~inside
    assert image[ring].mean() > image[inside].mean() + 2


def test_crop_rle_equals_full_frame_encode():
    cells = [c for seed in range(3) for c in scene("astro", seed, (96, 80))[1]]
    cells += scene("MCF7", 0, (96, 80))[1]
    # crops touching both side borders make full-width rows: runs continue across rows there
    assert any(c.x0 == 0 for c in cells) and any(c.x0 + c.mask.shape[1] == 80 for c in cells)
    assert any(c.x0 == 0 and c.mask.shape[1] == 80 for c in cells)
    for c in cells:
        full = c.full((96, 80))
        assert c.rle((96, 80)) == rle_codec.encode(full)
        assert (rle_codec.decode(c.rle((96, 80)), (96, 80)) == full).all()


def test_polygons_rasterise_back_to_the_masks():
    from cellseg.data.coco import segmentation_to_rle

    ious = []
    for cell_type in ("cort", "shsy5y", "astro", "MCF7"):
        _, cells = scene(cell_type, 2, (200, 240))
        for c in cells:
            back = rle_codec.decode(segmentation_to_rle([synthetic._polygon(c)], 200, 240),
                                    (200, 240))
            full = c.full((200, 240))
            ious.append((back & full).sum() / (back | full).sum())
    assert np.mean(ious) > 0.97 and np.min(ious) > 0.8


def test_unknown_cell_type_lists_the_valid_ones():
    with pytest.raises(KeyError, match="astro"):
        render("hela", 0, SMALL)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    counts = synthetic.generate(out, n_images=4, seed=0, n_test=2, n_semi=1, n_livecell=3)
    return out, counts


def test_generate_competition_layout(generated):
    out, counts = generated
    comp = out / "competition"
    assert json.loads((out / "synth_summary.json").read_text()) == counts
    with open(comp / "train.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == synthetic.CSV_COLUMNS
    per_image: dict[str, int] = {}
    samples: dict[str, set[str]] = {}
    for r in rows[1:]:
        image_id, ann, width, height, cell_type, plate_time, date, sample_id, elapsed = r
        assert re.fullmatch(r"[0-9a-f]{12}", image_id)
        assert (width, height) == ("704", "520") and cell_type in synthetic.COMPETITION_TYPES
        assert re.fullmatch(r"\d\dh\d\dm00s", plate_time) and re.fullmatch(r"2019-\d\d-\d\d", date)
        assert re.fullmatch(r"\d+ days \d\d:\d\d:00", elapsed)
        assert sample_id.startswith(cell_type + "[")
        per_image[image_id] = per_image.get(image_id, 0) + 1
        samples.setdefault(sample_id, set()).add(image_id)
    assert per_image == counts["competition"]["train"]["per_image"]
    assert {r[4] for r in rows[1:]} == set(synthetic.COMPETITION_TYPES)
    assert any(len(ids) > 1 for ids in samples.values()), "time-lapse frames share a sample_id"
    assert sorted(p.stem for p in (comp / "train").glob("*.png")) == sorted(per_image)
    assert len(list((comp / "test").glob("*.png"))) == 2
    assert len(list((comp / "train_semi_supervised").glob("*.png"))) == 1
    sub = (comp / "sample_submission.csv").read_text().splitlines()
    assert sub[0] == "id,predicted" and len(sub) == 3


def test_generate_competition_loads_back(generated):
    from cellseg.data import sartorius

    out, counts = generated
    records = sartorius.load_train(out / "competition")
    want = counts["competition"]["train"]["per_image"]
    assert {r.image_id: r.n_instances for r in records} == want
    rec = records[0]
    image = rec.read_image()
    assert image.shape == (520, 704) and image.dtype == np.uint8
    masks = rec.masks()
    assert masks.any(axis=(1, 2)).all()
    # the PNG and RLEs are exactly what scene() made for the first frame
    ref_image, ref_cells = scene(rec.cell_type, (0, 3, 0), layout_seed=(0, 2, 0))
    assert (image == ref_image).all()
    assert all((m == c.full((520, 704))).all() for m, c in zip(masks, ref_cells))
    assert len(sartorius.list_test(out / "competition")) == 2


def test_generate_livecell_loads_back(generated):
    from cellseg.data import livecell

    out, counts = generated
    root = out / "livecell"
    data = json.loads((root / "annotations/LIVECell/livecell_coco_val.json").read_text())
    assert set(data) == {"info", "licenses", "categories", "images", "annotations"}
    assert data["categories"] == [{"supercategory": "cell", "id": 1, "name": "cell"}]
    ann = data["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    assert "/" not in data["images"][0]["file_name"]
    assert all(isinstance(a["segmentation"], list) for a in data["annotations"])  # polygons
    assert all(i["id"] >= 100_000 for i in data["images"])  # LIVECell-style ids, not 1..N
    ious = []
    for index, split in enumerate(("train", "val", "test")):
        records = livecell.load(root, split=split)
        want = counts["livecell"][split]["per_image"]
        assert {r.image_id: r.n_instances for r in records} == want
        assert len(records) == 1
        rec = records[0]
        folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        assert rec.image_path.parent == root / "images" / folder / rec.cell_type
        cell_type, image, cells = synthetic._livecell_scene(0, index)
        assert rec.cell_type == cell_type and (rec.read_image() == image).all()
        assert rec.meta["livecell_id"] == data["images"][0]["id"] or split != "val"
        for m, c in zip(rec.masks(), cells):
            full = c.full((520, 704))
            ious.append((m & full).sum() / (m | full).sum())
    assert np.mean(ious) > 0.9


def test_generate_is_deterministic(generated, tmp_path):
    out, _ = generated
    synthetic.generate(tmp_path, n_images=4, seed=0, n_test=2, n_semi=1, n_livecell=3)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all(filecmp.cmp(out / f, tmp_path / f, shallow=False) for f in files)


def test_generate_other_seed_differs(tmp_path):
    a = synthetic.generate(tmp_path / "a", n_images=1, seed=1, n_test=0, n_semi=0, n_livecell=0)
    b = synthetic.generate(tmp_path / "b", n_images=1, seed=2, n_test=0, n_semi=0, n_livecell=0)
    assert a["competition"]["train"]["per_image"] != b["competition"]["train"]["per_image"]
    assert a["livecell"]["train"]["images"] == 0
    assert (tmp_path / "a/livecell/annotations/LIVECell/livecell_coco_test.json").exists()
    with pytest.raises(ValueError, match="n_images"):
        synthetic.generate(tmp_path / "c", n_images=-1)
