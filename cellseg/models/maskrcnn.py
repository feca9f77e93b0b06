"""Mask R-CNN family (``kind = "instances"``): torchvision Mask R-CNN with a ResNet-FPN backbone,
tuned for many small cells.

    from cellseg.models import get_family
    family = get_family("maskrcnn")
    model = family.build(backbone="resnet50", input_scale=2.0)   # random init
    model = family.build(backbone="resnet50", weights="coco")     # torchvision's COCO start
    x = family.preprocess(model, images)                          # (B, H, W) uint8 -> (B, 3, H, W)
    insts = family.predict_instances(model, x)                    # list[Instances]

Choices (see FACTS sections 4-5):
- ``heads="v1"`` (maskrcnn_resnet50_fpn layout) or ``"v2"`` (the _v2 layout with BatchNorm heads).
- A FIXED upscale ``input_scale`` replaces torchvision's min_size/max_size resizing, so a 256 px
  training crop and a 520x704 test image see cells at the same scale (top solutions used ~2x).
  ``input_scale=None`` restores torchvision's resizing with ``min_size`` / ``max_size``.
- ``anchor_sizes`` are given in ORIGINAL image pixels (multiplied by ``input_scale``), one tuple per
  FPN level (5 levels); the default covers LIVECell's 4, 9, 17, 31, 64, 127 px anchors with two
  sizes per level; ``aspect_ratios`` 0.25-4 as LIVECell.
- Up to ``detections_per_img=2000`` cells, raised RPN proposal counts, low ``box_score_thresh``.
- Normalisation happens ONCE, in ``preprocess`` / the data set with ``model.spec.norm``;
  torchvision's internal transform is told mean 0 / std 1 so it does not normalise again.
- ``predict_instances`` never builds full-image masks: each 28x28 mask probability map is pasted
  into its own box with ``cellseg.models.paste.paste_masks`` (threshold ``mask_threshold``);
  ``extra["mask_prob"]`` is the mean probability inside the mask.
- Pretrained starts: ``weights="coco"`` (torchvision's COCO Mask R-CNN R50-FPN, v1 or v2 as
  ``heads``; which layers load: ``load_detection_weights``) or ``backbone_weights="imagenet"``,
  resolved through torch.hub's cache by ``cellseg.models.pretrained``; local files work too.
- Class ``k`` of ``Instances.labels`` is torchvision class ``k + 1`` (0 is background there).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from cellseg.data.targets import TargetSpec, masks_from_layers
from cellseg.core.instances import Instances
from cellseg.models.args import MaskRCNNArgs
from cellseg.models.base import ModelSpec, attach_spec

_RESNET_WIDTH = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256, "resnet152": 256}


def _cell_transform_class():
    """GeneralizedRCNNTransform with a fixed scale, no normalisation and optional mask pasting
    (built lazily so that importing this module does not import torchvision)."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    class CellTransform(GeneralizedRCNNTransform):
        def __init__(self, input_scale: float | None, min_size: int, max_size: int,
                     in_channels: int, size_divisible: int = 32) -> None:
            super().__init__(min_size, max_size, [0.0] * in_channels, [1.0] * in_channels,
                             size_divisible=size_divisible)
            self.input_scale = input_scale
            self.paste_masks = True  # predict_instances turns this off to keep 28x28 crops

        def normalize(self, image: torch.Tensor) -> torch.Tensor:
            return image  # already normalised with model.spec.norm

        def resize(self, image, target=None):
            if self.input_scale is None:
                return super().resize(image, target)
            h, w = image.shape[-2:]
            nh, nw = max(1, round(h * self.input_scale)), max(1, round(w * self.input_scale))
            if (nh, nw) == (h, w):
                return image, target
            image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            if target is None:
                return image, target
            target["boxes"] = resize_boxes(target["boxes"], (h, w), (nh, nw))
            if "masks" in target and target["masks"].numel():
                target["masks"] = F.interpolate(target["masks"][:, None].to(torch.uint8),
                                                size=(nh, nw), mode="nearest-exact")[:, 0]
            elif "masks" in target:
                target["masks"] = target["masks"].new_zeros((0, nh, nw))
            return image, target

        def postprocess(self, result, image_shapes, original_image_sizes):
            if self.training:
                return result
            for i, (pred, im_s, o_im_s) in enumerate(zip(result, image_shapes, original_image_sizes)):
                pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
                if "masks" in pred and self.paste_masks:
                    pred["masks"] = paste_masks_in_image(pred["masks"], pred["boxes"], o_im_s)
                result[i] = pred
            return result

    return CellTransform


def _resnet_fpn(backbone: str, *, in_channels: int, fpn_channels: int, trainable_layers: int,
                frozen_bn: bool, weights: str | None, fpn_norm: bool = False
                ) -> "torch.nn.Module":  # noqa: F821
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if backbone not in _RESNET_WIDTH:
        raise KeyError(f"unknown Mask R-CNN backbone {backbone!r}; valid: {', '.join(_RESNET_WIDTH)}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_layers}")
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if frozen_bn else torch.nn.BatchNorm2d
    body = getattr(torchvision.models, backbone)(weights=None, norm_layer=norm_layer)
    if in_channels != 3:
        body.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    origin = None
    if weights is not None:
        from cellseg.models.pretrained import backbone_source, load_into, resolve

        state, origin = resolve(weights, lambda tag: backbone_source(backbone, tag))
        n = load_into(body, state, prefixes=("backbone.body.", "body.", "encoder."),
                      what=f"backbone weights {weights}")
        origin.update(into="backbone.body", tensors=n)
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        train.append("bn1")
    for name, p in body.named_parameters():
        if all(not name.startswith(layer) for layer in train):
            p.requires_grad_(False)
    width = _RESNET_WIDTH[backbone]
    fpn = BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                          [width, width * 2, width * 4, width * 8], fpn_channels,
                          extra_blocks=LastLevelMaxPool(),
                          norm_layer=torch.nn.BatchNorm2d if fpn_norm else None)
    return fpn, origin


def load_detection_weights(model: "torch.nn.Module", state: Mapping[str, Any], *,  # noqa: F821
                           same_anchors: bool, what: str = "weights") -> tuple[list[str], list[str]]:
    """Load a whole torchvision Mask R-CNN state dict (COCO) into a kit model of the same layout;
    returns (loaded keys, re-initialised keys).

    Loaded: the ResNet body, the FPN, the RPN head's 3x3 conv(s), the box head and the mask head
    (the four 3x3 convs). Kept as built (random init): ``roi_heads.box_predictor`` and
    ``roi_heads.mask_predictor`` (COCO's 91 classes -> the kit's classes + background), and, unless
    the anchors equal COCO's (sizes 32-512 px, ratios 0.5/1/2), the anchor-specific RPN outputs
    ``rpn.head.cls_logits`` / ``rpn.head.bbox_pred``. An RGB first conv is summed for 1-channel
    input; any other shape difference raises ValueError naming the tensor and the setting to fix.
    """
    from cellseg.models.pretrained import fit_tensor

    skip = ["roi_heads.box_predictor.", "roi_heads.mask_predictor."]
    if not same_anchors:
        skip += ["rpn.head.cls_logits.", "rpn.head.bbox_pred."]
    own = model.state_dict()
    fixed: dict[str, Any] = {}
    for key, value in state.items():
        if key not in own or any(key.startswith(p) for p in skip):
            continue
        try:
            fixed[key] = fit_tensor(key, value, own[key], what)
        except ValueError as exc:
            raise ValueError(f"{exc}; torchvision's R50-FPN needs backbone resnet50, fpn_channels "
                             "256, box_head_dim 1024, mask_head_channels 256") from None
    expected = {k for k in own if not any(k.startswith(p) for p in skip)
                and not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(fixed))
    if missing:
        raise ValueError(f"{what}: {len(missing)} tensors of the model are not in the file (e.g. "
                         f"{missing[:3]}); is it a torchvision Mask R-CNN of the same heads "
                         "version?")
    model.load_state_dict(fixed, strict=False)
    reinit = sorted(k for k in own if any(k.startswith(p) for p in skip))
    return sorted(fixed), reinit


def _anchor_generator(a: MaskRCNNArgs) -> "torch.nn.Module":  # noqa: F821
    """Anchors of ``a.anchor_sizes`` (original pixels) scaled by ``a.input_scale``, every
    aspect ratio on each of the 5 FPN levels."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    scale = 1.0 if a.input_scale is None else float(a.input_scale)
    return AnchorGenerator(tuple(tuple(s * scale for s in level) for level in a.anchor_sizes),
                           (tuple(a.aspect_ratios),) * 5)


def _heads(a: MaskRCNNArgs, anchors_per_location: int) -> dict[str, "torch.nn.Module"]:  # noqa: F821
    """RPN head, box head + predictor and mask head + predictor of the ``a.heads`` layout
    (created in this order, so a fixed seed gives the same initial weights)."""
    import torch
    from torchvision.models.detection.faster_rcnn import (FastRCNNConvFCHead, FastRCNNPredictor,
                                                          TwoMLPHead)
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    c, bn = a.fpn_channels, torch.nn.BatchNorm2d
    if a.heads == "v1":
        rpn_head = RPNHead(c, anchors_per_location)
        box_head = TwoMLPHead(c * 7 * 7, a.box_head_dim)
        mask_head = MaskRCNNHeads(c, [a.mask_head_channels] * 4, 1)
    else:
        rpn_head = RPNHead(c, anchors_per_location, conv_depth=2)
        box_head = FastRCNNConvFCHead((c, 7, 7), [c] * 4, [a.box_head_dim], norm_layer=bn)
        mask_head = MaskRCNNHeads(c, [a.mask_head_channels] * 4, 1, norm_layer=bn)
    n = a.num_classes + 1  # + background
    return {"rpn_head": rpn_head, "box_head": box_head, "mask_head": mask_head,
            "box_predictor": FastRCNNPredictor(a.box_head_dim, n),
            "mask_predictor": MaskRCNNPredictor(a.mask_head_channels, a.mask_head_channels, n)}


def _detection_settings(a: MaskRCNNArgs) -> dict[str, Any]:
    """The proposal / detection counts and thresholds, as torchvision's ``MaskRCNN`` names them."""
    return {"box_detections_per_img": a.detections_per_img,
            "box_score_thresh": a.box_score_thresh, "box_nms_thresh": a.box_nms_thresh,
            "box_batch_size_per_image": a.box_batch_size_per_image,
            "rpn_pre_nms_top_n_train": a.rpn_pre_nms_top_n_train,
            "rpn_post_nms_top_n_train": a.rpn_post_nms_top_n_train,
            "rpn_pre_nms_top_n_test": a.rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_test": a.rpn_post_nms_top_n_test,
            "rpn_batch_size_per_image": a.rpn_batch_size_per_image,
            "rpn_nms_thresh": a.rpn_nms_thresh}


def _load_coco_start(model: "torch.nn.Module", a: MaskRCNNArgs,  # noqa: F821
                     anchor_sizes: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Load ``a.weights`` (torchvision's COCO model or a local file) into ``model``; returns the
    ``pretrained_origin`` record. The RPN outputs load only when the anchors equal COCO's."""
    from cellseg.models.pretrained import coco_source, resolve

    coco_anchors = (tuple(tuple(lv) for lv in anchor_sizes)
                    == ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
                    and tuple(a.aspect_ratios) == (0.5, 1.0, 2.0))
    state, record = resolve(a.weights, lambda name: coco_source(name, a.heads))
    loaded, reinit = load_detection_weights(model, state, same_anchors=coco_anchors,
                                            what=f"Mask R-CNN weights {a.weights}")
    return {**record, "into": "model", "tensors": len(loaded), "reinitialised": reinit}


@dataclasses.dataclass(frozen=True)
class MaskRCNNFamily:
    """The Mask R-CNN family; ``mask_threshold`` binarises the pasted mask probabilities and
    ``min_mask_area`` drops tiny masks in training targets."""

    mask_threshold: float = 0.5
    min_mask_area: int = 1
    name: str = "maskrcnn"
    kind: Literal["dense", "instances"] = "instances"

    args_type: ClassVar[type[MaskRCNNArgs]] = MaskRCNNArgs

    # ----------------------------------------------------------------------------- network
    def build(self, args: MaskRCNNArgs | Mapping[str, Any] | None = None, /,
              **kwargs: Any) -> "torch.nn.Module":  # noqa: F821
        """torchvision ``MaskRCNN`` on a ResNet-FPN from ``MaskRCNNArgs`` (or a mapping /
        keyword arguments of its fields; ``cellseg.models.args``).

        heads: "v1" (torchvision maskrcnn_resnet50_fpn: 2-fc box head, plain mask head) or "v2"
            (maskrcnn_resnet50_fpn_v2 design: BatchNorm in FPN and heads, 2-conv RPN head, 4-conv
            + 1-fc box head; stronger, slower).
        weights: "coco" (torchvision's COCO Mask R-CNN R50-FPN, v1 or v2 as ``heads``) or a LOCAL
            torchvision Mask R-CNN state file; the class predictors (and the RPN outputs when the
            anchors differ from COCO's) stay re-initialised: ``load_detection_weights``.
        backbone_weights: "imagenet" (torchvision ResNet IMAGENET1K_V1; or a member name such as
            "IMAGENET1K_V2") or a LOCAL file for the ResNet body. Pair pretrained weights with
            ``norm="imagenet"``. The spec stores both as None and records them in
            ``pretrained_origin``.
        """
        from torchvision.models.detection.mask_rcnn import MaskRCNN

        from cellseg.data.transforms import resolve_norm

        a = MaskRCNNArgs.parse(args, **kwargs).resolved()
        fpn, body_origin = _resnet_fpn(a.backbone, in_channels=a.in_channels,
                                       fpn_channels=a.fpn_channels,
                                       trainable_layers=a.trainable_backbone_layers,
                                       frozen_bn=a.frozen_bn, weights=a.backbone_weights,
                                       fpn_norm=a.heads == "v2")
        anchors = _anchor_generator(a)
        model = MaskRCNN(fpn, num_classes=None, rpn_anchor_generator=anchors,
                         **_heads(a, anchors.num_anchors_per_location()[0]),
                         **_detection_settings(a))
        origin = [dict(o) for o in a.pretrained_origin]
        if body_origin is not None:
            origin.append(body_origin)
        if a.weights is not None:
            origin.append(_load_coco_start(model, a, anchors.sizes))
        model.transform = _cell_transform_class()(a.input_scale, a.min_size, a.max_size,
                                                  a.in_channels)
        norm = resolve_norm(a.norm, a.in_channels)
        spec_args = dataclasses.replace(a.without_weights(origin), norm=norm)
        return attach_spec(model, ModelSpec(self.name, spec_args.to_dict(), norm,
                                            class_map=a.class_map))

    def preprocess(self, model: "torch.nn.Module", images: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(B, H, W) uint8 -> (B, C, H, W) float32 on the model's device, normalised."""
        from cellseg.data.transforms import normalise_batch

        return normalise_batch(images, model.spec.norm, _device(model))

    # ----------------------------------------------------------------------------- training
    def target_spec(self, args: MaskRCNNArgs | Mapping[str, Any] | None = None, /,
                    **kwargs: Any) -> TargetSpec:
        """What the data pipeline builds for this family, from the build arguments: boxes,
        labels + 1 and masks as label layers (expanded on the device in ``loss``); masks under
        ``min_mask_area`` pixels are dropped."""
        from cellseg.data.transforms import resolve_norm

        a = MaskRCNNArgs.parse(args, **kwargs)
        cmap = tuple(a.class_map.items()) if a.class_map is not None else None
        return TargetSpec.with_norm(resolve_norm(a.norm, a.in_channels), kind="instances",
                                    min_mask_area=self.min_mask_area, mask_format="layers",
                                    label_offset=1, class_map=cmap)

    def collate(self, samples: Sequence[tuple["torch.Tensor", dict]]) -> tuple[Any, Any]:  # noqa: F821
        """-> (list of (C, H, W) images, list of target dicts); sizes may differ."""
        if not samples:
            raise ValueError("collate got an empty batch")
        return [img for img, _ in samples], [t for _, t in samples]

    def loss(self, model: "torch.nn.Module", images: Any, targets: Any) -> dict[str, "torch.Tensor"]:  # noqa: F821
        """torchvision's five losses and their sum "loss" (the model must be in train mode)."""
        import torch

        if not model.training:
            raise RuntimeError("Mask R-CNN returns losses only in train mode: call model.train()")
        device = _device(model)
        if isinstance(images, torch.Tensor):
            images = list(images)
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [_device_target(t, device) for t in targets]
        losses = model(images, targets)
        out = {"loss": sum(losses.values())}
        out.update({k: v.detach() for k, v in losses.items()})
        return out

    # ----------------------------------------------------------------------------- inference
    def predict_instances(self, model: "torch.nn.Module", images: "torch.Tensor") -> list[Instances]:  # noqa: F821
        """(B, C, H, W) preprocessed -> one Instances per image (empty masks dropped)."""
        import torch

        device = _device(model)
        was_training = model.training
        model.eval()
        model.transform.paste_masks = False
        try:
            with torch.no_grad():
                outputs = model([img.to(device) for img in images])
        finally:
            model.transform.paste_masks = True
            model.train(was_training)
        scale = model.transform.input_scale
        results = []
        for img, out in zip(images, outputs):
            shape = (int(img.shape[-2]), int(img.shape[-1]))
            boxes = out["boxes"].float().cpu().numpy().reshape(-1, 4)
            probs = out["masks"][:, 0].float().cpu().numpy() if len(boxes) else np.zeros((0, 28, 28))
            pboxes, masks, mean_prob = paste_head_masks(probs, boxes, shape, scale,
                                                        self.mask_threshold)
            idx = np.flatnonzero([m.size > 0 and bool(m.any()) for m in masks])
            results.append(Instances(
                shape, pboxes[idx].reshape(-1, 4), [masks[i] for i in idx],
                out["scores"].float().cpu().numpy()[idx],
                out["labels"].cpu().numpy().astype(np.int64)[idx] - 1,
                {"mask_prob": mean_prob[idx].astype(np.float32)}))
        return results


def paste_head_masks(probs: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int],
                     input_scale: float | None, threshold: float = 0.5
                     ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Mask-head probabilities (N, M, M) of boxes (N, 4) in original-image pixels -> tight
    ``Instances`` boxes, crop masks and mean probabilities (``cellseg.models.paste.paste_masks``).

    torchvision's RoIAlign (``aligned=False``) puts pixel centres at integer coordinates of the
    network input, while ``paste_masks`` puts them at ``c + 0.5``: the region is the box shifted by
    half a network-input pixel, ``0.5 / input_scale`` image pixels (tested against torchvision's
    own training-time mask projection). With ``input_scale=None`` (torchvision resizing) the shift
    is approximated by half an image pixel.
    """
    from cellseg.models.paste import paste_masks

    s = 1.0 if input_scale is None else float(input_scale)
    regions = np.asarray(boxes, np.float64).reshape(-1, 4) + 0.5 / s
    return paste_masks(probs, regions, image_shape, threshold)


def _device(model: "torch.nn.Module") -> "torch.device":  # noqa: F821
    return next(model.parameters()).device


def _device_target(t: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """A torchvision target on ``device``; "layers" targets (the data pipeline's compact form)
    are expanded to (M, H, W) uint8 masks there."""
    out = {k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "masks") if k in t}
    if "masks" not in out and "layers" in t:
        out["masks"] = masks_from_layers(t["layers"].to(device, non_blocking=True), len(t["boxes"]))
    return out


FAMILY = MaskRCNNFamily()
