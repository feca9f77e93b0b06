"""`cellseg data` subcommands: convert round trip, check output and exit codes, synth, --help."""

from __future__ import annotations

import json
import shutil

import pytest

from cellseg.core import rle
from cellseg.cli import main
from cellseg.data import coco, sartorius
from cellseg.data.loaders import detect, load_records


def test_convert_csv_to_coco_and_back_is_exact(tmp_path, shared_sartorius, capsys):
    out_json = tmp_path / "coco.json"
    assert main(["data", "convert", "--csv", str(shared_sartorius / "train.csv"),
                 "--out", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert len(data["images"]) == 1 and len(data["annotations"]) == 395
    assert data["categories"] == [{"id": 1, "name": "cell", "supercategory": "cell"}]
    image = data["images"][0]
    assert (image["file_name"], image["width"], image["height"], image["cell_type"]) == \
        ("0030fd0e6378.png", 704, 520, "shsy5y")
    ann = data["annotations"][0]
    assert ann["iscrowd"] == 0 and ann["category_id"] == 1 and ann["image_id"] == 1
    # bbox and area agree with pycocotools on the stored segmentation
    from pycocotools import mask as mask_utils

    seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    assert ann["area"] == int(mask_utils.area(seg))
    assert ann["bbox"] == mask_utils.toBbox(seg).astype(int).tolist()

    out_csv = tmp_path / "train.csv"
    assert main(["data", "convert", "--coco", str(out_json), "--images",
                 str(shared_sartorius / "train"), "--out", str(out_csv)]) == 0
    assert out_csv.read_bytes() == (shared_sartorius / "train.csv").read_bytes()
    assert main(["data", "check", str(out_json), "--images", str(shared_sartorius / "train")]) == 0
    assert "| shsy5y | 1 | 395 |" in capsys.readouterr().out
    assert main(["data", "check", str(out_json)]) == 1  # images are not beside the JSON
    assert "0030fd0e6378.png is missing" in capsys.readouterr().out
    # records from the COCO file point at the real image
    recs = load_records(out_json)
    assert detect(out_json) == "coco" and recs[0].n_instances == 395
    recs = coco.coco_to_records(out_json, shared_sartorius / "train")
    assert recs[0].image_path.is_file() and recs[0].image_id == "0030fd0e6378"


def test_convert_livecell_to_coco(tmp_path, shared_livecell):
    out_json = tmp_path / "val.json"
    assert main(["data", "convert", "--livecell", str(shared_livecell), "--split", "val",
                 "--out", str(out_json)]) == 0
    back = coco.coco_to_records(out_json, shared_livecell / "images")
    assert len(back) == 5 and sum(r.n_instances for r in back) == 1243
    assert all(r.image_path.is_file() and r.source == "livecell" for r in back)


def test_check_real_folders(shared_sartorius, shared_livecell, capsys):
    assert main(["data", "check", str(shared_sartorius)]) == 0
    out = capsys.readouterr().out
    assert "| shsy5y | 1 | 395 | 395 | 395 | 395 |" in out and "test/ images: 3" in out
    assert "OK: no problems found" in out
    assert main(["data", "check", str(shared_livecell)]) == 0
    out = capsys.readouterr().out
    assert "| all | 5 | 1243 | 73 | 174 | 711 |" in out and "| MCF7 | 2 | 819 |" in out


def test_check_lists_every_problem_and_fails(tmp_path, shared_sartorius, capsys):
    root = tmp_path / "comp"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    shutil.copy(shared_sartorius / "train" / "0030fd0e6378.png", root / "train")
    (root / "test" / "broken.png").write_bytes(b"not a png")
    lines = (shared_sartorius / "train.csv").read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[1], "5 5 3 1")      # row 3: unsorted
    lines.append(lines[1].replace("0030fd0e6378", "ffffffffffff"))        # row 396: no image
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "train.csv row 3 (line 4, id 0030fd0e6378): unsorted starts" in out
    assert "ffffffffffff.png is missing" in out
    assert "broken.png cannot be read" in out
    assert "3 problem(s)" in out and "FAILED" in out
    # the good rows still get summarised
    assert "| shsy5y | 2 | 395 |" in out


def test_check_unknown_folder(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "not a known data layout" in capsys.readouterr().out


def test_synth_then_check_and_load(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--images", "3", "--seed", "1",
                 "--test", "1", "--semi", "1", "--livecell", "3"]) == 0
    assert main(["data", "check", str(out)]) == 0
    text = capsys.readouterr().out
    assert "# competition:" in text and "# livecell:" in text
    train = load_records(out / "competition")
    assert len(train) == 3 and all(r.n_instances > 0 for r in train)
    assert len(load_records(out / "competition", "test")) == 1
    assert len(load_records(out / "competition", "semi")) == 1
    for rec in train:  # every synthetic string passes the strict codec
        assert rle.find_errors(rec.rles, rec.shape) == []
    assert sartorius.load_train(out / "competition", fill_holes=True)


@pytest.mark.parametrize("argv", [["data", "--help"], ["data", "synth", "--help"],
                                  ["data", "convert", "--help"], ["data", "check", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: cellseg data" in out
    if argv[1] != "--help":
        assert {"synth": "--images", "convert": "--coco", "check": "path"}[argv[1]] in out


def test_no_subcommand_is_usage_error(capsys):
    assert main(["data"]) == 2
