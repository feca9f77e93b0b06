"""cellseg.checkpoint: self-describing, atomic, weights_only-loadable checkpoints; rebuilding\nthe network from one (cellseg.models.loading), also from the formats written before."""

from __future__ import annotations

import numpy as np
import pytest

import torch

from cellseg.checkpoint import (load_checkpoint, save_checkpoint, sha256_file,  # noqa: E402
                                verify_checkpoint)
from cellseg.models import load_model  # noqa: E402


def _small_state():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    return net, dict(model=net.state_dict(), family="unet", model_args={"x": 1},
                     config={"optim": {"lr": 1e-3}, "data": {"sources": ["a"]}},
                     epoch=3, step=17, optimizer=opt.state_dict(), metrics={"score": 0.25},
                     rng={"torch": torch.get_rng_state(), "python": list(range(3))})


def test_save_load_roundtrip_and_sidecar(tmp_path):
    net, state = _small_state()
    path = tmp_path / "ck" / "last.pt"
    digest = save_checkpoint(path, **state)
    assert digest == sha256_file(path)
    side = path.with_name("last.pt.sha256").read_text().split()
    assert side == [digest, "last.pt"]
    assert verify_checkpoint(path) is True
    ck = load_checkpoint(path, verify=True)
    assert ck["epoch"] == 3 and ck["step"] == 17 and ck["metrics"]["score"] == 0.25
    assert ck["version"]["cellseg"] and ck["version"]["torch"] == torch.__version__
    for k, v in net.state_dict().items():
        assert torch.equal(ck["model"][k], v)
    # the optimiser resumes from it
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    # a flipped byte is detected
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert verify_checkpoint(path) is False
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path, verify=True)


def test_non_plain_values_are_refused_with_their_key(tmp_path):
    _, state = _small_state()
    state["rng"]["numpy"] = np.random.get_state()  # tuple holding an ndarray: not weights_only-safe
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['numpy'\]\[1\].*numpy"):
        save_checkpoint(tmp_path / "x.pt", **state)
    assert not any(tmp_path.iterdir())


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    _, state = _small_state()
    path = tmp_path / "best.pt"
    save_checkpoint(path, **state)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    state["epoch"] = 99
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, **state)
    assert path.read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.pt.sha256"]
    assert verify_checkpoint(path) is True


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a cellseg checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


def test_load_model_rebuilds_unet_with_identical_outputs(tmp_path):
    from cellseg.config import load_train_config
    from cellseg.models import get_family

    cfg = load_train_config("unet_tiny")
    family = get_family("unet")
    torch.manual_seed(0)
    model = family.build(**cfg.model.args).eval()
    images = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        expected = model(family.preprocess(model, images))
    path = tmp_path / "unet.pt"
    save_checkpoint(path, model=model.state_dict(), spec=model.spec)
    model2, fam2, ck = load_model(path)
    assert fam2.name == "unet" and not model2.training
    assert model2.spec == model.spec and ck["spec"] == model.spec.to_dict()
    # family / model_args are copied from the spec for readers that predate it
    assert ck["family"] == "unet" and ck["model_args"] == model.spec.to_dict()["args"]
    with torch.no_grad():
        got = model2(fam2.preprocess(model2, images))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # EMA weights are preferred when present
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_checkpoint(path, model=model.state_dict(), ema=ema, family="unet",
                    model_args=cfg.model.args.to_dict())
    m_ema, _, _ = load_model(path)
    m_raw, _, _ = load_model(path, ema=False)
    k = next(k for k, v in ema.items() if v.is_floating_point())
    assert torch.equal(m_ema.state_dict()[k], ema[k])
    assert torch.equal(m_raw.state_dict()[k], model.state_dict()[k])


def test_model_spec_round_trip_and_copies():
    from cellseg.models.base import ModelSpec

    args = {"encoder_name": "resnet18", "decoder_channels": [16, 8, 4]}
    spec = ModelSpec("unet", args, {"mean": [128.0], "std": [11.58], "in_channels": 1},
                     class_map={"astro": 1}, outputs=["cell", "border"])
    args["decoder_channels"].append(2)  # the spec holds its own copy
    assert spec.args["decoder_channels"] == [16, 8, 4] and spec.outputs == ("cell", "border")
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="class_mapp"):
        ModelSpec.from_dict({**spec.to_dict(), "class_mapp": None})
    with pytest.raises(AttributeError):
        spec.family = "maskrcnn"  # frozen


def test_load_model_falls_back_to_family_and_model_args(tmp_path):
    """Checkpoints written before the spec existed have only family / model_args."""
    from cellseg.models import get_family

    family = get_family("unet")
    args = dict(encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4),
                norm="dataset", in_channels=1)
    torch.manual_seed(0)
    model = family.build(**args)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model=model.state_dict(), family="unet", model_args=args)
    assert "spec" not in load_checkpoint(path)
    again, _, _ = load_model(path)
    assert again.spec == model.spec and again.spec.norm["std"] == [11.58]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_save_checkpoint_refuses_a_family_that_contradicts_the_spec(tmp_path):
    from cellseg.models.base import ModelSpec

    with pytest.raises(ValueError, match="family='maskrcnn'.*'unet'"):
        save_checkpoint(tmp_path / "x.pt", model={}, family="maskrcnn", spec=ModelSpec("unet"))


# ``spec`` dicts exactly as checkpoints wrote them before the build arguments became dataclasses
# (cellseg.models.args; HEAD d61caa5): plain lists, resolved norm, no sam/detector_checkpoint keys.
_NORM1 = {"mean": [128.0], "std": [11.58], "in_channels": 1}
_ANCHORS = [[4.0, 6.0], [9.0, 13.0], [17.0, 24.0], [31.0, 45.0], [64.0, 127.0]]


def _old_maskrcnn_args(**changes):
    args = {"backbone": "resnet18", "heads": "v1", "weights": None, "backbone_weights": None,
            "trainable_backbone_layers": 5, "frozen_bn": False, "in_channels": 1, "num_classes": 1,
            "class_per_cell_type": False, "cell_types": ["shsy5y", "astro", "cort"],
            "fpn_channels": 16, "box_head_dim": 32, "mask_head_channels": 8,
            "anchor_sizes": _ANCHORS, "aspect_ratios": [0.25, 0.5, 1.0, 2.0, 4.0],
            "input_scale": 1.0, "min_size": 800, "max_size": 1333, "detections_per_img": 100,
            "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_batch_size_per_image": 512,
            "rpn_pre_nms_top_n_train": 4000, "rpn_post_nms_top_n_train": 2000,
            "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100,
            "rpn_batch_size_per_image": 256, "rpn_nms_thresh": 0.7, "norm": _NORM1,
            "pretrained_origin": []}
    return {**args, **changes}


OLD_SPECS = {
    "unet": {"family": "unet", "args": {
        "encoder_name": "resnet18", "encoder_weights": None, "in_channels": 1, "encoder_depth": 3,
        "decoder_channels": [16, 8, 4], "decoder_attention_type": None, "norm": _NORM1,
        "pretrained_origin": [{"name": "unet:resnet18:imagenet", "file": "model.safetensors",
                               "sha256": "0" * 64, "into": "encoder", "tensors": 100}]},
        "norm": _NORM1, "class_map": None, "outputs": ["cell", "border", "centre"]},
    "maskrcnn": {"family": "maskrcnn", "args": _old_maskrcnn_args(
        num_classes=3, class_per_cell_type=True), "norm": _NORM1,
        "class_map": {"shsy5y": 0, "astro": 1, "cort": 2}, "outputs": []},
    "promptseg": {"family": "promptseg", "args": {
        "decoder": "crop", "in_channels": 1, "mean": 128.0, "std": 13.0, "crop_size": 16,
        "margin": 0.25, "min_region": 8.0, "neighbours": True, "base_channels": 4, "levels": 2,
        "sam": None, "detector": _old_maskrcnn_args(), "detector_family": "maskrcnn",
        "jitter": 0.1, "max_train_instances": 64, "mask_threshold": 0.5, "stability_offset": 1.0,
        "iou_weight": 1.0, "neighbour_weight": 0.5, "decode_chunk": 256, "pretrained_origin": []},
        "norm": {"mean": [128.0], "std": [13.0], "in_channels": 1}, "class_map": None,
        "outputs": []},
}


@pytest.mark.parametrize("name", sorted(OLD_SPECS))
def test_checkpoints_in_the_earlier_spec_format_still_load(tmp_path, name):
    """A checkpoint dict written by hand in the earlier format (spec + family + model_args)
    rebuilds the same network with the same spec, and predicts with its weights."""
    from cellseg.models import get_family

    old = OLD_SPECS[name]
    family = get_family(name)
    torch.manual_seed(0)
    weights = {k: v + 0.01 if v.is_floating_point() else v  # not a fresh init
               for k, v in family.build(**old["args"]).state_dict().items()}
    path = tmp_path / "old.pt"
    torch.save({"model": weights, "spec": old, "family": name, "model_args": old["args"],
                "config": {}, "format": 1, "version": {"cellseg": "0.4.0", "git": None}}, path)
    model, fam, ckpt = load_model(path)
    assert fam is family and ckpt["spec"] == old
    new = model.spec.to_dict()
    assert {k: new[k] for k in ("family", "norm", "class_map", "outputs")} == \
        {k: old[k] for k in ("family", "norm", "class_map", "outputs")}
    added = {k: v for k, v in new["args"].items() if k not in old["args"]}
    assert {k: new["args"][k] for k in old["args"]} == old["args"]  # same values, same types
    # arguments added since take the value that rebuilds what the old file trained
    assert added == {"promptseg": {"sam_checkpoint": None, "detector_checkpoint": None},
                     "unet": {"centre": "distance"}}.get(name, {})
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # and it still predicts
    x = fam.preprocess(model, np.full((1, 64, 64), 128, np.uint8))
    if fam.kind == "dense":
        assert fam.predict_dense(model, x).shape == (1, 3, 64, 64)
    else:
        assert len(fam.predict_instances(model, x)) == 1


def test_a_spec_of_another_version_is_one_clear_error(tmp_path):
    """A renamed argument or an unknown family: an InputError naming the file and the key."""
    from cellseg.errors import InputError

    path = tmp_path / "future.pt"
    spec = {**OLD_SPECS["unet"], "args": {**OLD_SPECS["unet"]["args"], "encoder": "resnet18"}}
    torch.save({"model": {}, "spec": spec, "family": "unet"}, path)
    with pytest.raises(InputError, match="cannot read the model spec \\(unknown key encoder, "
                                         ".*valid keys: encoder_name.*future.pt, re-train it"):
        load_model(path)
    torch.save({"model": {}, "spec": {**spec, "family": "yolo"}, "family": "yolo"}, path)
    with pytest.raises(InputError, match="unknown model family 'yolo'.*future.pt"):
        load_model(path)


def test_resume_accepts_a_model_config_saved_before_the_args_were_typed(tmp_path):
    """last.pt of a run started before model.args were typed holds only the non-default args;
    --resume compares typed configs, so the same model resumes and another one is refused."""
    from cellseg.config import load_train_config
    from cellseg.training.loop import _resume_checkpoint

    cfg = load_train_config("unet_tiny")
    shipped = {"family": "unet", "args": {"encoder_name": "tu-mobilenetv3_small_050",
                                          "decoder_channels": [64, 32, 16, 16, 8],
                                          "in_channels": 1, "norm": "dataset"}}
    save_checkpoint(tmp_path / "last.pt", model={}, family="unet", config={"model": shipped},
                    epoch=1, step=5)
    assert _resume_checkpoint(tmp_path, cfg, log=lambda m: None)["step"] == 5
    other = load_train_config("unet_tiny", ["model.args.in_channels=3"])
    with pytest.raises(ValueError, match="--resume: .* was trained with model"):
        _resume_checkpoint(tmp_path, other, log=lambda m: None)
