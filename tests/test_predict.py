"""Prediction end to end: checkpoints -> tiled inference -> submission.csv, on the real samples."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

import torch

from cellseg.infer.config import InferenceConfig, TypeThresholds, load_inference_config  # noqa: E402
from cellseg.infer.predict import (PredictOptions, load_models, predict_image,  # noqa: E402
                                   predict_images, predict_to_submission)


def _tiny_unet_checkpoint(path: Path) -> Path:
    from cellseg.checkpoint import save_checkpoint
    from cellseg.models import get_family

    torch.manual_seed(0)
    fam = get_family("unet")
    model = fam.build(encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
    save_checkpoint(path, model=model.state_dict(), spec=model.spec)
    return path


def _tiny_maskrcnn_checkpoint(path: Path) -> Path:
    from cellseg.checkpoint import save_checkpoint
    from cellseg.models import get_family

    fam = get_family("maskrcnn")
    torch.manual_seed(0)
    model = fam.build(backbone="resnet18", fpn_channels=32, box_head_dim=64, mask_head_channels=16,
                      detections_per_img=50, rpn_pre_nms_top_n_test=200,
                      rpn_post_nms_top_n_test=100)
    save_checkpoint(path, model=model.state_dict(), spec=model.spec)
    return path


def _rows(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["id", "predicted"]
        for image_id, pred in reader:
            out.setdefault(image_id, []).append(pred)
    return out


def _image_folder(tmp: Path, sartorius: Path, livecell: Path, *, corrupt: bool) -> Path:
    folder = tmp / "images"
    folder.mkdir()
    for p in sorted((sartorius / "test").glob("*.png")):
        (folder / p.name).symlink_to(p)
    tifs = sorted((livecell / "images" / "livecell_train_val_images").rglob("*.tif"))[:1]
    for p in tifs:
        (folder / p.name).symlink_to(p)
    if corrupt:
        (folder / "broken_image.png").write_bytes(b"not a png at all")
    return folder


def test_predict_to_submission_real_images_tiny_unet(tmp_path, shared_sartorius, shared_livecell):
    from cellseg.data.sartorius import list_images
    from cellseg.core.submission import validate_submission

    folder = _image_folder(tmp_path, shared_sartorius, shared_livecell, corrupt=True)
    models = load_models([_tiny_unet_checkpoint(tmp_path / "unet.pt")], device="cpu")
    records = list_images(folder, read_size=False)
    # a threshold no candidate of this random UNet reaches (its scores are mean probabilities,
    # < 1): every image goes through the empty policy ("best")
    cfg = load_inference_config(None, ["tile_size=256", "overlap=32", "batch_size=4",
                                       "default.score_thresh=1.0", "types={}"])
    out = tmp_path / "submission.csv"
    opts = PredictOptions(save_masks=tmp_path / "masks", overlay=tmp_path / "overlay",
                          progress=False)
    failed = predict_to_submission(models, records, cfg, out, opts)
    assert failed == 1  # the corrupt file, named on stderr; the run went on
    rows = _rows(out)
    assert set(rows) == {r.image_id for r in records}
    assert all(len(v) == 1 and v[0] for v in rows.values())  # exactly one cell each, non-empty
    problems = validate_submission(out, ids=[r.image_id for r in records], shape=(520, 704))
    assert [p for p in problems if p.severity == "error"] == []
    import cv2

    for r in [r for r in records if r.image_id != "broken_image"]:
        lab = cv2.imread(str(tmp_path / "masks" / f"{r.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint16 and lab.shape == r.shape and lab.max() == 1
        ov = cv2.imread(str(tmp_path / "overlay" / f"{r.image_id}.png"))
        assert ov.shape == (*r.shape, 3)


def test_predict_image_normal_thresholds_never_overlaps(tmp_path, shared_sartorius):
    from cellseg.data.sartorius import list_images

    models = load_models([_tiny_unet_checkpoint(tmp_path / "unet.pt")], device="cpu")
    rec = list_images(shared_sartorius / "test")[0]
    img = rec.read_image()
    cfg = InferenceConfig(tile_size=None, tta=("h",),
                          default=TypeThresholds(score_thresh=0.0, min_area=1, nms_iou=0.5))
    inst = predict_image(models, img, cfg)
    assert inst.image_shape == img.shape and len(inst) >= 1
    assert sum(int(m.sum()) for m in inst.masks) == int((inst.to_label_image() > 0).sum())


def test_ensemble_of_dense_and_instance_families(tmp_path, shared_sartorius):
    from cellseg.data.sartorius import list_images
    from cellseg.core.submission import validate_submission

    paths = [_tiny_unet_checkpoint(tmp_path / "unet.pt"),
             _tiny_maskrcnn_checkpoint(tmp_path / "mrcnn.pt")]
    models = load_models(paths, device="cpu", weights=[1.0, 0.5])
    img = list_images(shared_sartorius / "test")[0].read_image()[:256, :320]
    cfg = InferenceConfig(tile_size=256, overlap=32,
                          default=TypeThresholds(score_thresh=0.0, min_area=1, nms_iou=0.5))
    out = predict_images(models, [img, img[:200, :300]], cfg)
    assert [o.image_shape for o in out] == [(256, 320), (200, 300)]
    assert all(len(o) >= 1 for o in out)
    # the Mask R-CNN alone, whole real images, through the submission writer
    records = list_images(shared_sartorius / "test")
    sub = tmp_path / "mrcnn.csv"
    assert predict_to_submission(models[1:], records, InferenceConfig(), sub,
                                 PredictOptions(progress=False)) == 0
    assert set(_rows(sub)) == {r.image_id for r in records}
    assert [p for p in validate_submission(sub, images=shared_sartorius / "test")
            if p.severity == "error"] == []


def test_cli_predict_writes_valid_submission(tmp_path, shared_sartorius):
    from cellseg.cli import main
    from cellseg.core.submission import validate_submission

    ckpt = _tiny_unet_checkpoint(tmp_path / "unet.pt")
    out = tmp_path / "sub.csv"
    rc = main(["predict", "--weights", str(ckpt), "--images", str(shared_sartorius / "test"),
               "--out", str(out), "--device", "cpu", "--set", "tile_size=null",
               "--no-progress", "--cell-type", "astro"])
    assert rc == 0
    assert [p for p in validate_submission(out, images=shared_sartorius / "test")
            if p.severity == "error"] == []
    assert main(["predict", "--weights", str(ckpt), "--images", str(shared_sartorius / "test"),
                 "--out", str(out), "--set", "no_such_key=1"]) == 2


def test_model_weights_must_match_models():
    cfg = InferenceConfig(model_weights=(1.0, 2.0))
    fake = (torch.nn.Linear(1, 1), object(), 1.0)
    with pytest.raises(ValueError, match="model_weights"):
        predict_images([fake], [np.zeros((8, 8), np.uint8)], cfg)
    with pytest.raises(ValueError, match="uint8"):
        predict_images([fake], [np.zeros((8, 8), np.float32)], InferenceConfig())


class _ThresholdFamily:
    """Instance family: one instance = the pixels > 127; raises on an all-white tile (to test
    that a prediction failure is isolated to its image)."""

    name, kind = "fake_threshold", "instances"

    def preprocess(self, model, images):
        return torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]

    def predict_instances(self, model, images):
        from cellseg.core.instances import Instances

        out = []
        for img in images[:, 0].numpy():
            if (img == 255).all():
                raise RuntimeError("simulated CUDA error")
            out.append(Instances.from_dense((img > 127)[None], scores=np.array([0.9])))
        return out


def test_prediction_failure_is_isolated(tmp_path, capsys):
    from cellseg.data.record import ImageRecord
    from cellseg.io import write_png

    records = []
    for name, value in [("good1", 0), ("bad", 255), ("good2", 0)]:
        img = np.full((40, 60), value, np.uint8)
        img[10:20, 10:30] = 200
        if value == 255:
            img[:] = 255
        write_png(tmp_path / f"{name}.png", img)
        records.append(ImageRecord(name, tmp_path / f"{name}.png", 40, 60, source="synthetic"))
    out = tmp_path / "sub.csv"
    cfg = InferenceConfig(batch_size=3, default=TypeThresholds(score_thresh=0.5, min_area=1))
    failed = predict_to_submission([(torch.nn.Linear(1, 1), _ThresholdFamily(), 1.0)], records,
                                   cfg, out, PredictOptions(progress=False))
    assert failed == 1
    assert "prediction failed for bad" in capsys.readouterr().err
    rows = _rows(out)
    assert set(rows) == {"good1", "bad", "good2"}
    assert rows["good1"] == [" ".join(f"{r * 60 + 11} 20" for r in range(10, 20))]
    assert len(rows["bad"]) == 1  # the placeholder
