"""The peers of ``cellseg cv --reference`` (bench/plain_unet.py, bench/cellpose_ref.py,
bench/plain_maskrcnn.py): targets, error lines, and tiny runs on the real samples (1-2 steps,
tiny configurations: they prove the code paths, not the methods' quality)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bench import plain_unet


@pytest.fixture(scope="module")
def real_records(shared_sartorius, shared_livecell):
    from bench.peer_io import load_annotated

    recs = load_annotated([str(shared_sartorius), f"{shared_livecell}:val"])
    assert len(recs) == 6
    return recs


@pytest.fixture(scope="module")
def folders(real_records, tmp_path_factory):
    """A training folder (the Sartorius shsy5y image) and a test folder (one LIVECell image with
    few cells), in the competition layout ``cellseg cv`` writes for each fold."""
    from cellseg.export import write_competition_folder

    root = tmp_path_factory.mktemp("peer_data")
    train = [r for r in real_records if r.source == "sartorius"]
    test = [min((r for r in real_records if r.source == "livecell"), key=lambda r: r.n_instances)]
    write_competition_folder(train, root / "train")
    write_competition_folder(test, root / "test")
    return root / "train", root / "test", test[0]


def _need_cellpose() -> None:
    """Skip without the cellpose package, except in CI (``make venv`` installs it there)."""
    import importlib.util
    import os

    if importlib.util.find_spec("cellpose") is None:
        why = "the cellpose peer needs cellpose 3: see docs/peers.md (make venv installs it)"
        if os.environ.get("CELLSEG_STRICT") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


def _check_outputs(out: Path, held) -> dict:
    with open(out / "pred.csv") as fh:
        ids = {row["id"] for row in csv.DictReader(fh)}
    assert ids == {held.image_id}
    summary = json.loads((out / "scores.json").read_text())
    res = summary["per_image"][held.image_id]
    assert res["n_true"] == held.n_instances and 0.0 <= res["score"] <= 1.0
    return summary


# ----------------------------------------------------------------------------- plain UNet


def test_border_class_width_inside_each_cell() -> None:
    labels = np.zeros((12, 20), np.int32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2  # touching the first cell along x = 9 | 10
    for width in (1, 2, 3):
        c = plain_unet.class_map(labels, width)
        assert ((c > 0) == (labels > 0)).all()  # the border never leaves the cells
        row = c[6]
        # the band between the touching cells is 2 * width border pixels
        assert (row[10 - width:10 + width] == plain_unet.BORDER).all()
        assert row[10 - width - 1] == plain_unet.INTERIOR == row[10 + width]
        # and a cell's edge against background is `width` pixels
        assert (c[6, 2:2 + width] == plain_unet.BORDER).all() and c[6, 2 + width] == 1
    with pytest.raises(ValueError, match=">= 1"):
        plain_unet.class_map(labels, 0)


def test_oracle_per_border_width_on_real_samples(real_records) -> None:
    """Truth -> the reference's targets -> its decode (no training). Measured 2026-12-03: 0.961
    at width 1, 0.934 at width 2 (the default), 0.872 at width 3: a wider band costs ceiling on
    thin cells and must stay within a few hundredths of the 1-px ceiling at the default."""
    means = {w: float(np.mean(plain_unet.oracle(real_records, w))) for w in (1, 2)}
    assert means[1] > 0.94
    assert means[2] > 0.91 and means[1] - means[2] < 0.05


def test_plain_unet_tiny_run(folders, tmp_path) -> None:
    train, test, held = folders
    out = tmp_path / "plain"
    assert plain_unet.cli(["--train", str(train), "--test", str(test), "--out", str(out),
                           "--steps", "1", "--batch", "2", "--crop", "64",
                           "--threads", "2"]) == 0
    s = _check_outputs(out, held)
    assert s["border"] == plain_unet.DEFAULT_BORDER == 2 and (out / "model.pt").is_file()
    assert s["bf16"] is False


def test_plain_unet_bf16_run(folders, tmp_path) -> None:
    """``--bf16``: the peer's forward pass under CPU bfloat16 autocast; it still learns a finite
    loss and writes its outputs."""
    train, test, held = folders
    out = tmp_path / "plain_bf16"
    assert plain_unet.cli(["--train", str(train), "--test", str(test), "--out", str(out),
                           "--steps", "2", "--batch", "2", "--crop", "64", "--threads", "2",
                           "--bf16"]) == 0
    assert _check_outputs(out, held)["bf16"] is True


@pytest.mark.parametrize("native", [True, False])
def test_the_plain_unet_peer_trains_at_the_kits_precision(monkeypatch, tmp_path, native) -> None:
    """cv gives the plain U-Net the kit's steps AND its precision: --bf16 exactly when the kit's
    recipe trains in bfloat16 on this CPU, so both get the same CPU budget."""
    from cellseg import cv
    from cellseg import config

    monkeypatch.setattr(config, "native_bfloat16", lambda device: native)
    monkeypatch.setattr(cv, "repo_root", lambda: tmp_path)

    def command(config: str, *overrides: str) -> list[str]:
        settings = cv.CVSettings(config=config, overrides=overrides)
        return cv.peer_command("plain", settings, tmp_path / "tr", tmp_path / "te", tmp_path / "o")

    assert ("--bf16" in command("unet_competition_cpu")) is native
    assert ("--bf16" in command("unet_small_real")) is native
    assert "--bf16" not in command("unet_small_real", "train.amp=false")
    assert "--bf16" in command("unet_tiny", "train.amp=true", "train.amp_dtype=bfloat16")
    assert "--bf16" not in command("unet_competition_cpu", "train.amp=false")
    cellpose = cv.peer_command("cellpose", cv.CVSettings(config="unet_competition_cpu"),
                               tmp_path / "tr", tmp_path / "te", tmp_path / "o")
    assert "--bf16" not in cellpose  # no such switch: it trains as its own trainer does


# ----------------------------------------------------------------------------- Cellpose


def test_cellpose_pretrained_start_and_errors(folders, tmp_path, capsys) -> None:
    """--pretrained FILE: a local Cellpose 3 model file is loaded, never downloaded (here a
    random CPnet saved as a stand-in for cyto3); ``--steps 0`` evaluates it as is. A missing
    file is one line and exit 2 (Cellpose itself would fall back to downloading cyto3)."""
    _need_cellpose()
    from bench import cellpose_ref

    train, test, held = folders
    base = ["--train", str(train), "--test", str(test), "--threads", "2"]
    assert cellpose_ref.cli(base + ["--out", str(tmp_path / "x"), "--steps", "0",
                                    "--pretrained", str(tmp_path / "cyto3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no such file" in err[-1] and "nothing is downloaded" in err[-1]
    stand_in = tmp_path / "cyto3"
    cellpose_ref.build_model().net.save_model(str(stand_in))
    out = tmp_path / "cp0"
    assert cellpose_ref.cli(base + ["--out", str(out), "--steps", "0",
                                    "--pretrained", str(stand_in)]) == 0
    s = _check_outputs(out, held)
    assert s["pretrained"] == str(stand_in) and s["steps"] == 0 and s["cellpose"].startswith("3.")


# ----------------------------------------------------------------------------- Mask R-CNN


def test_maskrcnn_targets_and_schedule(real_records) -> None:
    from bench import plain_maskrcnn as pm

    rec = min(real_records, key=lambda r: r.n_instances)
    image, target = pm.sample(rec, np.random.default_rng(0))
    n = rec.n_instances
    assert image.shape == (3, *rec.shape) and float(image.max()) <= 1.0
    assert target["masks"].shape == (n, *rec.shape) and target["boxes"].shape == (n, 4)
    boxes = target["boxes"].numpy()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # every mask lies inside its box
    m = target["masks"].numpy()
    for k in range(0, n, max(1, n // 10)):
        ys, xs = np.nonzero(m[k])
        x1, y1, x2, y2 = boxes[k]
        assert xs.min() == x1 and xs.max() + 1 == x2 and ys.min() == y1 and ys.max() + 1 == y2
    # references-style schedule: warm-up from 0.001, x0.1 at 16/26 and 22/26 of the run
    assert pm.lr_factor(0, 260, 26) == pytest.approx(0.001)
    assert pm.lr_factor(30, 260, 26) == 1.0
    assert pm.lr_factor(160, 260, 26) == pytest.approx(0.1)
    assert pm.lr_factor(220, 260, 26) == pytest.approx(0.01)


def test_maskrcnn_never_downloads(folders, tmp_path, monkeypatch, capsys) -> None:
    from bench import plain_maskrcnn as pm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    train, test, _ = folders
    assert pm.cli(["--train", str(train), "--test", str(test), "--out", str(tmp_path / "o"),
                   "--steps", "1", "--weights", "coco"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bench.plain_maskrcnn: ") and "never downloads" in err[-1]
    assert "maskrcnn_resnet50_fpn_coco" in err[-1]


# ----------------------------------------------------------------------------- cellseg cv


def test_cv_runs_the_named_peers(tmp_path, shared_sartorius, shared_livecell, monkeypatch
                                 ) -> None:
    """``--reference cellpose plain_maskrcnn``: each peer trains on the fold's folder through
    its own module (1 step, tiny settings patched in) and is a method of its own in cv.json."""
    _need_cellpose()
    from cellseg import cv
    from cellseg.cli import main

    tiny = {"cellpose": cv.Peer("cellpose", "bench.cellpose_ref",
                                ("--batch", "2", "--bsize", "64")),
            "plain_maskrcnn": cv.Peer("plain_maskrcnn", "bench.plain_maskrcnn",
                                      ("--backbone", "resnet18", "--min-size", "128",
                                       "--max-size", "176"))}
    for name, peer in tiny.items():
        monkeypatch.setitem(cv.PEERS, name, peer)
        monkeypatch.setitem(cv.PEER_BY_METHOD, peer.method, peer)
    out = tmp_path / "cv"
    argv = ["cv", "--data", str(shared_sartorius), "--data", f"{shared_livecell}:val",
            "--max-images", "2", "--steps", "1", "--only-fold", "0", "--out", str(out),
            "--only-reference", "--reference", "cellpose", "plain_maskrcnn"]
    assert main(argv) == 0
    result = json.loads((out / "cv.json").read_text())
    assert sorted(result["summary"]) == ["cellpose", "plain_maskrcnn"]
    assert result["settings"]["methods"] == ["cellpose", "plain_maskrcnn"]
    for m in ("cellpose", "plain_maskrcnn"):
        log = (out / "fold_0" / m / "train.log").read_text().splitlines()[0]
        assert f"-m {tiny[m].module} --train {out / 'fold_0' / 'train_data'}" in log
        assert 0.0 <= result["summary"][m]["mean"] <= 1.0


def test_cv_reference_names(tmp_path, shared_sartorius, capsys) -> None:
    from cellseg.cli import main
    from cellseg.commands.cv import add_arguments
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    base = ["--data", "x", "--out", "o"]
    assert p.parse_args(base).reference is None  # no peer
    assert p.parse_args(base + ["--reference"]).reference == []  # the default peer
    assert main(["cv", "--data", str(shared_sartorius), "--out", str(tmp_path / "o"),
                 "--reference", "plain_unet", "detectron"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reference detectron is not a peer" in err[0]
    assert "plain_unet, cellpose, plain_maskrcnn" in err[0]
