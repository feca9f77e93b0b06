"""promptseg family: box-prompted masks (crop decoder and SAM architecture), tiny CPU configs."""

from __future__ import annotations


import numpy as np
import pytest

import torch

from cellseg.core.instances import Instances  # noqa: E402
from cellseg.models.promptseg import FAMILY, expand_boxes, stability_score  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402

TINY_SAM = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                window_size=2, prompt_dim=32, mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32)
TINY_CROP = dict(crop_size=32, base_channels=8, levels=2)


def ellipse_image(seed: int, shape=(96, 96), n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A phase-contrast-like image of n non-overlapping ellipses (bright body, dark rim).
    Returns (H, W) uint8 and (N, H, W) bool masks."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = rng.normal(128, 6, shape)
    masks: list[np.ndarray] = []
    for _ in range(n):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        a, b, t = rng.uniform(5, 12), rng.uniform(4, 9), rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
        v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
        r = u ** 2 + v ** 2
        m = r < 1
        for other in masks:
            m &= ~other
        if m.sum() < 10:
            continue
        masks.append(m)
        img[m] += rng.uniform(15, 35)
        img[(r >= 1) & (r < 1.4)] -= 20
    return np.clip(img, 0, 255).astype(np.uint8), np.array(masks)


def synthetic_image(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The kit's synthetic renderer at 128x128 (ellipses when a seed gives < 2 usable cells)."""
    from cellseg.data import synthetic

    img, masks = synthetic.render("shsy5y", seed, shape=(128, 128))
    masks = np.array([m for m in masks if m.sum() >= 10]).reshape(-1, 128, 128)
    if len(masks) >= 2:
        return img, masks
    return ellipse_image(seed, (128, 128), n=8)


def gt_mask_iou(model, images_masks) -> float:
    """Mean over GT cells of the IoU of the mask predicted from the cell's own GT box."""
    model.eval()
    ious = []
    for img, masks in images_masks:
        x = FAMILY.preprocess(model, img[None])
        t = pipeline_target(FAMILY, masks, np.zeros(len(masks)))
        # the model emits raw candidates (no filter): pair prediction i with GT i
        out = FAMILY.predict_with_boxes(model, x, [t["boxes"].numpy()])[0]
        pred = np.zeros((len(masks),) + img.shape, bool)
        for i in range(len(out)):
            d = out.dense(i)
            j = int(np.argmax([(d & g).sum() for g in masks]))
            pred[j] |= d
        for p, g in zip(pred, masks):
            ious.append((p & g).sum() / (p | g).sum())
    model.train()
    return float(np.mean(ious))


# ----------------------------------------------------------------------------- pure helpers


def test_stability_score_matches_hand_computation_and_sam():
    logits = torch.tensor([[[2.0, 0.5, -0.5], [-2.0, 1.0, 1.5]],
                           [[-3.0, -3.0, -3.0], [-3.0, -3.0, -3.0]]])
    # image 0: > +1: {2.0, 1.5} -> 2 pixels (1.0 is not > 1); > -1: {2, .5, -.5, 1, 1.5} -> 5
    got = stability_score(logits, 0.0, 1.0)
    assert got[0].item() == pytest.approx(2 / 5)
    assert got[1].item() == 0.0  # empty loose mask: 0 (SAM would divide by zero)
    from segment_anything.utils.amg import calculate_stability_score

    rng = torch.Generator().manual_seed(0)
    rand = torch.randn(4, 16, 16, generator=rng) * 3
    torch.testing.assert_close(stability_score(rand), calculate_stability_score(rand, 0.0, 1.0))


def test_expand_boxes_and_pipeline_target():
    r = expand_boxes(torch.tensor([[10.0, 20.0, 30.0, 30.0], [0.0, 0.0, 2.0, 2.0]]), 0.25, 8.0)
    torch.testing.assert_close(r[0], torch.tensor([5.0, 17.5, 35.0, 32.5]))
    torch.testing.assert_close(r[1], torch.tensor([-3.0, -3.0, 5.0, 5.0]))  # min_size 8
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 10:20, 29] = True  # touches the bottom-right border
    t = pipeline_target(FAMILY, masks, np.array([0, 1, 2]))
    assert t["boxes"].tolist() == [[3, 2, 9, 5], [29, 10, 30, 20]]  # empty mask 1 dropped
    assert t["labels"].tolist() == [0, 2] and t["masks"].shape == (2, 20, 30)


def test_collate_pads_to_largest():
    model = FAMILY.build(**TINY_CROP)
    a = FAMILY.preprocess(model, np.zeros((1, 40, 50), np.uint8))[0]
    b = FAMILY.preprocess(model, np.zeros((1, 48, 44), np.uint8))[0]
    ma = pipeline_target(FAMILY, np.ones((1, 40, 50), bool), np.zeros(1))
    mb = pipeline_target(FAMILY, np.ones((1, 48, 44), bool), np.zeros(1))
    x, targets = FAMILY.collate([(a, ma), (b, mb)])
    assert x.shape == (2, 1, 48, 50)
    assert [tuple(t["masks"].shape) for t in targets] == [(1, 48, 50), (1, 48, 50)]
    assert targets[0]["masks"][0, 40:].sum() == 0


# ----------------------------------------------------------------------------- SAM architecture


def test_tiny_sam_forward_with_box_prompts_one_call_per_image(monkeypatch):
    model = FAMILY.build(decoder="sam", crop_size=24, sam=TINY_SAM)
    dec = model.decoder
    calls = []
    orig = dec.sam.mask_decoder.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["sparse_prompt_embeddings"].shape[0])
        return orig(*args, **kwargs)

    monkeypatch.setattr(dec.sam.mask_decoder, "forward", counting)
    x = FAMILY.preprocess(model, (np.random.default_rng(0).random((2, 50, 70)) * 255).astype(np.uint8))
    boxes = [torch.tensor([[5.0, 5.0, 20.0, 25.0], [30.0, 10.0, 60.0, 40.0], [0.0, 0.0, 70.0, 50.0]]),
             torch.zeros((0, 4))]
    regions = [model.regions(b) for b in boxes]
    logits, iou = dec(x, boxes, regions)
    assert logits.shape == (3, 1, 24, 24) and iou.shape == (3,)
    assert calls == [3]  # all boxes of image 0 in ONE mask-decoder call; image 1 has none
    assert torch.isfinite(logits).all()
    # SAM input: longest side resized to img_size, padded square
    sam_in, scale = dec.to_sam_input(x)
    assert sam_in.shape == (2, 3, 64, 64) and scale == pytest.approx(64 / 70)


def test_sam_weights_load_from_local_file(tmp_path):
    a = FAMILY.build(decoder="sam", crop_size=16, sam=TINY_SAM)
    path = tmp_path / "sam_tiny.pth"
    # released SAM files are bare state_dicts; fine-tuned ones often carry a "module." prefix
    torch.save({"model": {f"module.{k}": v for k, v in a.decoder.sam.state_dict().items()}}, path)
    b = FAMILY.build(decoder="sam", crop_size=16, sam=TINY_SAM, sam_checkpoint=str(path))
    for (k, va), vb in zip(a.decoder.sam.state_dict().items(), b.decoder.sam.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)
    assert b.spec.args["sam_checkpoint"] is None  # the weights live in the state_dict
    wrong = dict(TINY_SAM, embed_dim=16)
    with pytest.raises(ValueError, match="does not fit"):
        FAMILY.build(decoder="sam", crop_size=16, sam=wrong, sam_checkpoint=str(path))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        FAMILY.build(decoder="sam", sam=TINY_SAM, sam_checkpoint=str(tmp_path / "missing.pth"))


def test_tiny_sam_trains_and_predicts():
    torch.manual_seed(0)
    model = FAMILY.build(decoder="sam", crop_size=16, sam=TINY_SAM)
    img, masks = ellipse_image(3, (64, 64), n=4)
    x = FAMILY.preprocess(model, img[None])
    batch = FAMILY.collate([(x[0], pipeline_target(FAMILY, masks, np.zeros(len(masks))))])
    losses = FAMILY.loss(model, *batch)
    assert set(losses) >= {"loss", "loss_bce", "loss_dice", "loss_iou"}
    losses["loss"].backward()
    grads = [p.grad for p in model.decoder.sam.mask_decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    t = pipeline_target(FAMILY, masks, np.zeros(len(masks)))
    out = FAMILY.predict_with_boxes(model, x, [t["boxes"].numpy()])[0]
    _check_instances(out, img.shape)


# ----------------------------------------------------------------------------- crop decoder


def _check_instances(inst: Instances, shape) -> None:
    assert isinstance(inst, Instances) and inst.image_shape == tuple(shape)
    h, w = shape
    for (x0, y0, x1, y1), m in zip(inst.boxes, inst.masks):
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert m.shape == (y1 - y0, x1 - x0) and m.dtype == bool and m.any()
    for key in ("pred_iou", "stability", "mask_prob", "box_score"):
        v = np.asarray(inst.extra[key])
        assert v.shape == (len(inst),) and np.all((v >= 0) & (v <= 1)), key


def test_training_raises_mask_iou_on_gt_boxes():
    """A few dozen steps of stage 2 on synthetic cells raise the IoU of masks predicted from GT
    boxes on held-out images (measured before and after)."""
    torch.manual_seed(0)
    model = FAMILY.build(mean=128.0, std=10.0, **TINY_CROP)
    train = [synthetic_image(s) for s in range(6)]
    val = [synthetic_image(100 + s) for s in range(2)]
    before = gt_mask_iou(model, val)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(80):
        pair = [train[(2 * step + k) % len(train)] for k in range(2)]
        samples = [(FAMILY.preprocess(model, im[None])[0], pipeline_target(FAMILY, m, np.zeros(len(m))))
                   for im, m in pair]
        losses = FAMILY.loss(model, *FAMILY.collate(samples))
        assert torch.isfinite(losses["loss"])
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    after = gt_mask_iou(model, val)
    print(f"GT-box mask IoU before {before:.3f} after {after:.3f}")
    assert after > before + 0.2, (before, after)
    assert after > 0.55, (before, after)


def test_predict_with_gt_boxes_gives_valid_instances():
    torch.manual_seed(0)
    from cellseg.infer.postprocess import filter_extra, rescore

    model = FAMILY.build(**TINY_CROP).eval()
    img, masks = ellipse_image(7, (80, 96))
    x = FAMILY.preprocess(model, np.stack([img, img]))
    t = pipeline_target(FAMILY, masks, np.zeros(len(masks)))
    scores = np.linspace(0.5, 1.0, len(masks)).astype(np.float32)
    out = FAMILY.predict_with_boxes(model, x, [t["boxes"].numpy(), np.zeros((0, 4))],
                                    scores=[scores, np.zeros(0)])
    assert len(out) == 2 and len(out[1]) == 0
    _check_instances(out[0], img.shape)
    inst = out[0]
    # raw candidates: score = box score; rescoring (box score x mean mask probability) is the
    # inference config's job
    np.testing.assert_allclose(inst.scores, inst.extra["box_score"], rtol=1e-6)
    np.testing.assert_allclose(rescore(inst).scores,
                               inst.extra["box_score"] * inst.extra["mask_prob"], rtol=1e-6)
    # deterministic, and the decode chunking does not change the result
    model.decode_chunk = 2
    again = FAMILY.predict_with_boxes(model, x[:1], [t["boxes"].numpy()], scores=[scores])[0]
    np.testing.assert_array_equal(again.boxes, inst.boxes)
    np.testing.assert_allclose(again.extra["pred_iou"], inst.extra["pred_iou"], atol=1e-5)
    # the inference filters use the stored extras
    min_stability = float(np.median(inst.extra["stability"])) + 1e-6
    filtered = filter_extra(inst, min_stability=min_stability)
    assert 0 < len(filtered) < len(inst)
    assert np.all(filtered.extra["stability"] >= min_stability)


def test_loss_keys_stable_for_a_batch_without_cells():
    """A crop with no cell gives a zero loss with the SAME keys (the step log keeps its columns)."""
    model = FAMILY.build(**TINY_CROP)
    img, masks = ellipse_image(4, (64, 64), n=3)
    full = FAMILY.collate([(FAMILY.preprocess(model, img[None])[0],
                            pipeline_target(FAMILY, masks, np.zeros(len(masks))))])
    empty = FAMILY.collate([(FAMILY.preprocess(model, img[None])[0],
                             pipeline_target(FAMILY, np.zeros((0, 64, 64), bool), np.zeros(0)))])
    a, b = FAMILY.loss(model, *full), FAMILY.loss(model, *empty)
    assert set(a) == set(b) and "loss_neighbour" in a
    assert float(b["loss"].detach()) == 0.0 and float(a["loss"].detach()) > 0
    b["loss"].backward()  # touches every parameter (DDP-safe), grads are zero
    assert all(p.grad is not None and not p.grad.any() for p in model.decoder.parameters())


def test_predict_instances_without_detector_explains():
    model = FAMILY.build(**TINY_CROP).eval()
    x = FAMILY.preprocess(model, np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="no detector"):
        FAMILY.predict_instances(model, x)


def test_rebuild_from_model_args_loads_state_dict():
    """What a checkpoint stores (model_args + state_dict) rebuilds the same model."""
    torch.manual_seed(0)
    model = FAMILY.build(neighbours=False, **TINY_CROP)
    again = FAMILY.build(**model.spec.args)
    # strict load: every key and shape of the original must exist in the rebuilt model
    again.load_state_dict(model.state_dict())
    assert again.spec.args == model.spec.args
    assert again.decoder.head.out_channels == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, msg=k)


# ----------------------------------------------------------------------------- with a detector


def _tiny_detector_args() -> dict:
    """A small random-init Mask R-CNN (H4's family), fast on CPU."""
    return dict(backbone="resnet18", fpn_channels=32, box_head_dim=128, mask_head_channels=32,
                rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, detections_per_img=100,
                box_score_thresh=0.0)


def test_predict_instances_with_tiny_detector():
    torch.manual_seed(0)
    model = FAMILY.build(detector=_tiny_detector_args(), **TINY_CROP).eval()
    img, _ = ellipse_image(1, (96, 96))
    x = FAMILY.preprocess(model, img[None])
    dets = FAMILY.detect(model, x)
    out = FAMILY.predict_instances(model, x)
    assert len(out) == 1
    _check_instances(out[0], img.shape)
    assert len(out[0]) <= len(dets[0])
    # the detector is frozen and stays in eval mode while the decoder trains
    model.train()
    assert not model.detector.training
    assert not any(p.requires_grad for p in model.detector.parameters())
    again = FAMILY.build(**model.spec.args)
    again.load_state_dict(model.state_dict())


def test_detector_from_checkpoint_is_embedded(tmp_path):
    """detector_checkpoint loads a trained maskrcnn checkpoint; the promptseg model's own args
    then rebuild it WITHOUT that file (its weights travel in the promptseg state_dict)."""
    from cellseg.checkpoint import save_checkpoint
    from cellseg.models import get_family

    torch.manual_seed(1)
    det = get_family("maskrcnn").build(**_tiny_detector_args())
    path = tmp_path / "det.pt"
    save_checkpoint(path, model=det.state_dict(), spec=det.spec)
    model = FAMILY.build(detector_checkpoint=str(path), **TINY_CROP)
    for k, v in det.state_dict().items():
        torch.testing.assert_close(model.detector.state_dict()[k], v, msg=k)
    args = model.spec.args
    assert args["detector_checkpoint"] is None and args["detector"]["backbone"] == "resnet18"
    path.unlink()
    again = FAMILY.build(**args)
    again.load_state_dict(model.state_dict())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FAMILY.build(detector_checkpoint=str(path), **TINY_CROP)
    unet = get_family("unet").build(encoder_name="resnet18", encoder_depth=3,
                                    decoder_channels=(16, 8, 4), in_channels=1)
    save_checkpoint(path, model=unet.state_dict(), spec=unet.spec)
    with pytest.raises(ValueError, match="holds family 'unet', not 'maskrcnn', .*det.pt"):
        FAMILY.build(detector_checkpoint=str(path), **TINY_CROP)


@pytest.mark.parametrize("boxes_from", ["gt_oracle", "gt_oracle_sam", "tiny_maskrcnn"])
def test_predict_to_submission_with_promptseg(tmp_path, monkeypatch, boxes_from):
    """The inference pipeline (tiling, postprocess, RLE writer) accepts this family. The box
    source is the real tiny Mask R-CNN (random init: maybe no boxes) or, to exercise the mask
    path deterministically, an oracle ``detect`` returning the ground-truth boxes."""
    from cellseg.infer import predict

    from cellseg.config import from_dict
    from cellseg.data.record import ImageRecord
    from cellseg.infer.config import InferenceConfig
    from cellseg.io import write_png
    from cellseg.core.submission import validate_submission

    torch.manual_seed(0)
    img, masks = ellipse_image(2, (96, 96))
    if boxes_from.startswith("gt_oracle"):
        model = (FAMILY.build(decoder="sam", crop_size=16, sam=TINY_SAM) if boxes_from.endswith("sam")
                 else FAMILY.build(**TINY_CROP)).eval()
        gt = pipeline_target(FAMILY, masks, np.zeros(len(masks)))["boxes"].numpy()
        monkeypatch.setattr(FAMILY, "detect", lambda m, x: [
            Instances(tuple(x.shape[-2:]), gt.astype(np.int32), [np.ones((int(b[3] - b[1]),
                      int(b[2] - b[0])), bool) for b in gt], np.full(len(gt), 0.9), np.zeros(len(gt)))
            for _ in range(len(x))])
    else:
        model = FAMILY.build(detector=_tiny_detector_args(), **TINY_CROP).eval()
    path = tmp_path / "abc123.png"
    write_png(path, img)
    records = [ImageRecord(image_id="abc123", image_path=path, height=96, width=96,
                           source="synthetic")]
    cfg = from_dict(InferenceConfig, {"tile_size": None, "amp": False, "rescore": True,
                                      "default": {"score_thresh": 0.0}})
    out = tmp_path / "submission.csv"
    failed = predict.predict_to_submission([(model, FAMILY, 1.0)], records, cfg, out,
                                           predict.PredictOptions(progress=False))
    assert failed == 0
    assert not validate_submission(out, ids=["abc123"], shape=(96, 96))
    rows = out.read_text().strip().splitlines()
    assert rows[0].startswith("id,") and len(rows) >= 2


def test_tiny_config_trains_with_cellseg_train(tmp_path):
    """`cellseg train --config promptseg_tiny` runs stage 2 end to end (H5's loop, H6's validation
    through the attached detector) and the checkpoint alone rebuilds the model."""
    from cellseg.checkpoint import load_checkpoint
    from cellseg.models import load_model
    from cellseg.config import load_train_config
    from cellseg.data.synthetic import generate
    from cellseg.training.loop import get_args_parser, main

    cfg = load_train_config("promptseg_tiny")
    assert cfg.model.family == "promptseg"
    generate(tmp_path / "synth", n_images=4, seed=3, n_test=0, n_semi=0, n_livecell=0)
    out = tmp_path / "run"
    argv = ["--config", "promptseg_tiny", "--data", str(tmp_path / "synth" / "competition"),
            "--out", str(out), "--no-progress", "--set", "train.epochs=1",
            "--set", "train.max_steps=3", "--set", "data.crop_size=64",
            "--set", "data.max_val_images=1"]
    assert main(get_args_parser().parse_args(argv)) == 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["family"] == "promptseg" and 1 <= ck["step"] <= 3
    assert ck["model_args"]["detector"]["backbone"] == "resnet18"
    model, family, _ = load_model(out / "best.pt")
    assert family.name == "promptseg" and model.detector is not None


def test_pixel_iou_matches_paste_back():
    """The IoU target of the IoU head equals the IoU of the mask that inference pastes back."""
    from cellseg.models.paste import paste_masks
    from cellseg.models.promptseg import pixel_iou

    rng = np.random.default_rng(0)
    img, masks = ellipse_image(5, (70, 90), n=6)
    probs = torch.from_numpy(rng.random((len(masks), 16, 16)).astype(np.float32))
    t = pipeline_target(FAMILY, masks, np.zeros(len(masks)))
    regions = expand_boxes(t["boxes"], 0.25, 8.0) + torch.from_numpy(
        rng.normal(0, 2, (len(masks), 4)).astype(np.float32))
    got = pixel_iou(probs, regions, torch.from_numpy(masks), 0.5)
    boxes, crops, _ = paste_masks(probs.numpy(), regions.numpy(), masks.shape[1:], 0.5)
    inst = Instances(masks.shape[1:], boxes, crops, np.ones(len(masks)), np.zeros(len(masks)))
    want = [((inst.dense(i) & g).sum() / (inst.dense(i) | g).sum()) for i, g in enumerate(masks)]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert 0 < float(got.mean()) < 1


def test_sam_every_trainable_parameter_gets_a_gradient():
    """Box-only prompts: unused point/mask-prompt parameters are frozen, so DDP sees no unused
    trainable parameter (it would hang or raise otherwise)."""
    torch.manual_seed(0)
    model = FAMILY.build(decoder="sam", crop_size=16, sam=TINY_SAM)
    img, masks = ellipse_image(6, (64, 64), n=4)
    batch = FAMILY.collate([(FAMILY.preprocess(model, img[None])[0],
                             pipeline_target(FAMILY, masks, np.zeros(len(masks))))])
    FAMILY.loss(model, *batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
