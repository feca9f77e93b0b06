"""UNet family: build, normalisation, loss/backward, training signal, dense prediction, weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import torch

from cellseg.core.instances import Instances  # noqa: E402
from cellseg.models import FAMILIES, get_family  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402

TINY = dict(encoder_name="tu-mobilenetv3_small_050", decoder_channels=(32, 16, 16, 8, 8))
RESNET = dict(encoder_name="resnet18", decoder_channels=(32, 16, 16, 8, 8))


@pytest.fixture(scope="module")
def family():
    return get_family("unet")


@pytest.fixture(scope="module")
def sample():
    """A 96x96 synthetic SH-SY5Y image with its 8 touching/near cells."""
    from cellseg.data.synthetic import render

    image, masks = render("shsy5y", 1, shape=(96, 96))
    return image, np.stack(masks)


def test_import_models_does_not_import_torch():
    code = "import cellseg.models, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_family_lists_valid_names():
    with pytest.raises(KeyError, match="maskrcnn.*promptseg.*unet"):
        get_family("yolo")
    assert set(FAMILIES) == {"unet", "maskrcnn", "promptseg"}


def test_build_stores_norm_and_rebuild_args(family, monkeypatch, tmp_path):
    model = family.build(**TINY, norm="dataset")
    assert model.spec.norm == {"mean": [128.0] * 3, "std": [11.58] * 3, "in_channels": 3}
    assert model.spec.outputs == ("cell", "border", "centre")
    again = family.build(**model.spec.args)
    assert again.spec.norm == model.spec.norm
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    gray = family.build(**TINY, in_channels=1)
    assert gray.spec.norm["in_channels"] == 1 and len(gray.spec.norm["mean"]) == 1
    # "imagenet" is a pretrained NAME (tests/test_pretrained.py); offline with an empty cache it
    # stops with one line naming the file and its URL
    from cellseg.models.pretrained import MissingPretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingPretrained, match="model.safetensors.*huggingface.co/timm/"):
        family.build(**TINY, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="decoder_channels"):
        family.build(encoder_name="tu-mobilenetv3_small_050", decoder_channels=(16, 8))


def test_preprocess_normalises_with_model_norm(family):
    model = family.build(**TINY, norm={"mean": 100.0, "std": 10.0})
    images = np.full((2, 40, 50), 120, np.uint8)
    x = family.preprocess(model, images)
    assert x.shape == (2, 3, 40, 50) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_loss_backward_and_shapes(family, sample):
    torch.manual_seed(0)
    image, masks = sample
    model = family.build(**TINY)
    x = family.preprocess(model, image[None])[0]
    target = pipeline_target(family, masks, np.zeros(len(masks), np.int64))
    assert target["maps"].shape == (3, 96, 96) and target["maps"].dtype == torch.float32
    images, targets = family.collate([(x, target), (x.flip(-1), target)])
    assert images.shape == (2, 3, 96, 96) and targets["maps"].shape == (2, 3, 96, 96)
    model.train()
    losses = family.loss(model, images, targets)
    assert {"loss", "bce", "dice", "dice_cell", "dice_border", "dice_centre"} <= set(losses)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_collate_rejects_mixed_sizes(family):
    t = {"maps": torch.zeros(3, 8, 8)}
    with pytest.raises(ValueError, match="crop_size"):
        family.collate([(torch.zeros(3, 8, 8), t), (torch.zeros(3, 8, 16), t)])


def test_loss_drops_when_overfitting_one_image(family, sample):
    torch.manual_seed(0)
    image, masks = sample
    model = family.build(**TINY)
    model.train()
    x = family.preprocess(model, image[None])
    target = pipeline_target(family, masks, np.zeros(len(masks), np.int64))
    images, targets = family.collate([(x[0], target)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = family.loss(model, images, targets)["loss"]
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:3]), history


def test_predict_dense_pads_any_size_and_keeps_mode(family):
    torch.manual_seed(0)
    model = family.build(**TINY)
    model.train()
    x = family.preprocess(model, np.random.default_rng(0).integers(0, 255, (2, 50, 70), np.uint8))
    maps = family.predict_dense(model, x)
    assert maps.shape == (2, 3, 50, 70) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert model.training  # restored
    inst = family.decode(maps[0].numpy())
    assert isinstance(inst, Instances) and inst.image_shape == (50, 70)
    # the maps depend on the image content, not only on the padding
    assert not torch.allclose(maps[0], maps[1])


def test_encoder_weights_from_local_files(family, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = family.build(**RESNET)
    pth = tmp_path / "enc.pth"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}}, pth)
    st = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(st))
    for path in (pth, st):
        torch.manual_seed(2)
        model = family.build(**RESNET, encoder_weights=str(path))
        for k, v in source.encoder.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), k
        assert model.spec.args["encoder_weights"] is None  # checkpoints rebuild without the file
    gray = family.build(**RESNET, in_channels=1, encoder_weights=str(pth))
    assert torch.allclose(gray.encoder.conv1.weight, source.encoder.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        family.build(**RESNET, encoder_weights=str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="wrong architecture"):
        family.build(**RESNET, encoder_weights=str(other))


def test_plain_timm_state_dict_loads_into_tu_encoder(family, tmp_path):
    import timm

    torch.manual_seed(3)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    model = family.build(**TINY, encoder_weights=str(path))
    own = model.encoder.state_dict()
    loaded = [k for k, v in net.state_dict().items()
              if f"model.{k}" in own and torch.equal(own[f"model.{k}"], v)]
    assert len(loaded) > 0.5 * len(own)
