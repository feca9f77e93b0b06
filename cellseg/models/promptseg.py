"""promptseg: box-prompted instance masks (CellSAM-style; the 1st-place Sartorius recipe).

    from cellseg.models import get_family
    fam = get_family("promptseg")
    model = fam.build(decoder="crop", crop_size=64, detector={...maskrcnn build args...})
    x = fam.preprocess(model, images_uint8)                 # (B, 1, H, W)
    preds = fam.predict_instances(model, x)                 # detector boxes -> masks
    preds = fam.predict_with_boxes(model, x, gt_boxes)      # evaluate the mask part on given boxes
    losses = fam.loss(model, *fam.collate(samples))         # stage 2: mask decoder on GT boxes

Two stages. Stage 1, the box source, is a Mask R-CNN trained by the ``maskrcnn`` family and attached
here as ``model.detector`` (built from ``detector=`` kwargs or loaded from ``detector_checkpoint=``;
frozen). Stage 2, trained by ``loss``, is the mask decoder: given a box, predict that cell's mask on an
(S, S) crop of a *region* (the box grown by ``margin`` on every side, so the decoder sees context and
can fix box errors). Ground-truth boxes are jittered in training so the decoder learns to tolerate
detector boxes. Two interchangeable decoders share one interface (see ``promptseg_sam``):

- ``decoder="crop"`` (``CropDecoder``): ``roi_align`` crops of the image (plus a channel marking the
  prompt box), a small UNet predicts the cell mask (and optionally the union of its neighbours, an
  auxiliary target the 2nd place used), an MLP on pooled features, mask statistics and the box size
  predicts the mask IoU.
- ``decoder="sam"`` (``promptseg_sam.SamPromptDecoder``): SAM's ViT encoder, prompt encoder and mask
  decoder; all boxes of an image in one call; optional local SAM/CellSAM weights.

The loss is BCE + Dice on the crop, BCE on the neighbour channel and the MSE of the predicted IoU
against the IoU *in image pixels* of the mask pasted back exactly as inference does (``pixel_iou``).

Every mask carries ``extra["pred_iou"]`` (the IoU head, clipped to [0, 1]), ``extra["stability"]``
(SAM's stability score: |logits > +1| / |logits > -1| on the crop logits), ``extra["mask_prob"]``
(mean probability inside the pasted mask) and ``extra["box_score"]`` (the detector's score). The
model emits raw candidates: the instance score is the box score and nothing is filtered here. Every
filter lives in the inference config that ``cellseg tune`` searches: ``InferenceConfig.rescore``
(score = box score x mask_prob, 1st place) and ``TypeThresholds.min_pred_iou`` / ``min_stability``.
Masks go back to image pixels through
``cellseg.models.paste.paste_masks``, the one paste-back helper.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cellseg.core.instances import Instances
from cellseg.models.args import PromptSegArgs
from cellseg.models.base import ModelSpec, attach_spec
from cellseg.models.paste import paste_masks
from cellseg.models.promptseg_crop import CropDecoder, stability_score  # noqa: F401 (API)

if TYPE_CHECKING:
    from cellseg.data.targets import TargetSpec

# ----------------------------------------------------------------------------- pure helpers


def expand_boxes(boxes: torch.Tensor, margin: float, min_size: float) -> torch.Tensor:
    """(N, 4) float boxes -> regions: each side grown by ``margin`` x the box size, and at least
    ``min_size`` pixels wide/high, about the same centre."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) * (1 + 2 * margin)
    size = size.clamp(min=min_size)
    return torch.cat([c - size / 2, c + size / 2], 1)


def jitter_boxes(boxes: torch.Tensor, sigma: float, image_hw: tuple[int, int]) -> torch.Tensor:
    """Training-time box noise: each coordinate moves by N(0, sigma x box side); the result stays
    at least 2 px wide and inside the image."""
    if sigma <= 0 or len(boxes) == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)
    out = boxes + torch.randn_like(boxes) * sigma * wh
    h, w = image_hw
    x0 = out[:, 0].clamp(0, w - 2)
    y0 = out[:, 1].clamp(0, h - 2)
    x1 = torch.maximum(out[:, 2].clamp(max=w), x0 + 2)
    y1 = torch.maximum(out[:, 3].clamp(max=h), y0 + 2)
    return torch.stack([x0, y0, x1, y1], 1)


def pixel_iou(probs: torch.Tensor, regions: torch.Tensor, masks: torch.Tensor,
              threshold: float = 0.5) -> torch.Tensor:
    """IoU, in image pixels, of each crop mask pasted back exactly as ``paste_masks`` does
    (bilinear at pixel centres, edge replicated, > threshold) with its true mask.

    probs: (N, S, S) float probabilities on the regions; regions: (N, 4) float;
    masks: (N, H, W) bool/uint8 true masks (pixels outside the region count in the union).
    Returns (N,) float32; 1 where both masks are empty. This, not the IoU on the crop grid, is what
    the metric sees: small cells lose IoU to pixel quantisation that the crop grid hides.
    """
    n = probs.shape[0]
    if n == 0:
        return probs.new_zeros((0,))
    h, w = masks.shape[-2:]
    rx0, ry0, rx1, ry1 = regions.float().unbind(1)
    x0 = torch.ceil(rx0 - 0.5).clamp(0, w).long()
    y0 = torch.ceil(ry0 - 0.5).clamp(0, h).long()
    x1 = torch.maximum(torch.floor(rx1 - 0.5).long() + 1, x0).clamp(max=w)
    y1 = torch.maximum(torch.floor(ry1 - 0.5).long() + 1, y0).clamp(max=h)
    pw, ph = max(int((x1 - x0).max()), 1), max(int((y1 - y0).max()), 1)
    ax = torch.arange(pw, device=probs.device)
    ay = torch.arange(ph, device=probs.device)
    px, py = x0[:, None] + ax, y0[:, None] + ay  # (N, pw), (N, ph) pixel indices
    gx = ((px.float() + 0.5 - rx0[:, None]) / (rx1 - rx0)[:, None]) * 2 - 1
    gy = ((py.float() + 0.5 - ry0[:, None]) / (ry1 - ry0)[:, None]) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(n, ph, pw), gy[:, :, None].expand(n, ph, pw)], -1)
    # align_corners=False + border padding == paste_crop's sampling (see cellseg.models.paste)
    pasted = F.grid_sample(probs[:, None].float(), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[:, 0]
    valid = ((ay[None, :, None] < (y1 - y0)[:, None, None])
             & (ax[None, None, :] < (x1 - x0)[:, None, None]))
    pred = (pasted > threshold) & valid
    idx = torch.arange(n, device=probs.device)[:, None, None]
    rows, cols = py.clamp(max=h - 1)[:, :, None], px.clamp(max=w - 1)[:, None, :]
    truth_in = masks[idx, rows, cols].bool() & valid
    inter = (pred & truth_in).flatten(1).sum(1).float()
    union = pred.flatten(1).sum(1).float() + masks.flatten(1).sum(1).float() - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# ----------------------------------------------------------------------------- the model


class PromptSegModel(nn.Module):
    """Mask decoder (+ optional frozen detector) and the settings that turn its output into
    instances. Build it with ``FAMILY.build``; attributes are documented there."""

    def __init__(self, decoder: nn.Module, settings: PromptSegArgs,
                 detector: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.detector = detector
        if detector is not None:
            detector.requires_grad_(False)  # stage 1 is trained by its own family
        s = settings
        self.detector_family = s.detector_family
        self.margin, self.min_region, self.jitter = float(s.margin), float(s.min_region), float(s.jitter)
        self.max_train_instances = int(s.max_train_instances)
        self.mask_threshold, self.stability_offset = float(s.mask_threshold), float(s.stability_offset)
        self.iou_weight, self.neighbour_weight = float(s.iou_weight), float(s.neighbour_weight)
        self.decode_chunk = s.decode_chunk


    def train(self, mode: bool = True) -> "PromptSegModel":
        super().train(mode)
        if self.detector is not None:
            self.detector.eval()  # frozen: keep its norm layers and proposal settings in eval mode
        return self

    @property
    def decoder_channels(self) -> int:
        """1 (the cell) or 2 (the cell and its neighbours)."""
        head = getattr(self.decoder, "head", None)
        return int(head.out_channels) if head is not None else 1

    def regions(self, boxes: torch.Tensor) -> torch.Tensor:
        return expand_boxes(boxes.float(), self.margin, self.min_region)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("promptseg expects preprocessed images (B, C, H, W) float32 "
                         f"(use FAMILY.preprocess), got {getattr(images, 'shape', type(images))}")


def _build_decoder(a: PromptSegArgs) -> tuple[nn.Module, dict[str, Any] | None]:
    """The mask decoder of ``a.decoder`` and the SAM sizes it was built with (None for "crop")."""
    if a.decoder == "crop":
        return CropDecoder(in_channels=a.in_channels, crop_size=a.crop_size,
                           base_channels=a.base_channels, levels=a.levels,
                           out_channels=2 if a.neighbours else 1), a.sam
    from cellseg.models.promptseg_sam import SamPromptDecoder, sam_sizes

    sam = sam_sizes(a.sam_checkpoint, a.sam)
    return SamPromptDecoder(mean=a.mean, std=a.std, crop_size=a.crop_size,
                            checkpoint=a.sam_checkpoint, **sam), sam


def _build_detector(a: PromptSegArgs) -> nn.Module | None:
    """The frozen box source: loaded from ``a.detector_checkpoint``, built from ``a.detector``,
    or None (prompts then come from ``predict_with_boxes``)."""
    if a.detector_checkpoint:
        return _load_detector(a.detector_checkpoint)
    if a.detector is not None:
        from cellseg.models.maskrcnn import FAMILY as MASKRCNN

        return MASKRCNN.build(a.detector)
    return None


class PromptSegFamily:
    """The ``promptseg`` model family (contract: ``cellseg/models/base.py``)."""

    name = "promptseg"
    kind: Literal["instances"] = "instances"

    args_type: ClassVar[type[PromptSegArgs]] = PromptSegArgs

    def build(self, args: PromptSegArgs | Mapping[str, Any] | None = None, /,
              **kwargs: Any) -> PromptSegModel:
        """Build a promptseg model from ``PromptSegArgs`` (or a mapping / keyword arguments of its
        fields; ``cellseg.models.args``).

        decoder: "crop" (UNet on roi crops; ``base_channels``, ``levels``, ``neighbours`` adds the
            neighbour channel) or "sam" (``sam``: ``SamPromptDecoder`` size kwargs, e.g.
            ``promptseg_sam.SAM_VIT_B``; ``sam_checkpoint``: "vit_b" | "vit_l" | "vit_h", Meta's
            official SAM file (its sizes fill ``sam``), or a local SAM/CellSAM .pth).
        mean, std: input normalisation on the 0-255 scale; in_channels: gray repeated C times.
        crop_size: S of the (S, S) mask crops; margin: context added around each box (fraction of
            its size per side); min_region: smallest region side in pixels.
        detector / detector_checkpoint: the box source, a Mask R-CNN built from its args
            (``MaskRCNNArgs``), or loaded (architecture + weights) from a cellseg checkpoint;
            frozen.
        jitter: box noise (fraction of the box side) in training; max_train_instances: cells per
            image per step; iou_weight / neighbour_weight: loss weights.
        mask_threshold: pasted probability above which a pixel is in the mask;
            stability_offset: SAM's offset (score at logit 0 +- offset).
        decode_chunk: boxes per decoder call (bounds memory; None: all boxes of the batch at once).
        Rescoring and the pred_iou / stability filters are inference settings
        (``InferenceConfig.rescore``, ``TypeThresholds.min_pred_iou`` / ``min_stability``).
        """
        from cellseg.data.transforms import resolve_norm

        a = PromptSegArgs.parse(args, **kwargs)
        norm = resolve_norm({"mean": float(a.mean), "std": float(a.std)}, a.in_channels)
        dec, sam = _build_decoder(a)
        det = _build_detector(a)
        model = PromptSegModel(dec, a, detector=det)
        # Arguments that rebuild this model WITHOUT the external files: the weights of SAM and of
        # the detector live in this model's state_dict, so a saved checkpoint needs no other file.
        origin = [dict(o) for o in a.pretrained_origin]
        if getattr(dec, "pretrained_origin", None):
            origin.append(dec.pretrained_origin)
        spec_args = dataclasses.replace(
            a.without_weights(origin), sam=sam,
            detector=dict(det.spec.args) if det is not None else None)
        return attach_spec(model, ModelSpec(self.name, spec_args.to_dict(), norm))

    # -- data ---------------------------------------------------------------------------------

    def preprocess(self, model: nn.Module, images: np.ndarray) -> torch.Tensor:
        """(B, H, W) uint8 -> (B, C, H, W) float32 on the model's device, (x - mean) / std."""
        from cellseg.data.transforms import normalise_batch

        return normalise_batch(images, model.spec.norm, next(model.parameters()).device)

    def target_spec(self, args: PromptSegArgs | Mapping[str, Any] | None = None, /,
                    **kwargs: Any) -> "TargetSpec":
        """What the data pipeline builds for this family (full masks), from the build arguments."""
        from cellseg.data.targets import TargetSpec
        from cellseg.data.transforms import resolve_norm

        a = PromptSegArgs.parse(args, **kwargs)
        norm = resolve_norm({"mean": float(a.mean), "std": float(a.std)}, a.in_channels)
        return TargetSpec.with_norm(norm, kind="instances", mask_format="full")

    def collate(self, samples: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
        """Stack images (zero-padded at the bottom/right to the largest) and list the targets."""
        imgs = [s[0] for s in samples]
        h = max(i.shape[-2] for i in imgs)
        w = max(i.shape[-1] for i in imgs)
        batch = imgs[0].new_zeros((len(imgs), imgs[0].shape[0], h, w))
        targets = []
        for k, (img, t) in enumerate(samples):
            batch[k, :, :img.shape[-2], :img.shape[-1]] = img
            m = t["masks"]
            if m.shape[-2:] != (h, w):
                m = F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2]))
            targets.append({**t, "masks": m})
        return batch, targets

    # -- training (stage 2) ----------------------------------------------------------------------

    def loss(self, model: PromptSegModel, images: torch.Tensor,
             targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """BCE + Dice on the cell mask crops, BCE on the neighbour channel, MSE of the predicted
        IoU vs the IoU of the thresholded prediction; prompts are jittered GT boxes."""
        from torchvision.ops import roi_align

        _check_images(images)
        device, (h, w) = images.device, images.shape[-2:]
        s = model.decoder.crop_size
        boxes, regions, cell_t, neigh_t, truth = [], [], [], [], []
        for t in targets:
            m = t["masks"].to(device)
            n = len(m)
            sel = torch.randperm(n, device=device)[:model.max_train_instances]
            b = jitter_boxes(t["boxes"].to(device).float()[sel], model.jitter, (h, w))
            r = model.regions(b)
            boxes.append(b)
            regions.append(r)
            if len(sel) == 0:
                continue
            truth.append(m[sel])
            chosen = m[sel].float()[:, None]
            rois = torch.cat([torch.arange(len(sel), device=device, dtype=torch.float32)[:, None],
                              r], 1)
            cell_t.append(roi_align(chosen, rois, s, 1.0, 2, aligned=True))
            if model.decoder_channels > 1:
                count = m.sum(0, dtype=torch.float32)  # cells covering each pixel (they overlap)
                others = ((count[None, None] - chosen) > 0.5).float()
                neigh_t.append(roi_align(others, rois, s, 1.0, 2, aligned=True))
        if not cell_t:  # no cell in the batch: a zero loss that still touches every parameter
            zero = sum(p.sum() * 0.0 for p in model.decoder.parameters() if p.requires_grad)
            keys = ["loss_bce", "loss_dice", "loss_iou"]
            keys += ["loss_neighbour"] if model.decoder_channels > 1 else []
            return {"loss": zero, **{k: zero.detach() for k in keys + ["mask_iou"]}}
        logits, iou_pred = model.decoder(images, boxes, regions)
        target = torch.cat(cell_t)[:, 0]
        cell = logits[:, 0].float()
        bce = F.binary_cross_entropy_with_logits(cell, target)
        prob = cell.sigmoid()
        inter = (prob * target).flatten(1).sum(1)
        dice = 1 - ((2 * inter + 1) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + 1)).mean()
        with torch.no_grad():  # the IoU head learns the pixel IoU that the metric will see
            actual = torch.cat([pixel_iou(p, r, t, model.mask_threshold) for p, r, t in
                                zip(prob.split([len(t) for t in truth]),
                                    [r for r in regions if len(r)], truth)])
        loss_iou = F.mse_loss(iou_pred.float(), actual)
        out = {"loss_bce": bce, "loss_dice": dice, "loss_iou": loss_iou}
        total = bce + dice + model.iou_weight * loss_iou
        if logits.shape[1] > 1:
            neigh = F.binary_cross_entropy_with_logits(logits[:, 1].float(), torch.cat(neigh_t)[:, 0])
            out["loss_neighbour"] = neigh
            total = total + model.neighbour_weight * neigh
        out["loss"] = total
        out["mask_iou"] = actual.mean()
        return out

    # -- inference -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict_with_boxes(self, model: PromptSegModel, images: torch.Tensor,
                           boxes: Sequence[Any], scores: Sequence[Any] | None = None,
                           labels: Sequence[Any] | None = None) -> list[Instances]:
        """Masks for given prompt boxes (evaluation on GT boxes, or detector boxes).

        images: (B, C, H, W) preprocessed; boxes: B arrays (N_b, 4) float x0, y0, x1, y1 pixels;
        scores / labels: optional B arrays (N_b,) (default 1.0 / 0). Returns one ``Instances`` per
        image (empty masks dropped), extra: pred_iou, stability, mask_prob, box_score.
        """
        _check_images(images)
        device, (h, w) = images.device, images.shape[-2:]
        bx = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4), device=device) for b in boxes]
        if len(bx) != len(images):
            raise ValueError(f"predict_with_boxes got {len(bx)} box arrays for {len(images)} images")
        rg = [model.regions(b) for b in bx]
        logits, ious = self.decode_boxes(model, images, bx, rg)
        return self.to_instances(model, logits, ious, rg, (h, w), scores, labels)

    @torch.no_grad()
    def decode_boxes(self, model: PromptSegModel, images: torch.Tensor,
                     boxes: Sequence[torch.Tensor], regions: Sequence[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder on box prompts (a network call, unlike a dense family's ``decode``):
        images (B, C, H, W) preprocessed, B boxes / regions tensors (N_b, 4) -> cell logits
        (N, S, S) float32 and raw predicted IoU (N,), N = sum N_b, images in order;
        ``decode_chunk`` boxes per call (batched, bounded memory)."""
        flat = [(i, k) for i, b in enumerate(boxes) for k in range(len(b))]
        chunk = model.decode_chunk or max(len(flat), 1)
        logits_parts, iou_parts = [], []
        dec = model.decoder
        if hasattr(dec, "embed") and flat:  # SAM: encode each image once for all chunks
            emb, scale = dec.embed(images)

            def call(b: list, r: list) -> tuple[torch.Tensor, torch.Tensor]:
                return dec.decode_embedded(emb, scale, b, r)
        else:
            def call(b: list, r: list) -> tuple[torch.Tensor, torch.Tensor]:
                return dec(images, b, r)
        for c0 in range(0, len(flat), chunk):
            sel: list[list[int]] = [[] for _ in boxes]
            for i, k in flat[c0:c0 + chunk]:
                sel[i].append(k)
            idx = [torch.as_tensor(ks, dtype=torch.long, device=images.device) for ks in sel]
            lg, io = call([b[j] for b, j in zip(boxes, idx)], [r[j] for r, j in zip(regions, idx)])
            logits_parts.append(lg[:, 0].float())
            iou_parts.append(io.float())
        if not logits_parts:
            s = model.decoder.crop_size
            return images.new_zeros((0, s, s)), images.new_zeros((0,))
        return torch.cat(logits_parts), torch.cat(iou_parts)

    def to_instances(self, model: PromptSegModel, logits: torch.Tensor, ious: torch.Tensor,
                     regions: Sequence[torch.Tensor], image_hw: tuple[int, int],
                     scores: Sequence[Any] | None = None,
                     labels: Sequence[Any] | None = None) -> list[Instances]:
        """Decoder outputs -> one ``Instances`` per image: stability, paste-back, extras (raw
        candidates: score = box score, no filter; ``cellseg.infer.postprocess`` filters).
        logits (N, S, S) / ious (N,) are the images' boxes concatenated in order."""
        stab = stability_score(logits, 0.0, model.stability_offset).cpu().numpy()
        probs = logits.sigmoid().cpu().numpy()
        ious_np = ious.clamp(0, 1).cpu().numpy()
        out, n_done = [], 0
        for i, rg in enumerate(regions):
            n = len(rg)
            sl = slice(n_done, n_done + n)
            n_done += n
            pboxes, pmasks, mean_prob = paste_masks(probs[sl], rg.cpu().numpy(), image_hw,
                                                    model.mask_threshold)
            box_score = (np.ones(n, np.float32) if scores is None
                         else np.asarray(scores[i], np.float32).reshape(-1))
            lab = (np.zeros(n, np.int64) if labels is None
                   else np.asarray(labels[i], np.int64).reshape(-1))
            extra = {"pred_iou": ious_np[sl], "stability": stab[sl], "mask_prob": mean_prob,
                     "box_score": box_score}
            inst = Instances(image_hw, pboxes, pmasks, box_score, lab, extra)
            out.append(inst.select(inst.areas > 0))
        return out

    @torch.no_grad()
    def detect(self, model: PromptSegModel, images: torch.Tensor) -> list[Instances]:
        """Stage 1: the attached detector's instances for preprocessed images; ``predict_instances``
        prompts with their ``extra["det_box"]`` (float box-regression output) when present."""
        if model.detector is None:
            raise ValueError("this promptseg model has no detector to make box prompts: build it "
                             "with detector={...maskrcnn args...} or detector_checkpoint=<path of a "
                             "trained maskrcnn checkpoint>, or call predict_with_boxes with boxes")
        # re-normalise the tensor for the detector in place of a uint8 round trip (host copy,
        # rounding, and the detector's preprocess normalising it again): one affine map on the
        # device, raw = x * std + mean, then (raw - mean_d) / std_d per detector channel
        norm, det_norm = model.spec.norm, model.detector.spec.norm
        raw = images[:, :1] * float(norm["std"][0]) + float(norm["mean"][0])
        mean_d = torch.tensor(det_norm["mean"], dtype=raw.dtype, device=raw.device)
        std_d = torch.tensor(det_norm["std"], dtype=raw.dtype, device=raw.device)
        det_in = (raw - mean_d[None, :, None, None]) / std_d[None, :, None, None]
        return _torchvision_boxes(model.detector, det_in)

    def predict_instances(self, model: PromptSegModel, images: torch.Tensor) -> list[Instances]:
        """(B, C, H, W) preprocessed -> detector boxes -> one ``Instances`` per image."""
        _check_images(images)
        dets = self.detect(model, images)
        boxes = [np.asarray(d.extra["det_box"], np.float32) if "det_box" in d.extra
                 else d.boxes.astype(np.float32) for d in dets]
        return self.predict_with_boxes(model, images, boxes, [d.scores for d in dets],
                                       [d.labels for d in dets])


def _torchvision_boxes(detector: nn.Module, images: torch.Tensor) -> list[Instances]:
    """Boxes, scores and labels of a torchvision (Mask) R-CNN, with its mask branch skipped (the
    prompts need only boxes): Instances with 1x1 placeholder masks at each box's top-left pixel
    and the float boxes in ``extra["det_box"]`` (pixel-edge convention, as the training boxes;
    torchvision class k + 1 -> label k)."""
    roi_heads = detector.roi_heads
    saved = roi_heads.mask_roi_pool
    roi_heads.mask_roi_pool = None  # RoIHeads.has_mask() is False: no mask head, no pasting
    try:
        outputs = detector([img for img in images])
    finally:
        roi_heads.mask_roi_pool = saved
    results = []
    for img, out in zip(images, outputs):
        h, w = int(img.shape[-2]), int(img.shape[-1])
        boxes = out["boxes"].float().cpu().numpy().reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes = boxes[keep]
        x0 = np.minimum(np.floor(boxes[:, 0]), w - 1).astype(np.int32)
        y0 = np.minimum(np.floor(boxes[:, 1]), h - 1).astype(np.int32)
        ibox = np.stack([x0, y0, x0 + 1, y0 + 1], 1).reshape(-1, 4)
        results.append(Instances((h, w), ibox, [np.ones((1, 1), bool) for _ in range(len(boxes))],
                                 out["scores"].float().cpu().numpy()[keep],
                                 out["labels"].cpu().numpy().astype(np.int64)[keep] - 1,
                                 {"det_box": boxes}))
    return results


def _load_detector(path: str) -> nn.Module:
    """The Mask R-CNN detector (architecture and weights) from a cellseg checkpoint, frozen."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detector checkpoint {path} does not exist: train one with "
                                "`cellseg train` (model.family=maskrcnn) or pass detector=<args>")
    from cellseg.checkpoint import load_checkpoint
    from cellseg.models.loading import rebuild
    from cellseg.models.maskrcnn import FAMILY as MASKRCNN

    det = rebuild(MASKRCNN, load_checkpoint(path), where=path)
    return det.eval()  # built by its family: det.spec.args rebuild it without the checkpoint file


FAMILY = PromptSegFamily()
