"""The one writer of predict's outputs: CSV rows, COCO results, masks and overlays from one label
image per image, checked against the competition RLE codec and the COCO converter."""

from __future__ import annotations

import csv
import json

import numpy as np

from cellseg.core import coco_rle
from cellseg.core.instances import Instances
from cellseg.infer.output import PredictionWriter


def _instances(shape, boxes, scores, **extra) -> Instances:
    masks = np.zeros((len(boxes), *shape), bool)
    for m, (y0, x0, y1, x1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return Instances.from_dense(masks, scores=np.asarray(scores, np.float32), **extra)


def test_writer_rows_and_coco_results_agree_for_images_of_two_sizes(tmp_path):
    a = _instances((20, 30), [(1, 1, 5, 9), (10, 3, 18, 12)], [0.9, 0.6],
                   pred_iou=np.array([0.8, 0.7]))
    # the second cell of b is covered by the first: an emptied instance has no output
    b = _instances((64, 40), [(2, 2, 30, 30), (5, 5, 9, 9), (40, 1, 60, 39)], [0.8, 0.1, 0.5])
    b = Instances(b.image_shape, b.boxes, [b.masks[0], b.masks[1] & False, b.masks[2]],
                  b.scores, b.labels)
    sub, res = tmp_path / "sub.csv", tmp_path / "res.json"
    with PredictionWriter(sub, results=res, save_masks=tmp_path / "m") as w:
        w.add("a", a)
        w.add("b", b)
    w.validate()  # per-image sizes: b's rows reach beyond a 20x30 image
    with open(sub, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert [r[0] for r in rows] == ["a", "a", "b", "b"]
    assert rows[0][1] == a.to_rles()[0] and rows[3][1] == b.to_rles()[2]
    entries = json.loads(res.read_text())
    assert [e["image_id"] for e in entries] == ["a", "a", "b", "b"]
    assert [e["score"] for e in entries] == [np.float32(0.9), np.float32(0.6), np.float32(0.8),
                                             np.float32(0.5)]
    assert [e.get("pred_iou") for e in entries[:2]] == [0.8, 0.7]
    # the COCO RLE equals the one converted from the written CSV text (the old route)
    shapes = {"a": (20, 30), "b": (64, 40)}
    for row, e in zip(rows, entries):
        assert e["segmentation"] == coco_rle.rle_to_coco(row[1], shapes[row[0]])
    assert (tmp_path / "m" / "b.png").exists()
