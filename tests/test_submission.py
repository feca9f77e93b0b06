"""Submission writer (streaming, atomic, no empty RLE) and validator (each rule, row numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.core import rle
from cellseg.core.masks import decode_labels, encode_labels
from cellseg.core.instances import Instances
from cellseg.core.submission import (SubmissionWriter, ids_from_csv, instance_rles, read_submission,
                                validate_submission, write_submission)

SHAPE = (20, 30)


def _rect(r0, r1, c0, c1, shape=SHAPE) -> str:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return rle.encode(m)


def _write(path, text: str):
    path.write_text(text)
    return path


def _errors(problems):
    return [(p.row, p.image_id) for p in problems if p.severity == "error"]


def test_writer_streams_and_skips_empty(tmp_path):
    out = tmp_path / "submission.csv"
    lab = np.zeros(SHAPE, np.int32)
    lab[2:5, 2:6] = 1
    lab[10:14, 10:20] = 2
    inst = Instances.from_label_image(lab)
    inst.masks.append(np.zeros((0, 0), bool))  # an empty instance must not become a row
    inst = Instances(SHAPE, np.concatenate([inst.boxes, [[0, 0, 0, 0]]]), inst.masks,
                     np.ones(3), np.zeros(3))
    with SubmissionWriter(out, shape=SHAPE) as w:
        assert w.add("a", inst) == 2
        assert w.add("b", [_rect(0, 2, 0, 2), "", "  "]) == 1
        assert w.add("c", []) == 1  # empty_policy="row": placeholder row
        assert not out.exists()  # nothing visible before a clean close
    text = out.read_text().splitlines()
    assert text[0] == "id,predicted" and len(text) == 5 and text[-1] == "c,"
    assert read_submission(out) == {"a": encode_labels(lab), "b": [_rect(0, 2, 0, 2)],
                                    "c": []}
    assert instance_rles(inst) == encode_labels(lab)
    assert validate_submission(out, ids=["a", "b", "c"], shape=SHAPE)[0].severity == "warning"
    assert _errors(validate_submission(out, ids=["a", "b", "c"], shape=SHAPE)) == []


def test_writer_skip_policy_and_guards(tmp_path):
    out = tmp_path / "s.csv"
    n = write_submission(out, [("a", [_rect(0, 2, 0, 2)]), ("b", [])], empty_policy="skip",
                         shape=SHAPE)
    assert n == 1 and read_submission(out) == {"a": [_rect(0, 2, 0, 2)]}
    with pytest.raises(ValueError, match="empty_policy"):
        SubmissionWriter(out, empty_policy="zero")
    with pytest.raises(ValueError, match="overlap"):
        write_submission(tmp_path / "o.csv", [("a", [_rect(0, 2, 0, 2), _rect(1, 3, 1, 3)])],
                         shape=SHAPE)
    with pytest.raises(ValueError, match="added twice"):
        write_submission(tmp_path / "d.csv", [("a", []), ("a", [])], shape=SHAPE)


def test_writer_is_atomic_on_exception(tmp_path):
    out = tmp_path / "submission.csv"
    with pytest.raises(RuntimeError):
        with SubmissionWriter(out, shape=SHAPE) as w:
            w.add("a", [_rect(0, 2, 0, 2)])
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary left behind
    out.write_text("id,predicted\nold,1 1\n")
    with pytest.raises(RuntimeError):
        with SubmissionWriter(out, shape=SHAPE) as w:
            w.add("a", [_rect(0, 2, 0, 2)])
            raise RuntimeError
    assert out.read_text() == "id,predicted\nold,1 1\n"  # previous file untouched
    assert len(list(tmp_path.iterdir())) == 1


GOOD_A, GOOD_B = _rect(0, 2, 0, 2), _rect(5, 7, 5, 9)


@pytest.mark.parametrize("body,want,message", [
    ("id,pred\na,{A}\n", [(1, None)], "header"),
    ("id,predicted\na,{A}\nzz,{A}\n", [(3, "zz")], "unknown image id"),
    ("id,predicted\na,{A}\na,1 2 3\n", [(3, "a")], "odd number"),
    ("id,predicted\na,{A}\na,600 5\n", [(3, "a")], "past the image end"),
    ("id,predicted\na,{A}\na,\n", [(3, "a")], "empty RLE"),
    ("id,predicted\na,{A}\na,{B}\na,1 3\n", [(4, "a")], "overlaps the mask of row 2"),
    ("id,predicted\na,{A}\na,5 2 3 1\n", [(3, "a")], "unsorted"),
    ("id,predicted\na,{A},x\n", [(2, "a"), (None, "a")], "expected 2 fields"),
    ("id,predicted\nb,{B}\n", [(None, "a")], "image missing"),
])
def test_validator_rules(tmp_path, body, want, message):
    path = _write(tmp_path / "s.csv", body.format(A=GOOD_A, B=GOOD_B))
    problems = validate_submission(path, ids=["a", "b"] if "b," in body else ["a"], shape=SHAPE)
    assert _errors(problems) == want
    assert any(message in p.message for p in problems), [str(p) for p in problems]


def test_validator_accepts_good_file_and_reads_image_sizes(tmp_path):
    import cv2

    folder = tmp_path / "test"
    folder.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(folder / f"{name}.png"), np.zeros(SHAPE, np.uint8))
    path = _write(tmp_path / "s.csv", f"id,predicted\na,{GOOD_A}\na,{GOOD_B}\nb,{GOOD_A}\n")
    assert validate_submission(path, images=folder) == []
    # the image size comes from the PNG header: a 20x30 image cannot hold pixel 700
    path = _write(tmp_path / "t.csv", "id,predicted\na,700 1\nb,1 1\n")
    assert _errors(validate_submission(path, images=folder)) == [(2, "a")]
    sample = _write(tmp_path / "sample.csv", "id,predicted\na,\nb,\n")
    assert ids_from_csv(sample) == ["a", "b"]


def test_validate_cli(tmp_path, capsys):
    from cellseg.cli import main

    good = write_submission(tmp_path / "good.csv", [("a", [GOOD_A, GOOD_B]), ("b", [GOOD_A])])
    assert good == 3
    sample = _write(tmp_path / "sample.csv", "id,predicted\na,\nb,\n")
    assert main(["validate", str(tmp_path / "good.csv"), "--ids-from", str(sample)]) == 0
    assert "OK: 3 rows, 2 images" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.csv", f"id,predicted\na,{GOOD_A}\na,{GOOD_A}\nc,{GOOD_A}\n")
    assert main(["validate", str(bad), "--ids-from", str(sample)]) == 1
    out = capsys.readouterr().out
    assert "row 3 image a: mask overlaps the mask of row 2" in out
    assert "row 4 image c: unknown image id" in out
    assert "file image b: image missing" in out and "INVALID" in out


def test_writer_output_on_real_sample_validates(tmp_path, shared_sartorius):
    import csv

    with open(shared_sartorius / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    image_id = rows[0]["id"]
    lab = decode_labels([r["annotation"] for r in rows])  # overlaps resolved
    inst = Instances.from_label_image(lab)
    out = tmp_path / "submission.csv"
    with SubmissionWriter(out) as w:
        w.add(image_id, inst)
    assert validate_submission(out, images=shared_sartorius / "train") == []
    assert read_submission(out)[image_id] == encode_labels(lab)


def test_validate_against_a_folder_with_a_broken_image(tmp_path, shared_sartorius):
    """A test file that is not an image is still expected (the kernel writes its empty-policy
    row); its size is taken as the competition's, so its RLE is still bounds-checked."""
    import shutil

    images = tmp_path / "test"
    images.mkdir()
    real = next((shared_sartorius / "train").glob("*.png"))
    shutil.copy(real, images / real.name)
    (images / "broken.png").write_bytes(b"not a png at all")
    cell = rle.encode(np.pad(np.ones((4, 4), bool), ((0, 516), (0, 700))))
    out = write_submission(tmp_path / "s.csv", [(real.stem, [cell]), ("broken", [cell])])
    assert out == 2
    assert validate_submission(tmp_path / "s.csv", images=images) == []
    missing = write_submission(tmp_path / "m.csv", [(real.stem, [cell])])
    assert missing == 1
    assert _errors(validate_submission(tmp_path / "m.csv", images=images)) == [(None, "broken")]
    outside = _write(tmp_path / "o.csv", f"id,predicted\n{real.stem},{cell}\nbroken,366000 100\n")
    assert _errors(validate_submission(outside, images=images)) == [(3, "broken")]
