"""`cellseg score` end to end on the real samples: submission.csv and COCO results JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellseg.core import masks, metrics
from cellseg.cli import main
from cellseg.core.submission import write_submission
from test_metrics import _read_truth, perturb


def test_score_submission_end_to_end(tmp_path, shared_sartorius, capsys):
    image_id, truth = _read_truth(shared_sartorius)
    pred = perturb(truth, seed=4)
    sub = tmp_path / "submission.csv"
    write_submission(sub, [(image_id, pred)])
    out_json, report_dir = tmp_path / "score.json", tmp_path / "report"
    rc = main(["score", "--truth", str(shared_sartorius / "train.csv"), "--pred", str(sub),
               "--json", str(out_json), "--report", str(report_dir), "--max-overlays", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    want = metrics.score({image_id: truth}, {image_id: pred}).score
    assert f"competition score  {want:.4f}" in text
    assert "shsy5y" in text and "AP50=" in text and "0.95" in text
    result = json.loads(out_json.read_text())
    assert {"score", "per_image", "per_cell_type", "per_threshold", "counts",
            "coco"} <= set(result)
    assert result["score"] == pytest.approx(want)
    assert result["per_cell_type"] == {"shsy5y": pytest.approx(want)}
    assert result["counts"]["n_true"] == 395 and result["counts"]["n_pred"] == len(pred)
    assert 0 < result["coco"]["AP"] < result["coco"]["AP50"] < 1
    files = sorted(p.name for p in report_dir.iterdir())
    assert files == ["img", "index.html", f"overlay_{image_id}.png", "score_per_cell_type.png",
                     "score_vs_threshold.png"]
    import cv2

    img = cv2.imread(str(report_dir / f"overlay_{image_id}.png"))
    assert img.shape[1] == 704 and img.shape[0] >= 520
    # the outlines are drawn: green (TP), red (FP) and yellow (FN) pixels all present
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((g > 200) & (r < 60)).sum() > 1000
    assert ((r > 200) & (g < 60)).sum() > 50
    assert ((r > 200) & (g > 180) & (b < 60)).sum() > 200


def test_score_perfect_and_ids(tmp_path, shared_sartorius, capsys):
    image_id, truth = _read_truth(shared_sartorius)
    sub = tmp_path / "perfect.csv"
    # the truth overlaps, so write it without the writer's overlap check
    sub.write_text("id,predicted\n" + "".join(f"{image_id},{r}\n" for r in truth))
    assert main(["score", "--truth", str(shared_sartorius), "--pred", str(sub),
                 "--ids", image_id, "--no-coco", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["score"] == 1.0
    assert json.loads((tmp_path / "s.json").read_text())["coco"] is None
    assert main(["score", "--truth", str(shared_sartorius), "--pred", str(sub),
                 "--ids", "nope"]) == 2
    assert "not in the truth, e.g. ['nope'], --ids, use image ids of --truth" in \
        capsys.readouterr().err


def test_score_coco_results_with_extras_and_fold(tmp_path, shared_livecell, capsys):
    from cellseg.data.loaders import load_records
    records = load_records(shared_livecell, "val")
    records = [r for r in records if r.rles]
    assert len(records) == 5
    rng = np.random.default_rng(0)
    results = []
    for r in records:
        lab = masks.runs_from_rles(r.rles, r.shape)
        for seg in lab.to_coco()[: max(1, lab.n - 10)]:
            if seg is not None:
                results.append({"image_id": r.meta.get("livecell_id", r.image_id),
                                "category_id": 1, "segmentation": seg,
                                "score": float(rng.random()), "pred_iou": 0.75,
                                "stability": 0.5})
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    out = tmp_path / "s.json"
    assert main(["score", "--truth", str(shared_livecell), "--pred", str(res_path),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pred_iou=0.7500" in text and "stability=0.5000" in text
    result = json.loads(out.read_text())
    assert result["counts"]["n_images"] == 5
    assert 0.9 < result["score"] < 1.0  # 10 cells per image dropped
    assert result["coco"]["AP"] > 0.9 and result["coco"]["n_pred"] == len(results)
    assert len(result["per_cell_type"]) >= 3  # BT474, Huh7, MCF7
    # one fold of two, and --min-score dropping every prediction
    assert main(["score", "--truth", str(shared_livecell), "--pred", str(res_path),
                 "--fold", "0", "--n-folds", "2", "--min-score", "2", "--no-coco",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 < result["counts"]["n_images"] < 5 and result["score"] == 0.0


def test_score_matching_rules_on_duplicated_truth(tmp_path, capsys):
    """Two identical true masks, one prediction: score.json holds both rules, the table names
    the image whose score the rule changed, --matching picks the headline."""
    import cv2

    from cellseg.core import rle
    from cellseg.data import sartorius
    from cellseg.data.record import ImageRecord

    def rect(r0, r1, c0, c1):
        m = np.zeros((520, 704), bool)
        m[r0:r1, c0:c1] = True
        return rle.encode(m)

    root = tmp_path / "comp"
    (root / "train").mkdir(parents=True)
    a, b, c = rect(0, 10, 0, 10), rect(50, 60, 50, 60), rect(100, 110, 0, 10)
    recs = [ImageRecord("dup000000001", root / "train" / "dup000000001.png", 520, 704,
                        cell_type="shsy5y", rles=(a, a, b)),
            ImageRecord("clean0000002", root / "train" / "clean0000002.png", 520, 704,
                        cell_type="cort", rles=(c,))]
    sartorius.write_train_csv(recs, root / "train.csv")
    for r in recs:
        cv2.imwrite(str(r.image_path), np.full((520, 704), 128, np.uint8))
    sub = tmp_path / "submission.csv"
    write_submission(sub, [("dup000000001", [a, b]), ("clean0000002", [c])])
    for rule, headline in (("dsb", 1.0), ("greedy", (2 / 3 + 1) / 2)):
        out_json = tmp_path / f"{rule}.json"
        assert main(["score", "--truth", str(root), "--pred", str(sub), "--no-coco",
                     "--matching", rule, "--json", str(out_json)]) == 0
        text = capsys.readouterr().out
        assert f"competition score  {headline:.4f}" in text
        assert "the matching rule changes the score of 1 image(s)" in text
        assert "dup000000001" in text
        res = json.loads(out_json.read_text())
        assert res["matching"] == rule and res["score"] == pytest.approx(headline)
        assert res["score_by_matching"] == {"dsb": 1.0, "greedy": pytest.approx((2 / 3 + 1) / 2)}
        assert res["per_cell_type_by_matching"]["shsy5y"]["greedy"] == pytest.approx(2 / 3)
        assert res["n_images_per_cell_type"] == {"cort": 1, "shsy5y": 1}
        assert list(res["changed_by_matching"]) == ["dup000000001"]
