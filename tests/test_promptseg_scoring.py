"""promptseg masks carry a predicted IoU and a stability score through predict -> COCO results
JSON -> `cellseg score`, which prints their averages (as the seed study reported)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import torch

from cellseg.core import rle  # noqa: E402
from cellseg.core import coco_rle
from cellseg.cli import main  # noqa: E402
from cellseg.core.instances import Instances  # noqa: E402
from cellseg.models.promptseg import FAMILY  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402
from tests.test_promptseg import TINY_CROP, ellipse_image  # noqa: E402


def test_predict_results_json_feeds_score_extras(tmp_path: Path, monkeypatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from cellseg.config import from_dict
    from cellseg.data.record import ImageRecord
    from cellseg.infer import predict
    from cellseg.infer.config import InferenceConfig
    from cellseg.io import write_png

    torch.manual_seed(0)
    img, masks = ellipse_image(3, (96, 96))
    model = FAMILY.build(**TINY_CROP).eval()
    gt = pipeline_target(FAMILY, masks, np.zeros(len(masks)))["boxes"].numpy().astype(np.int32)
    # oracle boxes: the mask path runs deterministically without a trained detector
    monkeypatch.setattr(FAMILY, "detect", lambda m, x: [
        Instances(tuple(x.shape[-2:]), gt, [np.ones((b[3] - b[1], b[2] - b[0]), bool) for b in gt],
                  np.full(len(gt), 0.9), np.zeros(len(gt))) for _ in range(len(x))])
    write_png(tmp_path / "img0.png", img)
    records = [ImageRecord("img0", tmp_path / "img0.png", 96, 96, source="synthetic")]
    cfg = from_dict(InferenceConfig, {"default": {"score_thresh": 0.0}})
    sub, results = tmp_path / "submission.csv", tmp_path / "results.json"
    opts = predict.PredictOptions(progress=False, results=results)
    assert predict.predict_to_submission([(model, FAMILY, 1.0)], records, cfg, sub, opts) == 0
    entries = json.loads(results.read_text())
    n_rows = len(sub.read_text().strip().splitlines()) - 1
    assert len(entries) == n_rows >= 1
    for e in entries:
        assert 0.0 <= e["stability"] <= 1.0 and np.isfinite(e["pred_iou"])
        assert e["image_id"] == "img0" and e["segmentation"]["size"] == [96, 96]
    # the COCO RLEs decode to exactly the submission's masks
    csv_rles = [line.split(",")[1] for line in sub.read_text().strip().splitlines()[1:]]
    assert sorted(coco_rle.from_coco(e["segmentation"]) for e in entries) == sorted(csv_rles)

    truth = tmp_path / "train.csv"
    truth.write_text("id,annotation,width,height\n" + "".join(
        f"img0,{rle.encode(m)},96,96\n" for m in masks))
    out_json = tmp_path / "score.json"
    assert main(["score", "--truth", str(truth), "--pred", str(results), "--json", str(out_json),
                 "--no-coco"]) == 0
    printed = capsys.readouterr().out
    assert "prediction averages: " in printed and "pred_iou=" in printed and "stability=" in printed
    extras = json.loads(out_json.read_text())["pred_extras"]
    assert extras["stability"] == pytest.approx(np.mean([e["stability"] for e in entries]))
