"""`cellseg data` subcommands: convert round trip, check output and exit codes, synth, --help."""

from __future__ import annotations

import json
import shutil

import numpy as np
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
    assert "broken.png cannot be decoded" in out
    assert "3 problem(s)" in out and "FAILED" in out
    # the good rows still get summarised
    assert "| shsy5y | 2 | 395 |" in out


def test_check_unknown_folder(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    assert "not a known data layout" in capsys.readouterr().out


def test_synth_then_check_and_load(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num-images", "3", "--seed", "1",
                 "--num-test", "1", "--num-semi", "1", "--num-livecell", "3"]) == 0
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
        assert {"synth": "--num-images", "convert": "--coco", "check": "path"}[argv[1]] in out


def test_no_subcommand_is_usage_error(capsys):
    assert main(["data"]) == 2


def test_check_decodes_every_image_fully(tmp_path, capsys):
    import cv2

    root = tmp_path / "comp"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (520, 704), dtype=np.uint8))
    (root / "test" / "good.png").write_bytes(buf.tobytes())
    # header (and size) intact, pixel data cut: a header-only check would pass it
    (root / "test" / "cut.png").write_bytes(buf.tobytes()[:len(buf) // 2])
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "cut.png cannot be decoded (truncated or corrupt)" in out
    assert "good.png" not in out and "1 problem(s)" in out


def test_check_empty_and_header_only_train_csv(tmp_path, capsys):
    root = tmp_path / "comp"
    root.mkdir()
    (root / "train.csv").write_text("")
    assert main(["data", "check", str(root)]) == 1
    out, err = capsys.readouterr()
    assert "train.csv is empty" in out and "Traceback" not in out + err
    (root / "train.csv").write_text("id,annotation,width,height,cell_type\n")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "has a header but no rows" in out and "1 problem(s)" in out


def test_coco_orphan_annotations_are_a_warning(tmp_path, capsys):
    data = coco.records_to_coco(load_records(_tiny_csv(tmp_path)), image_root=tmp_path)
    orphan = dict(data["annotations"][0], id=999, image_id=12345)
    data["annotations"].append(orphan)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    notes: list[str] = []
    recs = coco.coco_to_records(path, notes=notes)
    assert recs[0].n_instances == 2 and len(notes) == 1 and "annotation 999" in notes[0]
    with pytest.warns(UserWarning, match="refer to images not in the file"):
        coco.coco_to_records(path)
    # data check lists it as a note; only the missing image file is a problem
    main(["data", "check", str(path)])
    out = capsys.readouterr().out
    assert "1 annotation(s) refer to images not in the file" in out
    assert "1 problem(s)" in out and "is missing" in out


def test_count_flags_are_named_as_counts():
    from cellseg.cli import build_parser

    parser = build_parser("data")
    args = parser.parse_args(["data", "synth", "--out", "x", "--num-images", "5", "--num-test",
                              "2"])
    assert (args.num_images, args.num_test, args.num_semi) == (5, 2, None)
    old = parser.parse_args(["data", "synth", "--out", "x", "--images", "5", "--livecell", "1"])
    assert (old.num_images, old.num_livecell) == (5, 1)  # deprecated aliases still work
    demo = build_parser("demo").parse_args(["demo", "--num-images", "4"])
    assert demo.num_images == 4


def _tiny_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("id,annotation,width,height,cell_type\n"
                    "aaaaaaaaaaaa,1 5,704,520,shsy5y\naaaaaaaaaaaa,705 5,704,520,shsy5y\n")
    return path


def test_orphan_annotations_one_rule_for_json_and_livecell_folder(tmp_path, capsys):
    """An annotation of an image missing from the COCO file: the same note (skipped, exit 0)
    whether the JSON is named directly or read through its LIVECell folder, and training's
    loader (no ``problems`` list) does not fail on it either."""
    from cellseg.data.livecell import load as load_livecell
    from cellseg.data.synthetic import generate

    generate(tmp_path, n_images=1, seed=0, n_test=0, n_semi=0, n_livecell=2)
    root = tmp_path / "livecell"
    js = root / "annotations" / "LIVECell" / "livecell_coco_train.json"
    data = json.loads(js.read_text())
    if not data["annotations"]:
        pytest.skip("synthetic LIVECell train split has no annotation")
    data["annotations"].append(dict(data["annotations"][0], id=99999, image_id=424242))
    js.write_text(json.dumps(data))
    expected = ("livecell_coco_train.json: 1 annotation(s) refer to images not in the file "
                "(e.g. annotation 99999 -> image 424242); skipped")
    outputs = []
    for target in ([str(js), "--images", str(root / "images")], [str(root)]):
        rc = main(["data", "check", *target])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert expected in out and "problem(s)" not in out
        outputs.append(out)
    notes: list[str] = []
    recs = load_livecell(root, "train", notes=notes)
    assert recs and expected in notes
    plain = coco.coco_to_records(js, root / "images", notes=[])
    assert sorted(r.n_instances for r in recs) == sorted(r.n_instances for r in plain)
