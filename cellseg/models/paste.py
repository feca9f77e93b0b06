"""Paste fixed-size crop masks back into the image: the ONE paste-back helper of the kit.

    from cellseg.models.paste import paste_masks
    boxes, masks, mean_prob = paste_masks(probs, regions, (520, 704))   # -> Instances fields

A box-conditioned model (promptseg's crop decoder, SAM crops, Mask R-CNN's 28x28 mask head) predicts
each cell's mask on an (S, S) grid that covers a float *region* of the image, ``(x0, y0, x1, y1)``
in continuous pixel coordinates (pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``; its centre is
``(c + 0.5, r + 0.5)``). Crop cell ``(i, j)`` has its centre at
``(x0 + (j + 0.5) * (x1 - x0) / S, y0 + (i + 0.5) * (y1 - y0) / S)``: the convention of
``torchvision.ops.roi_align(..., aligned=True)`` with ``spatial_scale=1``, so crops taken with
``roi_align`` and pasted back here line up to the sub-pixel.

Pasting samples the crop bilinearly at the centre of every image pixel whose centre lies inside the
region (edge values are replicated for the half-cells at the border). The resampling is separable,
``out = Wy @ crop @ Wx.T`` with small interpolation matrices, so it is exact in two cases that tests
pin: a crop at native size on an integer region is copied unchanged, and a crop that is an integer
nearest-neighbour upscale of a mask comes back as that mask.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cellseg.core.instances import tighten


def _interp_matrix(start: float, stop: float, size: int, first: int, count: int) -> np.ndarray:
    """(count, size) float64 bilinear weights: image pixels ``first .. first + count - 1`` along
    one axis sampled from a crop axis of ``size`` cells covering ``[start, stop)``."""
    centres = np.arange(first, first + count, dtype=np.float64) + 0.5
    u = (centres - start) * (size / (stop - start)) - 0.5
    u = np.clip(u, 0.0, size - 1)  # replicate the edge for the outer half cells
    i0 = np.floor(u).astype(np.int64)
    frac = u - i0
    i1 = np.minimum(i0 + 1, size - 1)
    w = np.zeros((count, size), np.float64)
    rows = np.arange(count)
    np.add.at(w, (rows, i0), 1.0 - frac)
    np.add.at(w, (rows, i1), frac)
    return w


def pixel_extent(region: Sequence[float], image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer box ``(x0, y0, x1, y1)`` (exclusive upper bounds, clipped to the image) of the image
    pixels whose centres lie inside the float ``region``; may be empty (x1 <= x0 or y1 <= y0)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    rx0, ry0, rx1, ry1 = (float(v) for v in region)
    x0 = max(0, math.ceil(rx0 - 0.5))
    y0 = max(0, math.ceil(ry0 - 0.5))
    x1 = min(w, math.floor(rx1 - 0.5) + 1)
    y1 = min(h, math.floor(ry1 - 0.5) + 1)
    return x0, y0, max(x0, x1), max(y0, y1)


def paste_crop(crop: np.ndarray, region: Sequence[float],
               image_shape: tuple[int, int]) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Resample one crop at the image pixels its region covers.

    crop: (S_h, S_w) float array (probabilities or logits) covering ``region``.
    Returns ``(box, values)``: the integer box from ``pixel_extent`` and a float32 array of shape
    ``(y1 - y0, x1 - x0)`` with the bilinearly sampled crop values there.
    """
    crop = np.asarray(crop, dtype=np.float64)
    if crop.ndim != 2 or min(crop.shape) < 1:
        raise ValueError(f"crop must be a non-empty 2-D array, got shape {crop.shape}")
    rx0, ry0, rx1, ry1 = (float(v) for v in region)
    if not (rx1 > rx0 and ry1 > ry0) or not all(map(math.isfinite, (rx0, ry0, rx1, ry1))):
        raise ValueError(f"region {tuple(region)} must be finite with x1 > x0 and y1 > y0")
    x0, y0, x1, y1 = pixel_extent(region, image_shape)
    if x1 <= x0 or y1 <= y0:
        return (x0, y0, x1, y1), np.zeros((y1 - y0, x1 - x0), np.float32)
    wy = _interp_matrix(ry0, ry1, crop.shape[0], y0, y1 - y0)
    wx = _interp_matrix(rx0, rx1, crop.shape[1], x0, x1 - x0)
    return (x0, y0, x1, y1), (wy @ crop @ wx.T).astype(np.float32)


def paste_masks(probs: np.ndarray | Sequence[np.ndarray], regions: np.ndarray,
                image_shape: tuple[int, int], threshold: float = 0.5, *,
                tight: bool = True) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Paste N crop probability maps into ``Instances``-style boxes and crop masks.

    probs: (N, S, S) float probabilities in [0, 1] (or a list of 2-D arrays).
    regions: (N, 4) float regions the crops cover (see module docstring).
    threshold: a pixel belongs to the mask when its pasted probability is > threshold.
    tight: shrink each box to the bounding box of its mask (an empty mask gets the zero-size box
        (0, 0, 0, 0), as ``Instances.from_dense`` does); otherwise keep the region's pixel extent.
    Returns ``(boxes (N, 4) int32, masks: N bool arrays of shape (y1 - y0, x1 - x0),
    mean_prob (N,) float32)``; mean_prob is the mean pasted probability over the mask's pixels
    (0 for an empty mask), the 1st-place rescoring term.
    """
    regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
    if len(probs) != len(regions):
        raise ValueError(f"paste_masks got {len(probs)} crops for {len(regions)} regions")
    boxes = np.zeros((len(regions), 4), np.int32)
    masks: list[np.ndarray] = []
    mean_prob = np.zeros(len(regions), np.float32)
    for i, (crop, region) in enumerate(zip(probs, regions)):
        (x0, y0, x1, y1), values = paste_crop(crop, region, image_shape)
        mask = values > threshold
        if mask.any():
            mean_prob[i] = float(values[mask].mean())
        if tight:
            shrunk = tighten((x0, y0, x1, y1), mask)
            if shrunk is None:
                boxes[i] = 0
                masks.append(np.zeros((0, 0), bool))
                continue
            (x0, y0, x1, y1), mask = shrunk
        boxes[i] = (x0, y0, x1, y1)
        masks.append(np.ascontiguousarray(mask))
    return boxes, masks, mean_prob
