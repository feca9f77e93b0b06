"""Dense training targets for the UNet family, as pure numpy functions.

Three maps separate touching cells (``UNET_CHANNELS``):

- ``"cell"``:   foreground, the union of all instance masks.
- ``"border"``: cell pixels within ``width`` pixels (Chebyshev distance, 8-neighbourhood) of a pixel of
  ANOTHER cell, plus pixels covered by two or more masks (competition masks overlap on purpose).
  Free cell edges (cell next to background) are not borders: the foreground map already has them.
- ``"centre"``: per-instance Euclidean distance to the instance's own outline (the image edge counts
  as outline), divided by the instance's maximum, so every cell peaks at 1 whatever its size; where
  masks overlap the larger value wins.

Why these definitions (``cellseg.models.unet_decode`` relies on them): with ``width=1`` a pixel of
cell A that touches cell B is a border pixel, and so is its neighbour in B. Hence the *core*
``cell & ~border`` of two different cells is never 8-adjacent, every core pixel has centre > 0, and
every border pixel of a compact cell touches its own core. A watershed that floods the cores first
(elevation ``1 - centre + border``) therefore gives every border pixel back to its own cell, and the
decoder recovers a non-overlapping label image exactly from its perfect maps (tested).

    >>> import numpy as np
    >>> lab = np.zeros((1, 6), np.int32); lab[0, 1:3] = 1; lab[0, 3:5] = 2
    >>> unet_maps_from_labels(lab)[1].astype(int).tolist()   # border channel
    [[0, 0, 1, 1, 0, 0]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

UNET_CHANNELS: tuple[str, ...] = ("cell", "border", "centre")


def crops_from_masks(masks: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(N, H, W) bool masks -> N ``((x0, y0, x1, y1), crop bool (y1-y0, x1-x0))``; empty masks are
    returned with a zero-size box."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    out = []
    rows_any = masks.any(axis=2)  # (N, H)
    cols_any = masks.any(axis=1)  # (N, W)
    for i in range(masks.shape[0]):
        ys = np.flatnonzero(rows_any[i])
        xs = np.flatnonzero(cols_any[i])
        if ys.size == 0:
            out.append(((0, 0, 0, 0), np.zeros((0, 0), bool)))
            continue
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        out.append(((int(x0), int(y0), int(x1), int(y1)), masks[i, y0:y1, x0:x1]))
    return out


def crops_from_labels(labels: np.ndarray) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(H, W) integer label image (0 = background) -> one crop per distinct label, ascending."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return []
    slices = ndimage.find_objects(labels.astype(np.int64), max_label=int(ids[-1]))
    out = []
    for k in ids:
        ys, xs = slices[int(k) - 1]
        out.append(((xs.start, ys.start, xs.stop, ys.stop), labels[ys, xs] == k))
    return out


def _label_and_count(crops, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) int32 label image (instance i -> i + 1, later wins) and (H, W) uint8 cover count."""
    lab = np.zeros(shape, np.int32)
    count = np.zeros(shape, np.uint8)
    for i, ((x0, y0, x1, y1), m) in enumerate(crops):
        if m.size == 0:
            continue
        lab[y0:y1, x0:x1][m] = i + 1
        c = count[y0:y1, x0:x1]
        c[m] = np.minimum(c[m], 254) + 1
    return lab, count


def contact_border(labels: np.ndarray, count: np.ndarray | None = None, width: int = 1) -> np.ndarray:
    """(H, W) bool: labelled pixels within ``width`` px (8-neighbourhood) of a different label,
    plus pixels whose cover ``count`` is >= 2 (overlaps)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    if width < 1:
        raise ValueError(f"border width must be >= 1, got {width}")
    size = 2 * int(width) + 1
    fg = labels > 0
    lab = labels.astype(np.int64)
    big = int(lab.max()) + 1  # stands in for +inf (scipy casts cval through float)
    # neighbours with another label: the max over the window exceeds the pixel's label, or the min
    # over the window (background set to +inf) falls below it
    hi = ndimage.maximum_filter(lab, size=size, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(fg, lab, big), size=size, mode="constant", cval=big)
    border = fg & ((hi != lab) | (lo != lab))
    if count is not None:
        border |= np.asarray(count) >= 2
    return border


def centre_map(crops, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: per-instance distance to the own outline / its maximum (0 outside cells)."""
    from scipy import ndimage

    out = np.zeros(shape, np.float32)
    for (x0, y0, x1, y1), m in crops:
        if m.size == 0 or not m.any():
            continue
        # pad by one so that the crop edge (and the image edge) counts as outline
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1].astype(np.float32)
        d /= d.max()
        view = out[y0:y1, x0:x1]
        np.maximum(view, np.where(m, d, 0.0), out=view)
    return out


def unet_maps_from_crops(crops, shape: tuple[int, int], channels: Sequence[str] = UNET_CHANNELS,
                         border_width: int = 1) -> np.ndarray:
    """(K, H, W) float32 maps in [0, 1], one per name in ``channels`` (see module docstring)."""
    unknown = [c for c in channels if c not in UNET_CHANNELS]
    if unknown:
        raise ValueError(f"unknown UNet target channel(s) {unknown}; valid: {list(UNET_CHANNELS)}")
    shape = (int(shape[0]), int(shape[1]))
    lab, count = _label_and_count(crops, shape)
    maps = np.zeros((len(channels), *shape), np.float32)
    for k, name in enumerate(channels):
        if name == "cell":
            maps[k] = count > 0
        elif name == "border":
            maps[k] = contact_border(lab, count, border_width)
        else:
            maps[k] = centre_map(crops, shape)
    return maps


def unet_maps(masks: np.ndarray, channels: Sequence[str] = UNET_CHANNELS,
              border_width: int = 1) -> np.ndarray:
    """(N, H, W) bool instance masks (may overlap) -> (K, H, W) float32 target maps."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    return unet_maps_from_crops(crops_from_masks(masks), masks.shape[1:], channels, border_width)


def unet_maps_from_labels(labels: np.ndarray, channels: Sequence[str] = UNET_CHANNELS,
                          border_width: int = 1) -> np.ndarray:
    """(H, W) non-overlapping label image -> (K, H, W) float32 target maps."""
    labels = np.asarray(labels)
    return unet_maps_from_crops(crops_from_labels(labels), labels.shape, channels, border_width)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 boxes ``x0, y0, x1, y1`` with exclusive upper bounds
    (the continuous pixel extent); an empty mask gives (0, 0, 0, 0)."""
    crops = crops_from_masks(masks)
    return np.array([b for b, _ in crops], np.float32).reshape(-1, 4)
