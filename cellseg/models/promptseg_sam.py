"""SAM-architecture box-prompted mask decoder for the ``promptseg`` family (CellSAM-style).

    from cellseg.models.promptseg_sam import SamPromptDecoder
    dec = SamPromptDecoder(mean=128.0, std=13.0, crop_size=64, img_size=64, embed_dim=32, depth=2,
                           num_heads=2, prompt_dim=32, mlp_dim=64)          # tiny, for CPU tests
    dec = SamPromptDecoder(mean=128.0, std=13.0, checkpoint="sam_vit_b_01ec64.pth")  # ViT-B sizes

Built from ``segment_anything.modeling`` classes directly (image encoder ViT + prompt encoder + mask
decoder, wrapped in ``Sam`` so parameter names match SAM's released checkpoints). ``checkpoint`` is a SAM
variant name, "vit_b" | "vit_l" | "vit_h" (Meta's official files, resolved through torch.hub's cache
by ``cellseg.models.pretrained``; ``SAM_VARIANTS`` gives their sizes), or a local SAM/CellSAM file
(``torch.load(weights_only=True)``). The SAM licence (Apache-2.0) covers code and weights.

Interface shared with the crop decoder (``cellseg.models.promptseg_crop.CropDecoder``)::

    logits, iou = decoder(images, boxes, regions)
    images:  (B, C, H, W) float32, normalised with the promptseg model's (mean, std)
    boxes:   list of B float tensors (N_b, 4), prompt boxes x0, y0, x1, y1 in image pixels
    regions: list of B float tensors (N_b, 4), the area each output crop covers (box + margin)
    logits:  (N, 1, S, S) float32 mask logits on the regions, N = sum N_b, images in order
    iou:     (N,) float32 predicted IoU (SAM's IoU-token MLP head)

All boxes of one image go through the prompt encoder and the mask decoder in ONE call (split into
chunks of ``max_boxes_per_call`` only when that is set, to bound memory). SAM predicts low-resolution
logits (img_size / 4 per side) over its padded square input; each box's crop is read from its own
logit map with ``roi_align`` so the family pastes SAM masks back exactly like crop-decoder masks.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

SAM_VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
SAM_VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
SAM_VIT_H = dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
# the names of segment_anything's sam_model_registry ("default" there is vit_h)
SAM_VARIANTS = {"vit_b": SAM_VIT_B, "vit_l": SAM_VIT_L, "vit_h": SAM_VIT_H}


def sam_sizes(checkpoint: str | None, sizes: dict | None) -> dict:
    """``sizes`` with the image-encoder sizes of ``checkpoint``'s variant filled in when it names
    one (keys given in ``sizes`` win, so a mismatch is reported by ``load_sam_weights``)."""
    base = dict(SAM_VARIANTS.get(checkpoint, {})) if isinstance(checkpoint, str) else {}
    base = {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}
    return {**base, **dict(sizes or {})}


class SamPromptDecoder(nn.Module):
    """SAM image encoder + prompt encoder + mask decoder with configurable sizes.

    Defaults are SAM ViT-B's. ``checkpoint``: a SAM variant name (vit_b, vit_l, vit_h: sizes must
    match, see ``sam_sizes``) or the path of a local SAM state_dict, bare or under
    "model"/"state_dict" (prefixes such as "module." are stripped). ``self.pretrained_origin``
    records what was loaded.
    ``freeze_image_encoder``: compute image embeddings without gradients (fine-tune only the prompt
    encoder and mask decoder, as CellSAM did).
    """

    def __init__(self, *, mean: float = 128.0, std: float = 13.0, crop_size: int = 128,
                 img_size: int = 1024, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                 window_size: int = 14, prompt_dim: int = 256, mlp_dim: int = 2048,
                 decoder_depth: int = 2, decoder_heads: int = 8, iou_head_hidden_dim: int = 256,
                 checkpoint: str | None = None, freeze_image_encoder: bool = False,
                 max_boxes_per_call: int | None = None) -> None:
        super().__init__()
        from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                               TwoWayTransformer)

        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} must be a multiple of patch_size={patch_size}")
        grid = img_size // patch_size
        self.sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=num_heads,
                patch_size=patch_size, qkv_bias=True, use_rel_pos=True,
                global_attn_indexes=tuple(global_attn_indexes), window_size=window_size,
                out_chans=prompt_dim),
            prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                         input_image_size=(img_size, img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_dim,
                                              mlp_dim=mlp_dim, num_heads=decoder_heads),
                transformer_dim=prompt_dim, iou_head_depth=3,
                iou_head_hidden_dim=iou_head_hidden_dim),
        )
        self.mean, self.std = float(mean), float(std)
        self.crop_size = int(crop_size)
        self.img_size = int(img_size)
        self.freeze_image_encoder = bool(freeze_image_encoder)
        self.max_boxes_per_call = max_boxes_per_call
        self.pretrained_origin = load_sam_weights(self.sam, checkpoint) if checkpoint else None
        if self.freeze_image_encoder:
            self.sam.image_encoder.requires_grad_(False)
        # box prompts only: point and mask-prompt parameters never enter the graph; freezing them
        # keeps DistributedDataParallel from waiting for their gradients
        pe = self.sam.prompt_encoder
        for module in (pe.mask_downscaling, pe.not_a_point_embed, pe.point_embeddings[0],
                       pe.point_embeddings[1]):
            module.requires_grad_(False)

    def to_sam_input(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(B, C, H, W) promptseg-normalised -> SAM input (B, 3, img_size, img_size) and the scale.

        SAM wants RGB on the 0-255 scale normalised by its own pixel mean/std, the longest side
        resized to ``img_size`` and zero padding at the bottom/right (``ResizeLongestSide``)."""
        raw = images[:, :1] * self.std + self.mean  # back to 0-255 gray
        h, w = raw.shape[-2:]
        scale = self.img_size / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) != (h, w):
            raw = F.interpolate(raw, (nh, nw), mode="bilinear", align_corners=False,
                                antialias=scale < 1)
        x = (raw.expand(-1, 3, -1, -1) - self.sam.pixel_mean) / self.sam.pixel_std
        x = F.pad(x, (0, self.img_size - nw, 0, self.img_size - nh))
        return x, scale

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Image embeddings (B, prompt_dim, g, g) and the input scale; computed once per image
        however many box chunks are decoded from them."""
        x, scale = self.to_sam_input(images)
        if self.freeze_image_encoder:
            with torch.no_grad():
                return self.sam.image_encoder(x), scale
        return self.sam.image_encoder(x), scale

    def decode_embedded(self, emb: torch.Tensor, scale: float, boxes: Sequence[torch.Tensor],
                        regions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for the boxes of each image; see the module docstring."""
        from torchvision.ops import roi_align

        pe = self.sam.prompt_encoder.get_dense_pe()
        logits_out, iou_out = [], []
        for b, (bx, rg) in enumerate(zip(boxes, regions)):
            n = len(bx)
            step = int(self.max_boxes_per_call or n or 1)
            for s in range(0, n, step):
                bxc, rgc = bx[s:s + step].float() * scale, rg[s:s + step].float() * scale
                sparse, dense = self.sam.prompt_encoder(points=None, boxes=bxc, masks=None)
                low, iou = self.sam.mask_decoder(image_embeddings=emb[b:b + 1], image_pe=pe,
                                                 sparse_prompt_embeddings=sparse,
                                                 dense_prompt_embeddings=dense,
                                                 multimask_output=False)
                # low: (n, 1, 4g, 4g) over the padded img_size square; crop k reads map k
                low_scale = low.shape[-1] / self.img_size
                rois = torch.cat([torch.arange(len(rgc), device=rgc.device,
                                               dtype=rgc.dtype)[:, None], rgc * low_scale], 1)
                logits_out.append(roi_align(low, rois, self.crop_size, spatial_scale=1.0,
                                            sampling_ratio=2, aligned=True))
                iou_out.append(iou[:, 0])
        if not logits_out:
            c = self.crop_size
            return emb.new_zeros((0, 1, c, c)), emb.new_zeros((0,))
        return torch.cat(logits_out), torch.cat(iou_out)

    def forward(self, images: torch.Tensor, boxes: Sequence[torch.Tensor],
                regions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        emb, scale = self.embed(images)
        return self.decode_embedded(emb, scale, boxes, regions)


def load_sam_weights(sam: nn.Module, path: str) -> dict:
    """Load a SAM variant by name (vit_b, vit_l, vit_h) or a local SAM/CellSAM state_dict file into a
    ``segment_anything`` ``Sam`` module; returns the origin record (name, url, file, sha256).

    Accepts a bare state_dict or one under "model"/"state_dict"; strips the longest key prefix
    before "image_encoder."/"mask_decoder." (e.g. "module.", "sam."). Raises ValueError naming the
    missing/unexpected keys when the architecture does not match (wrong sizes in the config).
    """
    from cellseg.models.pretrained import resolve, sam_source

    state, origin = resolve(path, sam_source)
    prefix = ""
    for k in state:
        for anchor in ("mask_decoder.", "image_encoder.", "prompt_encoder."):
            i = k.find(anchor)
            if i > 0:
                prefix = k[:i]
                break
        if prefix:
            break
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or shape_bad:
        raise ValueError(f"SAM checkpoint {path} does not fit the configured architecture: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(shape_bad)} with "
                         f"other shapes (e.g. {shape_bad[:3]}), {len(unexpected)} unexpected; "
                         "set sam.embed_dim/depth/num_heads/global_attn_indexes to the "
                         "checkpoint's variant (SAM_VIT_B/L/H in cellseg.models.promptseg_sam)")
    sam.load_state_dict({k: state[k] for k in own})
    return {**origin, "into": "decoder.sam", "tensors": len(own)}
