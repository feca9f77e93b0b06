"""`cellseg pseudo-label`: per-cell filtering, per-image rejection, the written data set and its
provenance, and that `cellseg train`'s loaders read it back."""

from __future__ import annotations

import json

import numpy as np

from cellseg.core.instances import Instances
from cellseg.pseudo import PseudoSettings, filter_cells


def _instances(scores, sizes) -> Instances:
    masks = []
    for k, s in enumerate(sizes):
        m = np.zeros((40, 200), bool)
        m[2:2 + s, 10 * k:10 * k + 1] = True  # a column of s pixels
        masks.append(m)
    return Instances.from_dense(np.stack(masks), scores=np.asarray(scores, float))


def test_filter_keeps_confident_cells_of_the_right_size() -> None:
    inst = _instances([0.9, 0.8, 0.3, 0.95, 0.9], [30, 30, 30, 5, 36])
    kept, dropped, info = filter_cells(inst, PseudoSettings(min_score=0.6, min_area=20, max_area=35,
                                                   min_cells=2, min_keep_fraction=0.3))
    assert info["accepted"] and info["n_pred"] == 5 and info["n_kept"] == 2
    assert np.allclose(kept.scores, [0.9, 0.8])


def test_image_rejection_reasons() -> None:
    inst = _instances([0.9, 0.2, 0.2, 0.2], [30] * 4)
    _, _, info = filter_cells(inst, PseudoSettings(min_score=0.6, min_cells=2))
    assert not info["accepted"] and "min_cells" in info["reason"]
    _, _, info = filter_cells(inst, PseudoSettings(min_score=0.6, min_cells=1, min_keep_fraction=0.5))
    assert not info["accepted"] and "1/4" in info["reason"]
    _, _, info = filter_cells(inst, PseudoSettings(min_score=0.6, min_cells=1, min_keep_fraction=0.25))
    assert info["accepted"]


# decode settings that turn an untrained UNet's ~0.5 maps into one whole-image cell per image
# (score = its mean cell probability): the plumbing, not the model, is under test
ONE_CELL = ["--set", "decode.fg_thresh=0.0", "--set", "decode.border_thresh=1.0",
            "--set", "decode.seed_thresh=-1.0", "--set", "types={}",
            "--set", "default.score_thresh=0.0"]


def test_pseudo_label_real_unlabeled_images(tmp_path, shared_unlabeled, tiny_unet_ckpt
                                            ) -> None:
    from cellseg.checkpoint import sha256_file
    from cellseg.cli import main
    from cellseg.data.loaders import load_records

    ckpt = tiny_unet_ckpt
    out = tmp_path / "pl"
    argv = ["pseudo-label", "--weights", str(ckpt), "--images", str(shared_unlabeled),
            "--max-images", "2", "--out", str(out), "--device", "cpu", "--no-progress",
            "--min-score", "0", "--min-area", "1", "--min-cells", "1", *ONE_CELL]
    assert main(argv) == 0
    prov = json.loads((out / "pseudo_label.json").read_text())
    assert prov["models"] == [{"path": str(ckpt.resolve()), "sha256": sha256_file(ckpt)}]
    assert prov["thresholds"]["min_score"] == 0.0
    assert prov["inference"]["decode"]["fg_thresh"] == 0.0
    assert prov["counts"]["images"] == 2 and prov["counts"]["accepted"] == 2
    assert prov["date"][:2] == "20"
    # `cellseg train` reads it as a competition source: images, cells, LIVECell cell type
    recs = load_records(out)
    assert len(recs) == 2 and all(r.n_instances >= 1 for r in recs)
    assert {r.cell_type for r in recs} == {"SHSY5Y"}
    assert all(r.read_image().shape == (520, 704) for r in recs)
    # too strict: every image rejected, with its reason; the folder stays a valid empty source
    assert main(argv[:-len(ONE_CELL) - 1] + ["99", *ONE_CELL]) == 0
    prov = json.loads((out / "pseudo_label.json").read_text())
    assert prov["counts"]["accepted"] == 0
    assert all("min_cells" in v["reason"] for v in prov["images"].values())
    assert load_records(out) == []


def test_pseudo_label_user_mistakes_exit_2(tmp_path, shared_unlabeled, capsys) -> None:
    from cellseg.cli import main

    out = str(tmp_path / "pl")
    for argv, words in (
            (["--images", str(shared_unlabeled)], "no teacher"),
            (["--weights", "x.pt", "--images", str(tmp_path / "none")], "does not exist"),
            (["--rounds", "1", "--images", str(shared_unlabeled)], "--rounds needs")):
        assert main(["pseudo-label", *argv, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cellseg pseudo-label: "), err
        assert words in err[0] and "Traceback" not in err[0]


def test_rounds_teacher_then_student(tmp_path, shared_sartorius, shared_unlabeled) -> None:
    """One round through the public commands: round 0 trains a teacher on the labelled image,
    round 1 pseudo-labels 2 unlabeled images and trains a student on both sources."""
    from cellseg.cli import main
    from cellseg.data.loaders import load_records

    out = tmp_path / "rounds"
    argv = ["pseudo-label", "--rounds", "1", "--data", str(shared_sartorius),
            "--images", str(shared_unlabeled), "--max-images", "2", "--out", str(out),
            "--train-config", "unet_tiny", "--train-set", "data.fold=null", "--steps", "1",
            "--min-score", "0", "--min-area", "1", "--min-cells", "1", *ONE_CELL]
    assert main(argv) == 0
    assert (out / "round_0" / "teacher" / "best.pt").is_file()
    prov = json.loads((out / "round_1" / "pseudo" / "pseudo_label.json").read_text())
    assert prov["models"][0]["path"] == str((out / "round_0" / "teacher" / "best.pt").resolve())
    assert len(load_records(out / "round_1" / "pseudo")) == 2
    student_log = (out / "round_1" / "student" / "train.log").read_text()
    assert "3 training images" in student_log  # 1 labelled + 2 pseudo-labelled
    assert (out / "round_1" / "student" / "best.pt").is_file()
