"""The CLI's one error boundary: every user mistake is one line, exit code 2, no traceback.

Each test drives the real CLI (``cellseg.cli.main``) with one mistake from issue 11 and checks the
line reads ``cellseg <cmd>: <what>, <where>, <fix>``; ``--debug`` / ``CELLSEG_DEBUG=1`` add the
traceback; a bug (not a user mistake) still raises.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.cli import main, user_message
from cellseg.errors import ConfigError, InputError, UserError


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], *, label: str | None = None,
          after_log: bool = False) -> str:
    """Run ``cellseg argv``; assert exit 2, one line on stderr, no traceback; return the line.

    ``after_log``: the command may log progress to stderr first; the error is then the last line
    and the only one naming the command."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    label = label or argv[0]
    lines = err.strip().splitlines()
    if after_log:
        assert [ln for ln in lines if ln.startswith("cellseg ")] == lines[-1:], err
    else:
        assert len(lines) == 1, err
    assert lines[-1].startswith(f"cellseg {label}: "), lines[-1]
    return lines[-1]


@pytest.fixture()
def tiny_truth(tmp_path):
    """A two-cell train.csv (no images needed to score against it)."""
    path = tmp_path / "truth.csv"
    path.write_text("id,annotation,width,height,cell_type\n"
                    "aaaaaaaaaaaa,1 5,704,520,shsy5y\naaaaaaaaaaaa,705 5,704,520,shsy5y\n")
    return path


# ----------------------------------------------------------------------------- config mistakes


def test_bad_config_key_names_the_nearest_key(tmp_path, capsys):
    line = fails(["train", "--config", "unet_tiny", "--set", "optim.lrr=1",
                  "--data", str(tmp_path), "--out", str(tmp_path / "run")], capsys)
    assert "unknown key optim.lrr, --set optim.lrr=1, did you mean optim.lr?" in line


def test_bad_key_in_val_infer_fails_at_load_time(tmp_path, capsys):
    # the data folder does not exist: the typo must be reported first, before any data loading
    line = fails(["train", "--config", "unet_tiny", "--set", "val.infer.tile_sise=256",
                  "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")], capsys)
    assert "unknown key val.infer.tile_sise, --set val.infer.tile_sise=256, did you mean " \
           "val.infer.tile_size?" in line


def test_unknown_config_name(tmp_path, capsys):
    line = fails(["train", "--config", "no_such_config", "--data", str(tmp_path)], capsys)
    assert "no config named 'no_such_config', --config," in line and "unet_tiny" in line
    line = fails(["predict", "--weights", "x.pt", "--images", str(tmp_path), "--out",
                  str(tmp_path / "s.csv"), "--config", "infer_defualt"], capsys)
    assert "did you mean 'infer_default'?" in line


def test_bad_inference_override(tmp_path, capsys, tiny_truth):
    line = fails(["tune", "--weights", "x.pt", "--data", str(tiny_truth), "--out",
                  str(tmp_path / "t.yaml"), "--set", "types.astro.score_thres=0.3"], capsys)
    assert "types.astro.score_thres, --set types.astro.score_thres=0.3" in line
    assert "did you mean types.astro.score_thresh?" in line


# ----------------------------------------------------------------------------- missing paths


def test_train_on_missing_folder(tmp_path, capsys):
    line = fails(["train", "--config", "unet_tiny", "--data", str(tmp_path / "missing"),
                  "--out", str(tmp_path / "run")], capsys)
    assert str(tmp_path / "missing") in line and "fix the path" in line


def test_score_missing_truth_and_pred(tmp_path, capsys, tiny_truth):
    line = fails(["score", "--truth", str(tmp_path / "missing.csv"), "--pred", "x.csv"], capsys)
    assert line == (f"cellseg score: file or folder does not exist, --truth "
                    f"{tmp_path / 'missing.csv'}, check the path")
    line = fails(["score", "--truth", str(tiny_truth), "--pred", str(tmp_path / "p.csv")], capsys)
    assert "--pred" in line and "does not exist" in line


def test_missing_weights_and_images(tmp_path, capsys):
    line = fails(["predict", "--weights", str(tmp_path / "none.pt"), "--images", str(tmp_path),
                  "--out", str(tmp_path / "s.csv")], capsys)
    assert "--weights" in line and "none.pt" in line
    line = fails(["validate", str(tmp_path / "sub.csv")], capsys)
    assert "submission" in line and "does not exist" in line


# ----------------------------------------------------------------------------- bad files


def test_validate_empty_file_is_not_ok(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("")
    line = fails(["validate", str(sub)], capsys)
    assert "empty (no header)" in line and "id,predicted" in line
    sub.write_text("id,predicted\n")  # a header alone: invalid (exit 1), never "OK: 0 rows"
    assert main(["validate", str(sub)]) == 1
    out = capsys.readouterr().out
    assert "no rows" in out and "OK" not in out


def test_train_on_empty_train_csv(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("")
    line = fails(["train", "--config", "unet_tiny", "--data", str(tmp_path),
                  "--out", str(tmp_path / "run")], capsys)
    assert "train.csv is empty (no header)" in line


def test_bad_rle_in_predictions(tmp_path, capsys, tiny_truth):
    pred = tmp_path / "pred.csv"
    pred.write_text("id,predicted\naaaaaaaaaaaa,5 3 1 2\n")  # starts not sorted
    line = fails(["score", "--truth", str(tiny_truth), "--pred", str(pred), "--no-coco"], capsys)
    assert "bad RLE of image aaaaaaaaaaaa" in line and f"--pred {pred}" in line
    assert "cellseg validate" in line
    pred.write_text("image,rle\naaaaaaaaaaaa,1 5\n")  # wrong header
    line = fails(["score", "--truth", str(tiny_truth), "--pred", str(pred), "--no-coco"], capsys)
    assert "not 'id,predicted'" in line


def test_bad_rle_in_training_data(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("id,annotation,width,height,cell_type\n"
                                        "aaaaaaaaaaaa,5 3 1 2,704,520,shsy5y\n")
    line = fails(["data", "convert", "--csv", str(tmp_path / "train.csv"), "--out",
                  str(tmp_path / "c.json")], capsys, label="data convert")
    assert "train.csv: 1 bad row(s)" in line and "row 1 (line 2, id aaaaaaaaaaaa): unsorted" in line


def test_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((16, 16), np.uint8))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"this is not a checkpoint")
    line = fails(["predict", "--weights", str(ckpt), "--images", str(tmp_path / "img"),
                  "--out", str(tmp_path / "s.csv"), "--device", "cpu"], capsys)
    assert "cannot load checkpoint" in line and str(ckpt) in line and "re-download" in line


def test_corrupt_json_predictions(tmp_path, capsys, tiny_truth):
    pred = tmp_path / "res.json"
    pred.write_text("[{\"image_id\": ")
    line = fails(["score", "--truth", str(tiny_truth), "--pred", str(pred), "--no-coco"], capsys)
    assert "not valid JSON" in line


# ----------------------------------------------------------------------------- outputs and flags


def test_output_folder_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    line = fails(["data", "synth", "--out", str(target)], capsys, label="data synth")
    assert line == (f"cellseg data synth: output folder is a file, --out {target}, "
                    f"choose a folder path (it is created)")
    assert target.read_text() == "x"  # untouched


def test_output_file_that_is_a_folder(tmp_path, capsys, tiny_truth):
    line = fails(["data", "convert", "--csv", str(tiny_truth), "--out", str(tmp_path)],
                 capsys, label="data convert")
    assert "unknown output format" in line  # a folder has no .json/.csv suffix
    folder = tmp_path / "out.json"
    folder.mkdir()
    line = fails(["data", "convert", "--csv", str(tiny_truth), "--out", str(folder)],
                 capsys, label="data convert")
    assert "output file is a folder" in line


def test_fold_out_of_range_everywhere(tmp_path, capsys, tiny_truth):
    line = fails(["score", "--truth", str(tiny_truth), "--pred", str(tiny_truth),
                  "--fold", "5", "--n-folds", "5"], capsys)
    assert "fold 5 is out of range, 5 folds, pick a fold in 0..4" in line
    line = fails(["tune", "--weights", str(tiny_truth), "--data", str(tiny_truth),
                  "--fold", "-1", "--out", str(tmp_path / "t.yaml")], capsys)
    assert "fold -1 is out of range" in line
    line = fails(["train", "--config", "unet_tiny", "--set", "data.fold=3", "--data",
                  str(tiny_truth), "--out", str(tmp_path / "run")], capsys)
    assert "fold 3 is out of range" in line  # unet_tiny has 3 folds: no silent no-val run


def test_model_weights_count_must_match(tmp_path, capsys):
    a = tmp_path / "a.pt"
    a.write_bytes(b"x")
    line = fails(["predict", "--weights", str(a), "--model-weights", "1", "2", "--images",
                  str(tmp_path), "--out", str(tmp_path / "s.csv")], capsys)
    assert "2 model weights for 1 checkpoints, --model-weights" in line


# ----------------------------------------------------------------------------- --debug and bugs


def test_debug_flag_and_env_show_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["score", "--truth", str(tmp_path / "missing.csv"), "--pred", "x.csv"]
    for extra, env in (([], "1"), (["--debug"], None), (["--debug"], "0")):
        if env is None:
            monkeypatch.delenv("CELLSEG_DEBUG", raising=False)
        else:
            monkeypatch.setenv("CELLSEG_DEBUG", env)
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "UserError" in err
        assert err.strip().splitlines()[-1].startswith("cellseg score: file or folder")
    monkeypatch.setenv("CELLSEG_DEBUG", "0")  # "0" means off
    fails(argv, capsys)
    assert main(["--debug"] + argv) == 2  # before the command too
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import cellseg.commands.validate as validate

    def boom(args):
        raise KeyError("internal")

    monkeypatch.setattr(validate, "run", boom)
    with pytest.raises(KeyError, match="internal"):
        main(["validate", "x.csv"])


def test_user_message_shapes():
    assert user_message(UserError("what", where="where", fix="fix")) == "what, where, fix"
    assert user_message(ConfigError("bad key", key="a.b")) == "bad key"
    assert user_message(ValueError("a bug")) is None
    assert user_message(RuntimeError("a bug")) is None
    assert user_message(FileNotFoundError(2, "No such file or directory", "x.csv")) == \
        "x.csv does not exist, check the path"
    assert user_message(IsADirectoryError(21, "Is a directory", "d")) == \
        "d is a folder where a file is expected, pass a file path"
    assert user_message(PermissionError(13, "Permission denied", "p")).startswith(
        "p permission denied")
    # torch's DataLoader re-raises a worker's error as type(exc)(formatted traceback)
    wrapped = InputError("Caught InputError in DataLoader worker process 0.\n"
                         "Original Traceback (most recent call last):\n"
                         "  File \"x.py\", line 1, in f\n"
                         "cellseg.errors.InputError: cannot read image, a.png, replace it")
    assert user_message(wrapped) == "cannot read image, a.png, replace it"
    # a multi-line DataError: the summary and the first problem, on one line
    from cellseg.data.sartorius import DataError

    msg = user_message(DataError("train.csv: 3 bad rows", ["row 2: x", "row 3: y", "row 4: z"]))
    assert "\n" not in msg and msg.startswith("train.csv: 3 bad rows: row 2: x (and 2 more")


def test_train_on_truncated_image_is_one_line(tmp_path, capsys):
    """Through the DataLoader (workers re-raise the reader's error): still one line."""
    from cellseg.data.synthetic import generate

    generate(tmp_path / "s", n_images=2, seed=0, n_test=0, n_semi=0, n_livecell=0)
    comp = tmp_path / "s" / "competition"
    for png in (comp / "train").glob("*.png"):
        png.write_bytes(png.read_bytes()[:400])
    line = fails(["train", "--config", "unet_tiny", "--data", str(comp), "--out",
                  str(tmp_path / "run"), "--set", "train.max_steps=1", "--set", "train.epochs=1",
                  "--set", "data.fold=null", "--set", "data.workers=1", "--no-progress",
                  "--device", "cpu"], capsys, after_log=True)
    assert "cannot read image" in line and ".png" in line
