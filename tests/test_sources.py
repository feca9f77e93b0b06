"""Several sources at once: ``cellseg.data.sources``, ``score --truth A B``, ``predict --images A B``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cellseg.data.sources import list_image_files, load_sources, parse_source


def test_parse_source_reads_a_split_suffix_only_when_it_is_one(tmp_path) -> None:
    assert parse_source("data/livecell:val") == ("data/livecell", "val")
    assert parse_source("data/livecell") == ("data/livecell", None)
    assert parse_source("data/x:nosuchsplit") == ("data/x:nosuchsplit", None)
    odd = tmp_path / "weird:val"  # an existing path that merely ends like a split
    odd.mkdir()
    assert parse_source(str(odd)) == (str(odd), None)


def test_load_sources_mixes_competition_and_livecell(shared_sartorius, shared_livecell) -> None:
    recs = load_sources([str(shared_sartorius), str(shared_livecell)], annotated=True)
    assert [r.source for r in recs].count("sartorius") == 1
    assert [r.source for r in recs].count("livecell") == 5  # LIVECell root defaults to val
    with pytest.raises(ValueError, match="is in both"):
        load_sources([str(shared_sartorius), str(shared_sartorius / "train.csv")])
    with pytest.raises(ValueError, match="does not exist"):  # SourceError: one CLI line
        load_sources([str(shared_sartorius / "nope")])


def test_list_image_files_nested_and_unique_ids(tmp_path) -> None:
    for rel in ("a/x.png", "a/deep/y.tif", "b/x.png", "b/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    recs = list_image_files([tmp_path / "a", tmp_path / "b"])
    ids = [r.image_id for r in recs]
    assert len(ids) == 3 and len(set(ids)) == 3  # the second x.png gets its folder prefixed
    assert {Path(r.image_path).name for r in recs} == {"x.png", "y.tif"}
    assert [r.image_id for r in list_image_files([tmp_path / "a"], recursive=False)] == ["x"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files([tmp_path / "missing"])


def _perfect_csv(records, path: Path) -> None:
    # truth masks may overlap: write them raw (no submission overlap check)
    path.write_text("id,predicted\n" + "".join(f"{r.image_id},{x}\n" for r in records
                                               for x in r.rles))


def test_score_truth_several_sources_averages_per_image(tmp_path, shared_sartorius,
                                                        shared_livecell) -> None:
    from cellseg.cli import main

    recs = load_sources([str(shared_sartorius), f"{shared_livecell}:val"], annotated=True)
    sub = tmp_path / "all.csv"
    _perfect_csv(recs, sub)
    argv = ["score", "--truth", str(shared_sartorius), f"{shared_livecell}:val", "--pred",
            str(sub), "--no-coco", "--json", str(tmp_path / "s.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["score"] == 1.0 and result["counts"]["n_images"] == 6
    assert {"shsy5y", "MCF7", "BT474", "Huh7"} <= set(result["per_cell_type"])
    # only the Sartorius image predicted: 1 of 6 images is perfect, the mean is per image
    one = tmp_path / "one.csv"
    _perfect_csv(recs[:1], one)
    assert main(["score", "--truth", str(shared_sartorius), "--truth",
                 f"{shared_livecell}:val", "--pred", str(one), "--no-coco",
                 "--json", str(tmp_path / "o.json")]) == 0
    result = json.loads((tmp_path / "o.json").read_text())
    assert result["score"] == pytest.approx(1 / 6)
    assert result["per_cell_type"]["shsy5y"] == 1.0 and result["per_cell_type"]["MCF7"] == 0.0


def test_score_truth_source_without_annotations_is_an_error(tmp_path, shared_sartorius,
                                                             capsys) -> None:
    from cellseg.cli import main

    sub = tmp_path / "s.csv"
    sub.write_text("id,predicted\n")
    assert main(["score", "--truth", str(shared_sartorius), f"{shared_sartorius}:test",
                 "--pred", str(sub)]) == 2
    assert "no annotated image" in capsys.readouterr().err


def test_predict_images_several_and_nested_folders(tmp_path, shared_sartorius,
                                                    shared_livecell, tiny_unet_ckpt) -> None:
    from cellseg.cli import main
    from cellseg.core.submission import read_submission

    ckpt = tiny_unet_ckpt
    nested = tmp_path / "nested"
    src = sorted((shared_livecell / "images").rglob("*.tif"))[:2]
    for k, p in enumerate(src):
        (nested / f"well{k}" / "sub").mkdir(parents=True)
        shutil.copy(p, nested / f"well{k}" / "sub" / p.name)
    test_pngs = sorted((shared_sartorius / "test").glob("*.png"))[:1]
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--weights", str(ckpt), "--images", str(nested), str(test_pngs[0]),
               "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert set(read_submission(out)) == {p.stem for p in src} | {test_pngs[0].stem}
    assert main(["predict", "--weights", str(ckpt), "--images", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
