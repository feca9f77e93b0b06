"""Threshold tuning: improves (or keeps) the competition score on cached raw predictions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cellseg.core import rle
from cellseg.data.record import ImageRecord
from cellseg.infer import tune
from cellseg.infer.config import InferenceConfig, TypeThresholds, load_inference_config
from cellseg.core.instances import Instances

SHAPE = (48, 64)


def _case(seed: int, cell_type: str) -> tuple[ImageRecord, Instances]:
    """Truth: 6 squares. Raw prediction: the true cells (score 0.8-0.95), low-score false
    positives of 4-9 px (score 0.2-0.4) and a near-duplicate of one cell (score 0.7)."""
    rng = np.random.default_rng(seed)
    truth, pred, scores = [], [], []
    for k in range(6):
        y, x = 4 + 14 * (k // 3), 4 + 20 * (k % 3)
        m = np.zeros(SHAPE, bool)
        m[y:y + 10, x:x + 12] = True
        truth.append(m)
        pred.append(m)
        scores.append(rng.uniform(0.8, 0.95))
    dup = np.roll(truth[0], 2, axis=1)
    pred.append(dup)
    scores.append(0.7)
    for _ in range(4):
        m = np.zeros(SHAPE, bool)
        y, x = rng.integers(30, 44), rng.integers(0, 60)
        m[y:y + rng.integers(2, 4), x:x + 3] = True
        pred.append(m)
        scores.append(rng.uniform(0.2, 0.4))
    rec = ImageRecord(f"img{seed}", Path(f"img{seed}.png"), *SHAPE, cell_type=cell_type,
                      rles=tuple(rle.encode(m) for m in truth))
    return rec, Instances.from_dense(np.stack(pred), scores=np.array(scores))


def test_tune_improves_and_never_lowers_the_score(tmp_path):
    cases = [_case(s, t) for s, t in [(0, "astro"), (1, "astro"), (2, "cort"), (3, None)]]
    records, raw = [c[0] for c in cases], [c[1] for c in cases]
    cfg = InferenceConfig(default=TypeThresholds(score_thresh=0.1, min_area=0, nms_iou=1.0),
                          types={}, overlap_drop=0.9, fill_holes=False)
    tuned, report = tune.tune_thresholds(raw, records, cfg, progress=False)
    assert report["after"] > report["before"]
    assert report["after"] == pytest.approx(1.0)  # the false positives and duplicate can go
    for t in ("astro", "cort"):
        th = tuned.thresholds_for(t)
        assert th.score_thresh > 0.4 or th.min_area > 9
        assert report["per_type"][t]["after"] >= report["per_type"][t]["before"]
    assert report["per_type"]["default"]["n_images"] == 1
    # already optimal: tuning keeps it
    again, report2 = tune.tune_thresholds(raw, records, tuned, progress=False)
    assert report2["after"] == pytest.approx(report2["before"]) and again == tuned
    # the written YAML loads back to the same config
    tune.write_config(tmp_path / "tuned.yaml", tuned)
    assert load_inference_config(tmp_path / "tuned.yaml") == tuned


def test_cache_round_trip(tmp_path):
    rec, inst = _case(5, "cort")
    tune.save_cache(tmp_path / "c.pkl", [rec], [inst])
    back = tune.load_cache(tmp_path / "c.pkl", [rec])
    assert back is not None and np.array_equal(back[0].boxes, inst.boxes)
    other, _ = _case(6, "cort")
    assert tune.load_cache(tmp_path / "c.pkl", [rec, other]) is None


def test_cli_tune_on_real_train_image(tmp_path, shared_sartorius):
    import torch
    from cellseg.checkpoint import save_checkpoint
    from cellseg.cli import main
    from cellseg.models import get_family

    torch.manual_seed(0)
    model = get_family("unet").build(encoder_name="resnet18", encoder_depth=3,
                                     decoder_channels=(16, 8, 4))
    ckpt = tmp_path / "unet.pt"
    save_checkpoint(ckpt, model=model.state_dict(), spec=model.spec)
    argv = ["tune", "--weights", str(ckpt), "--data", str(shared_sartorius), "--out",
            str(tmp_path / "tuned.yaml"), "--cache", str(tmp_path / "raw.pkl"), "--device", "cpu",
            "--set", "tile_size=null", "--report", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["after"] >= report["before"]
    # a class-agnostic UNet cannot tell predict the image's type: the default thresholds, which
    # predict will use, are the ones tuned
    assert list(report["per_type"]) == ["default"]
    assert (tmp_path / "raw.pkl").exists()
    ckpt.unlink()  # the second run must come from the cache alone
    assert main(argv) == 0
    cfg = load_inference_config(tmp_path / "tuned.yaml")
    assert "shsy5y" in cfg.types


def test_by_type_false_tunes_default_on_all_images() -> None:
    """Class-agnostic predictions: per-type tuning would tune thresholds predict never applies."""
    from cellseg.data.record import ImageRecord
    from cellseg.core.instances import Instances
    from cellseg.core import rle

    truth = np.zeros((2, 32, 32), bool)
    truth[0, 2:10, 2:10] = truth[1, 20:30, 20:30] = True
    noise = np.zeros((1, 32, 32), bool)
    noise[0, 12:15, 12:15] = True  # a weak false positive
    raw = Instances.from_dense(np.concatenate([truth, noise]),
                               scores=np.array([0.9, 0.9, 0.3], np.float32))
    recs = [ImageRecord(f"im{k}", Path("x.png"), 32, 32, cell_type=t,
                        rles=tuple(rle.encode(m) for m in truth)) for k, t in enumerate(["astro", "cort"])]
    cfg = load_inference_config(None, ["default.score_thresh=0.1", "default.min_area=0"])
    tuned, report = tune.tune_thresholds([raw, raw], recs, cfg, progress=False, by_type=False)
    assert list(report["per_type"]) == ["default"] and report["per_type"]["default"]["n_images"] == 2
    assert tuned.default.score_thresh > 0.3 and report["after"] == 1.0 > report["before"]
    assert tuned.types == cfg.types  # per-type sections untouched


def test_tune_searches_pred_iou_filter_when_predictions_carry_it() -> None:
    """promptseg masks carry a learned IoU: tune adds min_pred_iou to its grid and uses it to drop
    a confident but wrong mask that no score threshold can separate."""
    truth = np.zeros((2, 40, 40), bool)
    truth[0, 2:12, 2:12] = truth[1, 20:32, 20:32] = True
    wrong = np.zeros((1, 40, 40), bool)
    wrong[0, 2:12, 25:38] = True  # a false positive scoring as high as the true cells
    raw = Instances.from_dense(np.concatenate([truth, wrong]),
                               scores=np.array([0.9, 0.9, 0.95], np.float32),
                               pred_iou=np.array([0.9, 0.85, 0.3]))
    recs = [ImageRecord("im0", Path("x.png"), 40, 40, rles=tuple(rle.encode(m) for m in truth))]
    cfg = load_inference_config(None, ["default.score_thresh=0.1", "default.min_area=0"])
    tuned, report = tune.tune_thresholds([raw], recs, cfg, progress=False, by_type=False)
    assert report["before"] < 1.0 and report["after"] == 1.0
    assert 0.3 < tuned.default.min_pred_iou <= 0.85
    plain = Instances.from_dense(np.concatenate([truth, wrong]))  # no extras: no such grid
    _, report2 = tune.tune_thresholds([plain], recs, cfg, progress=False, by_type=False)
    assert "min_pred_iou" not in report2["per_type"]["default"]["thresholds"] or \
        report2["per_type"]["default"]["thresholds"]["min_pred_iou"] == 0.0


# ----------------------------------------------------------------------------- decode tuning


def _touching_pair_maps() -> tuple[ImageRecord, np.ndarray]:
    """Two touching 12x12 squares. Maps: cell = 1 on both, no border signal, centre = 1 at each
    square's middle and 0.5 along the contact: a seed threshold under 0.5 joins the two seeds
    into one marker (one merged cell), 0.5 or more keeps two."""
    cell = np.zeros(SHAPE, np.float32)
    cell[10:22, 10:34] = 1.0
    centre = np.zeros(SHAPE, np.float32)
    centre[10:22, 10:34] = 0.5
    centre[13:19, 13:19] = 1.0
    centre[13:19, 25:31] = 1.0
    centre[10:22, 21:23] = 0.5
    maps = np.stack([cell, np.zeros(SHAPE, np.float32), centre])
    a = np.zeros(SHAPE, bool)
    a[10:22, 10:22] = True
    b = np.zeros(SHAPE, bool)
    b[10:22, 22:34] = True
    rec = ImageRecord("pair", Path("pair.png"), *SHAPE, cell_type="astro",
                      rles=(rle.encode(a), rle.encode(b)))
    return rec, maps


def _stitched(maps: np.ndarray, family=None):
    from cellseg.infer.stitch import DenseMaps, Stitched
    from cellseg.models.unet import FAMILY

    return Stitched(maps.shape[1:], dense=[DenseMaps(family or FAMILY, maps, 1.0)])


def test_tune_decode_splits_touching_cells_with_a_higher_seed_threshold() -> None:
    rec, maps = _touching_pair_maps()
    cfg = InferenceConfig(default=TypeThresholds(score_thresh=0.0, min_area=0, nms_iou=1.0),
                          decode={"seed_thresh": 0.3}, fill_holes=False)
    st = [_stitched(maps)]
    before = tune.raw_from_stitched(st, cfg)
    assert len(before[0]) == 1  # the merge this tuning must undo
    decode, report = tune.tune_decode(st, [rec], cfg, progress=False)
    assert decode["seed_thresh"] >= 0.5
    assert report["before"] < 0.5 and report["after"] == pytest.approx(1.0)
    after = tune.raw_from_stitched(st, dataclasses.replace(cfg, decode=decode))
    assert len(after[0]) == 2


def test_decode_per_type_tuned_and_applied_to_that_type_only() -> None:
    """A type's own decode (types.<t>.decode) is tuned on that type's images, lands in the
    config, and is applied to images of that type only."""
    rec, maps = _touching_pair_maps()  # an astro pair that seed 0.3 merges
    th = TypeThresholds(score_thresh=0.0, min_area=0, nms_iou=1.0)
    cfg = InferenceConfig(default=th, types={"astro": th, "cort": th},
                          decode={"seed_thresh": 0.3}, fill_holes=False)
    st = [_stitched(maps)]
    tuned, report = tune.tune_decode_by_type(st, [rec], cfg, progress=False)
    assert tuned.decode == {"seed_thresh": 0.3}  # the global decode stays
    assert tuned.types["astro"].decode["seed_thresh"] >= 0.5
    assert tuned.types["cort"].decode == {}
    assert report["per_type"]["astro"]["after"] == pytest.approx(1.0)
    assert tuned.decode_for("astro")["seed_thresh"] >= 0.5
    assert tuned.decode_for(None) == tuned.decode_for("cort") == {"seed_thresh": 0.3}
    # applied by type: the astro image splits, the same maps as cort (or unknown) stay merged
    assert [len(r) for r in tune.raw_from_stitched(st * 3, tuned, ["astro", "cort", None])] \
        == [2, 1, 1]
    # written and read back as a config file
    again = load_inference_config(to_dict_yaml_roundtrip(tuned))
    assert again.types["astro"].decode == tuned.types["astro"].decode


def to_dict_yaml_roundtrip(cfg: InferenceConfig):
    import yaml

    from cellseg.configlib import to_dict

    return yaml.safe_load(yaml.safe_dump(to_dict(cfg)))


def test_unet_decode_grid_lives_with_the_family() -> None:
    from cellseg.models.unet import FAMILY
    from cellseg.models.unet_decode import DECODE_GRID, decode_unet

    assert tune.decode_grid(FAMILY) is DECODE_GRID
    import inspect

    # every searched name is a keyword argument of the decode it tunes
    assert set(DECODE_GRID) <= set(inspect.signature(decode_unet).parameters)


def test_tune_decode_needs_a_known_dense_family() -> None:
    from cellseg.models.unet import FAMILY

    rec, maps = _touching_pair_maps()
    other = dataclasses.replace(FAMILY, name="mystery")
    with pytest.raises(ValueError, match="no decode grid for family 'mystery'"):
        tune.tune_decode([_stitched(maps, other)], [rec], InferenceConfig(), progress=False)


def test_collect_stitched_reproduces_predict_raw(tmp_path, shared_sartorius,
                                                 tiny_unet_ckpt) -> None:
    """Decode tuning reruns predict's own decode half on predict's own stitched maps: at any
    decode setting, the raw instances are exactly predict_raw's."""
    from cellseg.data.loaders import load_records
    from cellseg.infer.predict import load_models, predict_raw

    models = load_models([tiny_unet_ckpt], device="cpu")
    records = load_records(shared_sartorius)
    cfg = load_inference_config(None, ["tta=[h]", "decode.seed_thresh=0.4"])
    stitched = tune.collect_stitched(models, records, cfg, device="cpu", progress=False)
    assert stitched[0].dense[0].maps.shape == (3, *records[0].shape)
    direct = predict_raw(models, [r.read_image() for r in records], cfg, device="cpu")[0]
    again = tune.raw_from_stitched(stitched, cfg)[0]
    assert len(again) == len(direct) > 0
    assert np.array_equal(again.scores, direct.scores)
    assert np.array_equal(again.to_label_image(), direct.to_label_image())


def test_cli_tune_pools_several_sources_and_tunes_decode(tmp_path, shared_sartorius,
                                                         shared_livecell, tiny_unet_ckpt) -> None:
    import json

    from cellseg.cli import main

    ckpt = tiny_unet_ckpt
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "--weights", str(ckpt), "--data", str(shared_sartorius),
            "--data", f"{shared_livecell}:val", "--max-images", "2", "--decode",
            "--out", str(out), "--device", "cpu", "--report", str(tmp_path / "r.json"),
            "--no-progress"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["decode"]["after"] >= report["decode"]["before"]
    assert report["after"] >= report["before"]
    # both sources reached the tuning: the first two records are one of each
    assert report["per_type"]["default"]["n_images"] == 2
    cfg = load_inference_config(out)
    assert dict(cfg.decode) == report["decode"]["decode"]


def test_cli_tune_second_data_is_not_ignored(tmp_path, shared_sartorius, tiny_unet_ckpt
                                             ) -> None:
    from cellseg.cli import main

    ckpt = tiny_unet_ckpt
    rc = main(["tune", "--weights", str(ckpt), "--data", str(shared_sartorius),
               "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "t.yaml"),
               "--no-progress"])
    assert rc == 2  # the second source is read (and found missing), not silently dropped
