"""Families that describe themselves: each provides the contract of cellseg.models.base, declares
its build arguments once (cellseg.models.args), and every shipped config builds, saves, reloads
from the checkpoint alone and predicts the same.

The shipped configs name pretrained starts (smp's ImageNet ResNet-34, torchvision's COCO Mask
R-CNN, SAM ViT-B). The session fixture ``official_cache`` (conftest.py) serves stand-in files of the
official names and shapes, offline, with every socket connection refused.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

import torch

from cellseg.checkpoint import save_checkpoint  # noqa: E402
from cellseg.config import config_names, load_train_config  # noqa: E402
from cellseg.errors import ConfigError  # noqa: E402
from cellseg.models import FAMILIES, get_family  # noqa: E402
from cellseg.models.args import FAMILY_ARGS, MaskRCNNArgs, UNetArgs  # noqa: E402
from cellseg.models import load_model  # noqa: E402

SMALL_UNET = dict(encoder_name="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4),
                  in_channels=1, norm="dataset")
# SAM ViT-B's image encoder runs at 1024 x 1024 (minutes per image on 2 CPU threads): the
# prediction check of a SAM config swaps in these sizes; its full-size build is checked tensor
# by tensor.
MAX_DETECTIONS = 100  # per image, in the prediction check (the configs allow up to 2000)
TINY_SAM = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1],
                window_size=4, prompt_dim=32, mlp_dim=64, decoder_heads=2, iou_head_hidden_dim=32)


def _model_sections() -> list[str]:
    """Shipped training configs grouped by identical ``model:`` sections ("a+b" when equal)."""
    groups: dict[str, list[str]] = {}
    for name in config_names():
        if name.startswith("infer"):
            continue  # inference configs share the folder
        cfg = load_train_config(name)
        groups.setdefault(f"{cfg.model.family}:{cfg.model.args!r}", []).append(name)
    return ["+".join(names) for names in groups.values()]


SECTIONS = _model_sections()


@pytest.fixture
def offline_cache(official_cache, monkeypatch):
    """The stand-in caches, offline; a connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(official_cache / "torch"))
    monkeypatch.setenv("HF_HOME", str(official_cache / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return official_cache


def test_every_family_provides_its_protocol_and_nothing_else():
    from cellseg.models.base import DenseFamily, InstanceFamily, ModelFamily

    def members(proto) -> set[str]:
        return ({k for k in vars(proto) if not k.startswith("_")}
                | set(getattr(proto, "__annotations__", {})))

    assert set(FAMILIES) == set(FAMILY_ARGS)
    assert members(ModelFamily) == {"name", "kind", "args_type", "build", "target_spec",
                                    "preprocess", "collate", "loss"}
    for name in FAMILIES:
        fam = get_family(name)
        assert fam.name == name and fam.args_type is FAMILY_ARGS[name]
        proto = DenseFamily if fam.kind == "dense" else InstanceFamily
        for member in members(ModelFamily) | members(proto):
            assert hasattr(fam, member), (name, member)
        assert not hasattr(fam, "make_target")  # targets are the data pipeline's (target_spec)
    # one meaning of "decode": dense maps -> instances; promptseg's decoder call has its own name
    assert not hasattr(get_family("promptseg"), "decode")
    assert hasattr(get_family("promptseg"), "decode_boxes")


def test_build_takes_the_args_dataclass_or_its_keywords():
    fam = get_family("unet")
    args = UNetArgs(**SMALL_UNET)
    torch.manual_seed(0)
    a = fam.build(args)
    torch.manual_seed(0)
    b = fam.build(**args)  # the args read as a mapping
    assert a.spec == b.spec
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    # the spec stores the same declaration, as plain types, with the norm resolved
    assert a.spec.args == {**args.to_dict(), "norm": a.spec.norm}
    assert UNetArgs.parse(a.spec.args) == UNetArgs(**{**SMALL_UNET, "norm": a.spec.norm})
    assert fam.target_spec(args) == fam.target_spec(**args)
    with pytest.raises(ConfigError, match="unknown key encoder_nam.*did you mean encoder_name\\?"
                                          " valid keys: encoder_name, encoder_weights"):
        fam.build(encoder_nam="resnet18")
    with pytest.raises(ConfigError, match=r"in_channels=\[3\] must be an integer"):
        UNetArgs.parse({"in_channels": [3]})  # a list where an int belongs
    # cross-field rules hold for args made in code too
    with pytest.raises(ConfigError, match="weights .* OR backbone_weights"):
        MaskRCNNArgs(weights="coco", backbone_weights="imagenet")
    assert MaskRCNNArgs(weights="coco").resolved().trainable_backbone_layers == 3
    assert MaskRCNNArgs().resolved().frozen_bn is False


def _sample_image() -> np.ndarray:
    from cellseg.data.synthetic import render

    image, _ = render("shsy5y", seed=3, shape=(96, 128))
    return image[None]


def _predict(family, model, images: np.ndarray) -> tuple[list, int]:
    """The family's raw network output for (B, H, W) uint8 images, as comparable arrays, and
    how many instances / nonzero map pixels it holds."""
    x = family.preprocess(model, images)
    if family.kind == "dense":
        maps = family.predict_dense(model, x)
        return [maps], int((maps > 0.5).sum())
    out, n = [], 0
    if getattr(model, "detector", True) is None:  # a promptseg decoder prompted from outside
        h, w = images.shape[-2:]
        boxes = [np.array([[4, 4, w // 3, h // 3], [w // 2, h // 2, w - 4, h - 4]], np.float32)]
        found = family.predict_with_boxes(model, x, boxes * len(x))
    else:
        found = family.predict_instances(model, x)
    for inst in found:
        out += [inst.boxes, inst.scores, inst.labels, *inst.masks,
                *[inst.extra[k] for k in sorted(inst.extra)]]
        n += len(inst)
    return out, n


def _round_trip(args, family_name: str, tmp_path, name: str, predict: bool) -> None:
    """Build from ``args``, save a checkpoint, reload it alone: same spec, tensors, prediction."""
    family = get_family(family_name)
    torch.manual_seed(0)
    model = family.build(args).eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model=model.state_dict(), spec=model.spec)
    again, fam, _ = load_model(path)
    assert fam is family and again.spec == model.spec
    state = again.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(o.get("sha256") for o in model.spec.args["pretrained_origin"])
    for weight_arg in family.args_type.WEIGHTS:  # the checkpoint alone rebuilds it
        assert model.spec.args[weight_arg] is None
    if predict:
        images = _sample_image()
        for net in (model, again):  # the mask head on 2000 boxes takes minutes on 2 CPU threads
            for module in net.modules():
                if hasattr(module, "detections_per_img"):  # torchvision's RoIHeads, at run time
                    module.detections_per_img = min(module.detections_per_img, MAX_DETECTIONS)
        with torch.no_grad():
            (got, n), (expected, _) = _predict(fam, again, images), _predict(family, model, images)
        assert n > 0  # something to compare: instances, or map pixels above 0.5
        for a, b in zip(expected, got, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("section", SECTIONS)
def test_every_shipped_config_builds_saves_reloads_and_predicts_the_same(section, offline_cache,
                                                                        tmp_path):
    name = section.split("+")[0]
    cfg = load_train_config(name)
    args = cfg.model.args
    if getattr(args, "detector_checkpoint", None):  # the recipe's stage 1: a trained detector
        det_cfg = load_train_config("maskrcnn_livecell_pretrain")
        det = get_family("maskrcnn").build(det_cfg.model.args)
        det_path = tmp_path / "detector.pt"
        save_checkpoint(det_path, model=det.state_dict(), spec=det.spec)
        args = args.parse(args, detector_checkpoint=str(det_path))
    sam = getattr(args, "decoder", None) == "sam"
    _round_trip(args, cfg.model.family, tmp_path, name, predict=not sam)
    if sam:  # the same config with a small SAM image encoder, to predict on CPU
        small = args.parse(args, sam={**(args.sam or {}), **TINY_SAM}, sam_checkpoint=None)
        _round_trip(small, cfg.model.family, tmp_path, name + "_small_sam", predict=True)
