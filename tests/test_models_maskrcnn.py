"""Mask R-CNN family: build, targets, loss/backward, training signal, sparse instance prediction."""

from __future__ import annotations

import numpy as np
import pytest

import torch

from cellseg.core.instances import Instances  # noqa: E402
from cellseg.models import get_family  # noqa: E402
from pipeline_target import pipeline_target  # noqa: E402

TINY = dict(backbone="resnet18", fpn_channels=32, box_head_dim=128, mask_head_channels=32,
            rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=300, detections_per_img=100,
            rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200, box_batch_size_per_image=64)


@pytest.fixture(scope="module")
def family():
    return get_family("maskrcnn")


@pytest.fixture(scope="module")
def sample():
    from cellseg.data.synthetic import render

    image, masks = render("shsy5y", 1, shape=(96, 96))
    return image, np.stack(masks)


def check_instances(inst: Instances, shape: tuple[int, int]) -> None:
    assert isinstance(inst, Instances) and inst.image_shape == shape
    b = inst.boxes
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= shape[1]) & (b[:, 3] <= shape[0])).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    for (x0, y0, x1, y1), m in zip(b, inst.masks):
        assert m.dtype == bool and m.shape == (y1 - y0, x1 - x0) and m.any()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert (inst.labels >= 0).all()
    mp = inst.extra["mask_prob"]
    assert len(mp) == len(inst) and ((mp > 0.5) & (mp <= 1)).all()


def test_build_args_and_norm(family):
    model = family.build(**TINY, class_per_cell_type=True, norm="dataset")
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 cell types + background
    assert model.spec.class_map == {"shsy5y": 0, "astro": 1, "cort": 2}
    assert family.build(**TINY).spec.class_map is None
    assert model.roi_heads.detections_per_img == 100
    assert model.spec.norm["mean"] == [128.0] * 3
    # torchvision must not normalise a second time
    assert model.transform.image_mean == [0.0] * 3 and model.transform.image_std == [1.0] * 3
    again = family.build(**model.spec.args)
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    scaled = family.build(**TINY, input_scale=2.0)
    assert scaled.rpn.anchor_generator.sizes[0] == (8.0, 12.0)  # anchors given in image pixels
    with pytest.raises(KeyError, match="resnet50"):
        family.build(backbone="vgg16")
    with pytest.raises(ValueError, match="v2"):
        family.build(**TINY, heads="v3")
    with pytest.raises(ValueError, match="5 levels"):
        family.build(**{**TINY, "anchor_sizes": ((4,), (8,))})


def test_pipeline_target_boxes_labels_and_empty_masks(family):
    """The target the data pipeline builds from ``target_spec``: label layers, labels + 1."""
    from cellseg.data.targets import masks_from_layers

    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 10, 20] = True  # a single pixel is a valid 1x1 box
    t = pipeline_target(family, masks, np.array([0, 1, 2]))
    assert t["boxes"].tolist() == [[3, 2, 9, 5], [20, 10, 21, 11]]
    assert t["labels"].tolist() == [1, 3]  # class k -> torchvision label k + 1; empty mask dropped
    assert (masks_from_layers(t["layers"].numpy(), 2) == masks[[0, 2]]).all()
    none = pipeline_target(family, np.zeros((0, 20, 30), bool), np.zeros(0, np.int64))
    assert none["boxes"].shape == (0, 4) and none["labels"].shape == (0,)


@pytest.mark.parametrize("scale,heads", [(1.0, "v1"), (2.0, "v1"), (1.0, "v2")])
def test_loss_backward_and_predict(family, sample, scale, heads):
    torch.manual_seed(0)
    image, masks = sample
    model = family.build(**TINY, input_scale=scale, heads=heads)
    x = family.preprocess(model, image[None])
    target = pipeline_target(family, masks, np.zeros(len(masks), np.int64))
    empty = pipeline_target(family, np.zeros((0, 96, 96), bool), np.zeros(0, np.int64))
    images, targets = family.collate([(x[0], target), (x[0].flip(-1), empty)])
    model.train()
    losses = family.loss(model, images, targets)
    assert {"loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
            "loss_rpn_box_reg"} <= set(losses)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    preds = family.predict_instances(model, x)
    assert model.training  # restored
    assert len(preds) == 1
    check_instances(preds[0], (96, 96))
    model.eval()
    with pytest.raises(RuntimeError, match="train mode"):
        family.loss(model, images, targets)


def test_loss_drops_when_overfitting_one_image(family, sample):
    torch.manual_seed(0)
    image, masks = sample
    model = family.build(**TINY)
    model.train()
    x = family.preprocess(model, image[None])
    target = pipeline_target(family, masks, np.zeros(len(masks), np.int64))
    images, targets = family.collate([(x[0], target)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history = []
    for _ in range(12):
        opt.zero_grad()
        loss = family.loss(model, images, targets)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-3:]) < 0.6 * np.mean(history[:3]), history


def test_predicted_masks_follow_their_boxes(family, sample):
    """The pasted crop masks must land where the mask head says: force a full-box mask logit and
    check every mask fills (nearly) its whole box, inside the image."""
    torch.manual_seed(0)
    image, _ = sample
    model = family.build(**TINY, input_scale=2.0)
    with torch.no_grad():
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.zero_()
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(5.0)
    preds = family.predict_instances(model, family.preprocess(model, image[None]))[0]
    check_instances(preds, (96, 96))
    assert len(preds) > 0
    fill = np.array([m.mean() for m in preds.masks])
    assert (fill == 1.0).all()
    assert np.allclose(preds.extra["mask_prob"], 1 / (1 + np.exp(-5.0)), atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_pasting_inverts_torchvision_mask_projection(family, sample, scale):
    """A perfect mask head outputs what torchvision trains it on (roi_heads.project_masks_on_boxes
    of the resized targets); pasting that back must reproduce the true masks."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes

    from cellseg.models.maskrcnn import paste_head_masks

    image, masks = sample
    model = family.build(**TINY, input_scale=scale)
    model.train()
    x = family.preprocess(model, image[None])
    from cellseg.data.targets import masks_from_layers

    target = pipeline_target(family, masks, np.zeros(len(masks), np.int64))
    target["masks"] = masks_from_layers(target.pop("layers"), len(target["boxes"]))  # as in loss
    _, (resized,) = model.transform([x[0]], [dict(target)])
    n = len(masks)
    head = project_masks_on_boxes(resized["masks"], resized["boxes"], torch.arange(n), 28)
    boxes, crops, mean_prob = paste_head_masks(head.numpy(), target["boxes"].numpy(), (96, 96),
                                               scale)
    for i in range(n):
        pasted = np.zeros((96, 96), bool)
        x0, y0, x1, y1 = boxes[i]
        pasted[y0:y1, x0:x1] = crops[i]
        iou = (pasted & masks[i]).sum() / (pasted | masks[i]).sum()
        assert iou > 0.95, (i, iou)
    assert (mean_prob > 0.5).all()


def test_backbone_weights_from_a_local_file(family, tmp_path):
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(4)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)  # an ImageNet-style file, classifier included
    model = family.build(**TINY, backbone_weights=str(path))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # pretrained statistics stay fixed
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad  # 3 trainable layers by default
    args = model.spec.args
    assert args["backbone_weights"] is None and args["frozen_bn"] is True
    rebuilt = family.build(**args)  # what a checkpoint does: same tensors, no file needed
    assert set(rebuilt.state_dict()) == set(model.state_dict())
    with pytest.raises(FileNotFoundError):
        family.build(**TINY, backbone_weights=str(tmp_path / "nope.pth"))


def test_loss_on_a_crop_without_cells_in_layers_form():
    """A training crop with no cell comes as zero label layers (the data pipeline's compact
    target): the loss must treat it as a negative image, not crash (make demo hit this)."""
    from cellseg.data.targets import masks_from_layers

    assert masks_from_layers(np.zeros((0, 5, 7), np.uint16), 0).shape == (0, 5, 7)
    assert masks_from_layers(torch.zeros((0, 5, 7), dtype=torch.int32), 0).shape == (0, 5, 7)
    torch.manual_seed(0)
    family = get_family("maskrcnn")
    model = family.build(**TINY).train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
             "layers": torch.zeros((0, 64, 64), dtype=torch.int32)}
    one = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
           "labels": torch.ones((1,), dtype=torch.int64),
           "layers": torch.zeros((1, 64, 64), dtype=torch.int32)}
    one["layers"][0, 10:30, 10:30] = 1
    losses = family.loss(model, torch.rand(2, 3, 64, 64), [empty, one])
    assert torch.isfinite(losses["loss"])
