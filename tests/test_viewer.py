"""The results viewer (cellseg.viewer): outcomes, layers, the page's numbers, the commands that
write it. The page in a real browser: tests/test_viewer_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellseg.core import metrics
from cellseg.core.masks import Runs, runs_from_labels
from cellseg.report import outline_labels
from cellseg.viewer import ViewRun, paired, write_viewer
from cellseg.viewer import render


def page_data(page: Path) -> dict:
    """The JSON block the page's script reads."""
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(),
                  re.S)
    assert m, "no data block"
    return json.loads(m.group(1).replace("<\\/", "</"))


def _scene() -> tuple[Runs, Runs]:
    """(truth, pred) on 60x80: cell 0 matched (IoU 0.81), cell 1 hit by a near-miss (IoU 0.4),
    cell 2 missed; prediction 2 a false positive far from any cell."""
    t = np.zeros((60, 80), np.int32)
    t[5:15, 5:15] = 1
    t[30:40, 5:15] = 2
    t[40:50, 50:60] = 3
    p = np.zeros((60, 80), np.int32)
    p[5:14, 5:14] = 1            # 81 / 100
    p[30:40, 11:15] = 2          # 40 / 100: best IoU 0.4
    p[5:10, 60:70] = 3           # nothing there
    return runs_from_labels(t), runs_from_labels(p)


def test_outcome_classes_and_layer_colours() -> None:
    truth, pred = _scene()
    res = metrics.match_image(truth, pred, truth.shape)
    oc = render.outcome(truth, pred, res)
    assert oc.matched_t.tolist() == [True, False, False]
    assert oc.matched_p.tolist() == [True, False, False]
    assert oc.near_p.tolist() == [False, True, False] and oc.n_near == 1
    assert oc.mean_iou == pytest.approx(0.81)
    t_edge, p_edge = outline_labels(truth), outline_labels(pred)
    pred_png, err_png = render.run_layers(t_edge, p_edge, pred.n, oc)

    def rgba(data: bytes) -> np.ndarray:
        from PIL import Image
        import io

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))

    pl, el = rgba(pred_png), rgba(err_png)
    assert tuple(pl[5, 5]) == (*render.PALETTE[render.GREEN], 255)   # matched prediction
    assert pl[5, 60, 3] == 0 and pl[30, 11, 3] == 0                  # errors are not in "pred"
    assert tuple(el[5, 60]) == (*render.PALETTE[render.RED], 255)    # false positive
    assert tuple(el[30, 12]) == (*render.PALETTE[render.MAGENTA], 255)  # near-miss
    assert tuple(el[45, 50]) == (*render.PALETTE[render.YELLOW], 255)  # missed cell
    assert el[5, 5, 3] == 0 and el[20, 20, 3] == 0                   # matched / background
    tl = rgba(render.truth_layer(t_edge, truth.n))
    assert tuple(tl[30, 5]) == (*render.PALETTE[render.BLUE], 255) and tl[32, 8, 3] == 0


def test_outline_fast_path_equals_per_cell_outline(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    for trial in range(12):
        lab = np.zeros((50, 60), np.int32)
        for k in range(1, 20):
            y, x = rng.integers(0, 50), rng.integers(0, 60)
            h, w = rng.integers(1, 12, 2)
            lab[y:y + h, x:x + w] = k
        runs = runs_from_labels(lab)
        which = None if trial % 2 else rng.choice(runs.n, size=runs.n // 2, replace=False)
        fast = outline_labels(runs, which)
        monkeypatch.setattr(Runs, "overlapping", lambda self: True)  # force the per-cell path
        slow = outline_labels(runs, which)
        monkeypatch.undo()
        np.testing.assert_array_equal(fast, slow)


def test_paired_counts() -> None:
    p = paired([0.1, 0.5, 0.3, 0.2], [0.2, 0.4, 0.3, 0.6])
    assert (p["n"], p["better"], p["worse"], p["tied"]) == (4, 2, 1, 1)
    assert p["mean_diff"] == pytest.approx(0.1)


def test_page_numbers_equal_the_score_report(tmp_path) -> None:
    truth, pred = _scene()
    t2, p2 = runs_from_labels(np.zeros((60, 80), np.int32)), _scene()[1]
    gt = {"a": truth, "b": t2}
    pa = {"a": pred, "b": p2}
    pb = {"a": truth}  # B: perfect on a, nothing on b (no cell there: score 1)
    cell_types = {"a": "astro", "b": "cort"}
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((60, 80), 120, np.uint8))
    page = write_viewer(tmp_path / "rep", [ViewRun("A", pa, info={"config": {"x": 1}}),
                                           ViewRun("B", pb)], ["a", "b"], truth=gt,
                        cell_types=cell_types, image_paths={"a": img})
    data = page_data(page)
    want_a = metrics.score(gt, pa, cell_types=cell_types, shape=(60, 80)).to_dict()
    want_b = metrics.score(gt, pb, cell_types=cell_types, shape=(60, 80)).to_dict()
    for run, want in zip(data["runs"], (want_a, want_b)):
        for key in ("score", "per_threshold", "per_cell_type"):
            assert run["summary"][key] == pytest.approx(want[key])
        assert run["summary"]["counts"] == want["counts"]
    assert data["runs"][0]["info"] == {"config": {"x": 1}}
    assert data["runs"][1]["vs_first"]["better"] == 2  # a: 1.0 > A's; b: 1.0 > 0 (A has FPs)
    row_a = data["images"][0]
    assert row_a["id"] == "a" and row_a["type"] == "astro" and row_a["n_true"] == 3
    assert row_a["runs"][0] | {"s10": None} == {
        "n_pred": 3, "conf": None, "score": pytest.approx(want_a["per_image"]["a"]["score"], abs=1e-4),
        "tp": 1, "fp": 2, "fn": 2, "near": 1, "iou": 0.81, "s10": None}
    names = sorted(p.name for p in (tmp_path / "rep" / "img").iterdir())
    assert names == sorted(f"{k}.{x}" for k in (0, 1) for x in
                           ("jpg", "t.png", "0.p.png", "0.e.png", "1.p.png", "1.e.png"))
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "https://" not in html


def test_score_cli_report_and_compare(tmp_path, shared_sartorius, capsys) -> None:
    from cellseg.cli import main
    from cellseg.core.submission import write_submission
    from cellseg.viewer.runinfo import write_run_info
    from test_metrics import _read_truth, perturb

    image_id, truth = _read_truth(shared_sartorius)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_submission(a, [(image_id, perturb(truth, seed=4))])
    write_submission(b, [(image_id, perturb(truth, seed=5))])
    write_run_info(b, {"weights": [{"path": "best.pt"}], "config": {"tta": ["h"]}})
    rep = tmp_path / "rep"
    assert main(["score", "--truth", str(shared_sartorius), "--pred", str(a), "--compare",
                 str(b), "--no-coco", "--json", str(tmp_path / "s.json"),
                 "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "s.json").read_text())
    cmp_ = result["compare"]
    diff = cmp_["score"] - result["score"]
    assert cmp_["paired"]["mean_diff"] == pytest.approx(diff)
    assert f"mean paired difference B - A {diff:+.4f}" in out
    data = page_data(rep / "index.html")
    assert [r["name"] for r in data["runs"]] == ["a.csv", "b.csv"]
    assert data["runs"][0]["summary"]["score"] == pytest.approx(result["score"])
    assert data["runs"][1]["summary"]["score"] == pytest.approx(cmp_["score"])
    assert data["runs"][1]["info"]["config"] == {"tta": ["h"]} and data["runs"][0]["info"] == {}
    assert sorted(p.name for p in rep.iterdir()) == [
        "img", "index.html", "score_per_cell_type.png", "score_vs_threshold.png"]
    # a bad --compare path: one line, exit 2, nothing written
    assert main(["score", "--truth", str(shared_sartorius), "--pred", str(a), "--compare",
                 str(tmp_path / "nope.csv"), "--report", str(tmp_path / "rep2")]) == 2
    assert "--compare" in capsys.readouterr().err and not (tmp_path / "rep2").exists()


def test_predict_page_from_predict_outputs(tmp_path, shared_sartorius) -> None:
    """The page of `cellseg predict --report`, built from its results file; counts and mean
    scores per image; the run info beside the files."""
    from cellseg.core.masks import encode_labels
    from cellseg.core.submission import write_submission
    from cellseg.data.sources import list_image_files
    from cellseg.io import write_json
    from cellseg.viewer.runinfo import make_run_info, read_run_info, write_run_info
    from cellseg.viewer.sources import predict_page

    records = list_image_files([shared_sartorius / "test"])
    assert len(records) == 3
    rng = np.random.default_rng(0)
    items, results = [], []
    for k, r in enumerate(records):
        lab = np.zeros((520, 704), np.int32)
        for c in range(5 * (k + 1)):
            y, x = rng.integers(20, 500), rng.integers(20, 680)
            cv2.circle(lab, (int(x), int(y)), 8, c + 1, -1)
        runs = runs_from_labels(lab)
        items.append((r.image_id, encode_labels(lab)))
        for seg in runs.to_coco():
            results.append({"image_id": r.image_id, "segmentation": seg, "score": 0.25 * (k + 1)})
    sub, res = tmp_path / "sub.csv", tmp_path / "res.json"
    write_submission(sub, items)
    write_json(res, results)
    info = make_run_info({"tta": []}, [tmp_path / "w.pt"], ["cellseg", "predict"])
    write_run_info(sub, info)
    assert read_run_info(sub)["config"] == {"tta": []}
    page = predict_page(tmp_path / "rep", records, sub, res, info)
    data = page_data(page)
    assert data["has_truth"] is False
    counts = {row["id"]: (row["runs"][0]["n_pred"], row["runs"][0]["conf"])
              for row in data["images"]}
    n_cells = {r.image_id: len(rles) for r, (_, rles) in zip(records, items)}
    assert counts == {r.image_id: (n_cells[r.image_id], 0.25 * (k + 1))
                      for k, r in enumerate(records)}
    assert data["runs"][0]["summary"] == {"n_images": 3, "n_pred": sum(n_cells.values())}
    # without the results file: counts from the submission, no scores
    data = page_data(predict_page(tmp_path / "rep2", records, sub))
    assert [row["runs"][0]["conf"] for row in data["images"]] == [None] * 3
    assert {row["id"]: row["runs"][0]["n_pred"] for row in data["images"]} == n_cells


def test_cli_predict_report_and_run_info(tmp_path, shared_sartorius, tiny_unet_ckpt) -> None:
    """`cellseg predict --report`: the page from predict's own results file; what made the
    predictions is recorded beside them and shown."""
    from collections import Counter

    from cellseg.cli import main
    from cellseg.viewer.runinfo import read_run_info

    sub, rep = tmp_path / "sub.csv", tmp_path / "rep"
    assert main(["predict", "--weights", str(tiny_unet_ckpt), "--images",
                 str(shared_sartorius / "test"), "--out", str(sub), "--device", "cpu",
                 "--set", "tile_size=null", "--no-progress", "--report", str(rep)]) == 0
    results = json.loads((rep / "results.json").read_text())
    info = read_run_info(sub)
    assert info == read_run_info(rep / "results.json")
    assert info["weights"][0]["path"] == str(tiny_unet_ckpt.resolve())
    assert info["config"]["tile_size"] is None and info["n_images"] == 3
    data = page_data(rep / "index.html")
    assert data["has_truth"] is False and len(data["images"]) == 3
    per_image = Counter(r["image_id"] for r in results)
    assert {row["id"]: row["runs"][0]["n_pred"] for row in data["images"]} == \
        {row["id"]: per_image.get(row["id"], 0) for row in data["images"]}
    assert data["runs"][0]["info"]["weights"] == info["weights"]
    assert len(list((rep / "img").glob("*.p.png"))) == 3
