"""`cellseg cv`: folds, summaries, the fold's training command, and a tiny real run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cellseg.cv import CVSettings, format_table, kit_train_command, make_cv_folds, summarise
from cellseg.data.record import ImageRecord


def _rec(i: str, ctype: str, sample: str | None = None) -> ImageRecord:
    return ImageRecord(i, Path(f"{i}.png"), 8, 8, cell_type=ctype, sample_id=sample,
                       rles=("1 3",))


def test_leave_one_out_and_grouped_k_fold() -> None:
    recs = [_rec("a", "x", "s1"), _rec("b", "x", "s1"), _rec("c", "y"), _rec("d", "y")]
    assert make_cv_folds(recs) == [["a"], ["b"], ["c"], ["d"]]
    assert make_cv_folds(recs, n_folds=10) == [["a"], ["b"], ["c"], ["d"]]
    folds = make_cv_folds(recs, n_folds=2)
    assert sorted(i for f in folds for i in f) == ["a", "b", "c", "d"]
    # frames of one sample are never split between training and held-out
    assert any({"a", "b"} <= set(f) for f in folds)
    with pytest.raises(ValueError, match="at least 2"):
        make_cv_folds(recs[:1])


def test_summary_mean_sd_per_type() -> None:
    rows = [{"method": "kit", "fold": k, "image_id": str(k), "cell_type": t, "source": "s",
             "score": s, "n_true": 10, "n_pred": 5, "seconds": 1.0}
            for k, (t, s) in enumerate([("x", 0.1), ("x", 0.3), ("y", 0.5)])]
    s = summarise(rows)["kit"]
    assert s["mean"] == pytest.approx(0.3) and s["sd"] == pytest.approx(0.2) and s["n"] == 3
    assert s["per_cell_type"]["x"]["mean"] == pytest.approx(0.2)
    assert s["per_cell_type"]["y"] == {"mean": 0.5, "sd": 0.0, "n": 1}
    # every type weighed alike: (0.2 + 0.5) / 2, not the images' mean 0.3
    assert s["types_equal"] == pytest.approx(0.35)
    table = format_table(summarise(rows), rows).splitlines()
    assert "types equal" in table[0] and table[1].split()[-2] == "0.3500"


def test_kit_command_repeats_the_fold_for_a_real_epoch(tmp_path) -> None:
    import dataclasses

    from cellseg.config import DataConfig

    cmd = kit_train_command(CVSettings(config="unet_small_real", steps=100), tmp_path, 5,
                            tmp_path / "out")
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    # batch 8, 25 steps per epoch -> 4 epochs for 100 steps
    assert {"train.max_steps=100", "train.epochs=4", "data.fold=null"} <= set(sets)
    if "samples_per_epoch" in {f.name for f in dataclasses.fields(DataConfig)}:
        assert cmd.count("--data") == 1 and "data.samples_per_epoch=200" in sets
    else:  # 25 steps * 8 / 5 images -> the folder listed 40 times
        assert cmd.count("--data") == 40
    assert cmd[1:4] == ["-m", "cellseg", "train"]


def test_train_seed_reseeds_the_trainings_but_not_the_folds(tmp_path, monkeypatch) -> None:
    """``cellseg cv --train-seed``: another training seed (kit and peers alike) on the folds
    of ``--seed``; without it ``--seed`` seeds both."""
    import argparse

    from cellseg import cv
    from cellseg.commands import cv as cv_command

    monkeypatch.setattr(cv, "repo_root", lambda: tmp_path)

    def seeds(settings: CVSettings) -> tuple[list[str], str]:
        kit = kit_train_command(settings, tmp_path, 5, tmp_path / "out")
        peer = cv.peer_command("plain", settings, tmp_path / "tr", tmp_path / "te", tmp_path / "o")
        return ([a for a in kit if a.startswith("train.seed=")], peer[peer.index("--seed") + 1])

    assert seeds(CVSettings(seed=3)) == (["train.seed=3"], "3")
    assert seeds(CVSettings(seed=3, train_seed=7)) == (["train.seed=7"], "7")
    parser = argparse.ArgumentParser()
    cv_command.add_arguments(parser)
    args = parser.parse_args(["--data", "x", "--out", "o", "--seed", "3", "--train-seed", "7"])
    assert (args.seed, args.train_seed) == (3, 7)
    assert parser.parse_args(["--data", "x", "--out", "o"]).train_seed is None


def test_cv_tiny_run_on_real_samples(tmp_path, shared_sartorius, shared_livecell) -> None:
    """2 images, leave one out, kit (unet_tiny) and the plain reference, 1 step each."""
    from cellseg.cli import main

    out = tmp_path / "cv"
    argv = ["cv", "--data", str(shared_sartorius), "--data", f"{shared_livecell}:val",
            "--max-images", "2", "--config", "unet_tiny", "--steps", "1", "--reference",
            "--out", str(out), "--overlays", str(tmp_path / "ov")]
    # two "processes" share the run: each trains its fold and reports the other's when finished
    assert main(argv + ["--only-fold", "0"]) == 0
    first = json.loads((out / "cv.json").read_text())
    assert {r["fold"] for r in first["rows"]} == {0}
    assert not (out / "fold_1" / "kit").exists()
    assert main(argv + ["--only-fold", "1"]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert [r for r in result["rows"] if r["fold"] == 0] == first["rows"]
    held = [f[0] for f in result["folds"]]
    assert len(held) == 2 and len(set(held)) == 2
    for k, image_id in enumerate(held):
        # the held-out image never reaches that fold's training data
        with open(out / f"fold_{k}" / "train_data" / "train.csv") as fh:
            assert image_id not in {row["id"] for row in csv.DictReader(fh)}
    rows = result["rows"]
    assert sorted((r["method"], r["image_id"]) for r in rows) == sorted(
        (m, i) for m in ("kit", "plain") for i in held)
    for m in ("kit", "plain"):
        scores = [r["score"] for r in rows if r["method"] == m]
        assert result["summary"][m]["mean"] == pytest.approx(sum(scores) / 2)
        assert all(0.0 <= s <= 1.0 for s in scores)
    with open(out / "cv.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    with open(out / "cv.png", "rb") as fh:  # the per-image bar chart
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "ov").glob("*.png"))) == 4
    # --resume reuses finished folds instead of training again
    log = out / "fold_0" / "kit" / "train.log"
    stamp = log.stat().st_mtime_ns
    assert main(argv + ["--resume", "--report"]) == 0
    assert log.stat().st_mtime_ns == stamp
    assert json.loads((out / "cv.json").read_text())["rows"] == rows
    # --report: the results page puts the methods side by side, rescored from their pred.csv
    from test_viewer import page_data

    data = page_data(out / "report" / "index.html")
    assert [r["name"] for r in data["runs"]] == ["kit", "plain"]
    assert data["runs"][1]["vs_first"]["n"] == 2
    for j, m in enumerate(("kit", "plain")):
        want = {r["image_id"]: r["score"] for r in rows if r["method"] == m}
        assert {row["id"]: row["runs"][j]["score"] for row in data["images"]} == \
            pytest.approx(want, abs=1e-4)
    # --report-only trains nothing: results of another step budget are left out, not reused
    stale = [("2" if a == "1" and argv[i - 1] == "--steps" else a) for i, a in enumerate(argv)]
    assert main(stale + ["--report-only"]) == 0
    assert json.loads((out / "cv.json").read_text())["rows"] == []
    assert log.stat().st_mtime_ns == stamp


def test_cv_pseudo_label_student_per_fold(tmp_path, shared_sartorius, shared_livecell) -> None:
    """kit_pl: each fold's kit model labels unlabeled real images (never an annotated one), and a
    student trains on the fold's images plus those labels, half of its samples drawn from them."""
    from cellseg.cli import main

    tifs = sorted((shared_livecell / "images").rglob("*.tif"))
    # two unlabeled images and the annotated one that --max-images 2 keeps (fold 1's held-out)
    annotated_tif = [t for t in tifs if t.stem == "MCF7_Phase_G4_2_02d16h00m_1"]
    pseudo = [t for t in tifs if t not in annotated_tif][:2] + annotated_tif
    assert len(pseudo) == 3
    out = tmp_path / "cv"
    argv = ["cv", "--data", str(shared_sartorius), "--data", f"{shared_livecell}:val",
            "--max-images", "2", "--config", "unet_tiny", "--steps", "1", "--out", str(out),
            # a 1-step teacher is not confident: decode and accept whatever it finds
            "--infer-set", "decode.seed_thresh=0", "--infer-set", "decode.fg_thresh=0",
            "--infer-set", "default.score_thresh=0", "--pseudo-min-score", "0",
            "--pseudo-min-keep-fraction", "0", "--pseudo-min-cells", "1",
            "--pseudo-images", *map(str, pseudo)]
    code = main(argv)
    result = json.loads((out / "cv.json").read_text()) if code == 0 else None
    assert code == 0, result
    rows = result["rows"]
    assert sorted({r["method"] for r in rows}) == ["kit", "kit_pl"]
    annotated = {r["image_id"] for r in rows}
    for k in range(2):
        prov = json.loads((out / f"fold_{k}" / "pseudo" / "pseudo_label.json").read_text())
        # the fold's own kit model is the teacher, and no annotated image is pseudo-labelled
        assert prov["models"][0]["path"] == str((out / f"fold_{k}" / "kit" / "best.pt").resolve())
        assert annotated == {"0030fd0e6378", annotated_tif[0].stem}
        assert sorted(prov["images"]) == sorted(t.stem for t in pseudo[:2])
        log = (out / f"fold_{k}" / "kit_pl" / "train.log").read_text().splitlines()[0]
        assert str(out / f"fold_{k}" / "pseudo") in log
        assert "data.source_weights=[1.0,1.0]" in log
    # --pseudo-ignore-dropped: the teachers are reused, the labels and students made again
    kit_model = (out / "fold_0" / "kit" / "best.pt").stat().st_mtime_ns
    assert main(argv + ["--resume", "--pseudo-ignore-dropped"]) == 0
    assert (out / "fold_0" / "kit" / "best.pt").stat().st_mtime_ns == kit_model
    for k in range(2):
        prov = json.loads((out / f"fold_{k}" / "pseudo" / "pseudo_label.json").read_text())
        assert prov["thresholds"]["ignore_dropped"] is True
        assert "cells_ignored" in prov["counts"]


def test_cv_user_mistakes_exit_2(tmp_path, shared_sartorius, shared_livecell, capsys) -> None:
    from cellseg.cli import main

    base = ["cv", "--out", str(tmp_path / "o"), "--steps", "1"]
    for extra, words in ((["--data", str(tmp_path / "missing")], "does not exist"),
                         (["--data", str(shared_sartorius)], ">= 2 images"),  # cannot be split
                         (["--data", str(shared_sartorius), "--set", "optim.nope=1"],
                          "unknown key optim.nope"),
                         (["--data", str(shared_sartorius), "--only-reference",
                           "--pseudo-images", str(tmp_path)], "needs the kit's models"),
                         (["--data", str(shared_sartorius), "--pseudo-images", str(tmp_path)],
                          "no *.png / *.tif image"),
                         (["--data", f"{shared_livecell}:val", "--only-fold", "9"],
                          "--only-fold 9 is not a fold")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cellseg cv: "), err
        assert words in err[0]


def test_cv_student_command_weights_the_pseudo_labels(tmp_path) -> None:
    from cellseg.cv import student_train_command

    s = CVSettings(config="unet_small_real", steps=100, extra_train=("x",), pseudo_weight=0.8)
    cmd = student_train_command(s, tmp_path / "t", 5, tmp_path / "pl", tmp_path / "o")
    datas = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--data"]
    assert datas == [str(tmp_path / "t"), "x", str(tmp_path / "pl")]
    # two labelled sources at weight 1 each, pseudo-labels 4x their sum: 80% of the samples
    assert cmd[-2:] == ["--set", "data.source_weights=[1.0,1.0,8.0]"]


def test_score_rows_per_type_and_both_rules(shared_sartorius_409) -> None:
    """Held-out rows carry the score under both matching rules; the summary and the printed
    table give them per cell type (real images with duplicated truth, no training)."""
    from cellseg.cv import format_table, score_rows
    from cellseg.data import sartorius

    recs = sartorius.load_train(shared_sartorius_409, ids=["de504eaa5349", "0140b3c8f445"])
    # predict each distinct true mask once: the duplicated shsy5y cell splits the rules
    preds = {r.image_id: list(dict.fromkeys(r.rles)) for r in recs}
    rows = score_rows("kit", 0, recs, preds, 1.0, matching="greedy")
    by_id = {r["image_id"]: r for r in rows}
    shs = by_id["de504eaa5349"]
    assert shs["cell_type"] == "shsy5y" and shs["score"] == shs["score_greedy"]
    assert shs["score_dsb"] > shs["score_greedy"]
    assert by_id["0140b3c8f445"]["score_dsb"] == by_id["0140b3c8f445"]["score_greedy"] == 1.0
    s = summarise(rows)["kit"]
    assert set(s["per_cell_type"]) == {"astro", "shsy5y"}
    assert s["by_matching"]["dsb"]["shsy5y"] == pytest.approx(shs["score_dsb"])
    table = format_table(summarise(rows), rows)
    assert "astro (1)" in table and "shsy5y (1)" in table and "types equal" in table
    assert "matching rules differ" in table
