"""The light crop decoder of the promptseg family (the SAM-architecture one is promptseg_sam.py).

``torchvision.ops.roi_align`` cuts an (S, S) crop of the image around every prompt box (all boxes
of a batch in one call), a binary channel marks the box inside its crop, and a small UNet predicts
the cell's mask logits (plus optionally its neighbours') and a predicted IoU per crop.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score of mask logits (..., H, W) -> (...): the IoU of the masks thresholded
    at ``threshold + offset`` and ``threshold - offset``, i.e. |logits > t+o| / |logits > t-o|
    (the first mask is inside the second). 0 where even the loose mask is empty."""
    strict = (logits > threshold + offset).flatten(-2).sum(-1).float()
    loose = (logits > threshold - offset).flatten(-2).sum(-1).float()
    return torch.where(loose > 0, strict / loose.clamp(min=1), torch.zeros_like(loose))


def _block(cin: int, cout: int) -> nn.Sequential:
    g = min(8, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(g, cout),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.GroupNorm(g, cout), nn.ReLU(inplace=True))


class CropDecoder(nn.Module):
    """UNet on (S, S) ``roi_align`` crops of the image around each prompt box.

    Input per crop: the C image channels plus a binary channel marking the prompt box inside the
    region (so any region policy works). Outputs ``out_channels`` logits maps (1: the cell,
    2: the cell and the union of its neighbours) and a predicted IoU (an MLP on pooled features,
    statistics of the mask logits and the region size). ``crop_size`` must be divisible by
    2 ** levels. Interface: see ``promptseg_sam``.
    """

    def __init__(self, *, in_channels: int = 1, crop_size: int = 128, base_channels: int = 32,
                 levels: int = 3, out_channels: int = 2) -> None:
        super().__init__()
        if crop_size % (2 ** levels):
            raise ValueError(f"crop_size={crop_size} must be divisible by 2**levels={2 ** levels}")
        self.crop_size = int(crop_size)
        chans = [base_channels * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList([_block(in_channels + 1, chans[0])] +
                                  [_block(chans[i], chans[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                 for i in reversed(range(levels))])
        self.fuse = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        # IoU head input: pooled bottleneck and output features, output features pooled inside
        # the predicted mask, 4 statistics of the mask logits (how sure the mask is) and the
        # region's log size in pixels (pixel quantisation costs small cells IoU)
        self.iou_head = nn.Sequential(nn.Linear(chans[-1] + 2 * chans[0] + 6, 128),
                                      nn.ReLU(inplace=True), nn.Linear(128, 64),
                                      nn.ReLU(inplace=True), nn.Linear(64, 1))

    def box_channel(self, boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) float: 1 where the crop cell centre lies inside the prompt box."""
        s = self.crop_size
        t = (torch.arange(s, device=boxes.device, dtype=torch.float32) + 0.5) / s
        size = (regions[:, 2:] - regions[:, :2]).clamp(min=1e-6)
        xs = regions[:, 0:1] + t[None] * size[:, 0:1]  # (N, S) pixel x of crop columns
        ys = regions[:, 1:2] + t[None] * size[:, 1:2]
        inx = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])
        iny = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])
        return (iny[:, :, None] & inx[:, None, :]).float()[:, None]

    def forward(self, images: torch.Tensor, boxes: Sequence[torch.Tensor],
                regions: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.ops import roi_align

        s = self.crop_size
        bx, rg = torch.cat(list(boxes)).float(), torch.cat(list(regions)).float()
        if len(rg) == 0:
            return images.new_zeros((0, self.head.out_channels, s, s)), images.new_zeros((0,))
        idx = torch.cat([torch.full((len(r),), i, dtype=torch.float32, device=rg.device)
                         for i, r in enumerate(regions)])
        crops = roi_align(images.float(), torch.cat([idx[:, None], rg], 1), s, spatial_scale=1.0,
                          sampling_ratio=2, aligned=True)
        x = torch.cat([crops, self.box_channel(bx, rg)], 1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        bottleneck = x
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1])):
            x = fuse(torch.cat([up(x), skip], 1))
        logits = self.head(x)
        with torch.no_grad():  # the IoU head judges the mask; it must not reshape it
            cell = logits[:, 0].float()
            prob = cell.sigmoid()
            area = prob.flatten(1).mean(1, keepdim=True)
            stats = torch.cat([area, (4 * prob * (1 - prob)).flatten(1).mean(1, keepdim=True),
                               stability_score(cell)[:, None],
                               cell.abs().clamp(max=10).flatten(1).mean(1, keepdim=True) / 10,
                               torch.log((rg[:, 2:] - rg[:, :2]).clamp(min=1)) / 5], 1)
            weight = prob[:, None] / (prob.flatten(1).sum(1)[:, None, None, None] + 1e-3)
        inside = (x * weight.to(x.dtype)).sum((2, 3))
        pooled = torch.cat([bottleneck.mean((2, 3)), x.mean((2, 3)), inside,
                            stats.to(x.dtype)], 1)
        return logits, self.iou_head(pooled)[:, 0]
