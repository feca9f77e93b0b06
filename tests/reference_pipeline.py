"""The data pipeline as it was before issue 12 (HEAD 5c35cee), kept verbatim as the reference
the fast pipeline must reproduce (tests/test_pipeline_equality.py). Test-only: never imported by
the package.

Per sample: cut a random window (np.random), decode its instances into full (N, h, w) masks,
warp them through albumentations as label layers, expand back to N masks, drop masks with fewer
than ``min_visible`` pixels, then build the target cell by cell (UNet maps: one EDT per cell;
Mask R-CNN: boxes, labels + 1, full masks).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.data.record import ImageRecord

UNET_CHANNELS = ("cell", "border", "centre")

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


def crops_to_layers(crops: Sequence[tuple[Sequence[int], np.ndarray]], shape: tuple[int, int]
                    ) -> np.ndarray:
    """Pack possibly overlapping instances into (K, H, W) uint16 label layers, instance i -> i + 1.

    Instances are placed greedily in the first layer where they overlap nothing, so K is the
    overlap depth (1-3 for real data) instead of N: warping K label layers with nearest-neighbour
    moves every instance intact at a fraction of the cost of N masks.
    crops: ``((x0, y0, x1, y1), bool crop)`` per instance (``cellseg.data.targets.crops_from_masks``).
    """
    if len(crops) >= 65535:
        raise ValueError(f"{len(crops)} instances in one image; at most 65534 are supported")
    layers: list[np.ndarray] = []
    for i, ((x0, y0, x1, y1), m) in enumerate(crops):
        if m.size == 0:
            continue
        for layer in layers:
            view = layer[y0:y1, x0:x1]
            if not view[m].any():
                view[m] = i + 1
                break
        else:
            layer = np.zeros(shape, np.uint16)
            layer[y0:y1, x0:x1][m] = i + 1
            layers.append(layer)
    return np.stack(layers) if layers else np.zeros((0, *shape), np.uint16)


def layers_to_masks(layers: np.ndarray, n: int) -> np.ndarray:
    """(K, H, W) label layers (``crops_to_layers``) -> (n, H, W) bool masks (absent ids empty)."""
    k, h, w = layers.shape
    out = np.zeros((n, h, w), bool)
    for layer in layers:
        ys, xs = np.nonzero(layer)
        out[layer[ys, xs].astype(np.int64) - 1, ys, xs] = True
    return out


def augment_crops(augment: Any, image: np.ndarray,
                  crops: Sequence[tuple[Sequence[int], np.ndarray]], labels: np.ndarray, *,
                  min_visible: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``apply_augment`` for instances given as crops (what the data set holds)."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(labels) != len(crops):
        raise ValueError(f"{len(crops)} instances but {len(labels)} labels")
    image = np.asarray(image)
    layers = crops_to_layers(crops, image.shape[:2])
    if len(layers):
        out = augment(image=image, mask=np.ascontiguousarray(layers.transpose(1, 2, 0)))
        moved = np.asarray(out["mask"])
        if moved.ndim == 2:
            moved = moved[..., None]
        new = layers_to_masks(moved.transpose(2, 0, 1), len(crops))
    else:
        out = augment(image=image)
        new = np.zeros((len(crops), *np.asarray(out["image"]).shape[:2]), bool)
    keep = new.sum(axis=(1, 2)) >= max(int(min_visible), 1)
    return np.asarray(out["image"]), np.ascontiguousarray(new[keep]), labels[keep]


def decode_sparse(record: ImageRecord) -> dict[str, np.ndarray]:
    """Decode a record's RLEs into sparse crops: {"boxes": (N, 4) int32 x0, y0, x1, y1,
    "bits": packed bool crops concatenated in C order, "shape": (2,) int64}. Empty RLEs give
    zero-size boxes. Errors name the image and instance."""
    h, w = record.shape
    boxes = np.zeros((len(record.rles), 4), np.int32)
    crops = []
    for i, r in enumerate(record.rles):
        try:
            idx = rle_codec.indices(r, (h, w))
        except rle_codec.RLEError as err:
            raise rle_codec.RLEError(f"image {record.image_id} ({record.image_path}), instance {i}: "
                                     f"{err}") from None
        if idx.size == 0:
            continue
        ys, xs = np.divmod(idx, w)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.zeros((y1 - y0, x1 - x0), bool)
        crop[ys - y0, xs - x0] = True
        boxes[i] = (x0, y0, x1, y1)
        crops.append(crop.ravel())
    flat = np.concatenate(crops) if crops else np.zeros(0, bool)
    return {"boxes": boxes, "bits": np.packbits(flat), "shape": np.array([h, w], np.int64)}


def sparse_to_crops(sparse: Mapping[str, np.ndarray], window: Sequence[int] | None = None
                    ) -> tuple[list[tuple[tuple[int, int, int, int], np.ndarray]], np.ndarray]:
    """Sparse crops (``decode_sparse``) -> (list of ``((x0, y0, x1, y1), bool crop)``, (M,) int64
    instance indices).

    window: optional ``(x0, y0, x1, y1)``; then only the instances whose box meets it are
        returned, cut to it, in window coordinates (a cut may be empty: callers drop those).
    """
    h, w = (int(v) for v in sparse["shape"])
    boxes = np.asarray(sparse["boxes"]).astype(np.int64)
    sizes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    flat = np.unpackbits(sparse["bits"], count=int(offsets[-1])).astype(bool)
    wx0, wy0, wx1, wy1 = (0, 0, w, h) if window is None else (int(v) for v in window)
    ix0, iy0 = np.maximum(boxes[:, 0], wx0), np.maximum(boxes[:, 1], wy0)
    ix1, iy1 = np.minimum(boxes[:, 2], wx1), np.minimum(boxes[:, 3], wy1)
    index = np.flatnonzero((sizes > 0) & (ix1 > ix0) & (iy1 > iy0)) if window is not None \
        else np.arange(len(boxes))
    crops = []
    for i in index:
        if not sizes[i]:
            crops.append(((0, 0, 0, 0), np.zeros((0, 0), bool)))
            continue
        x0, y0, x1, y1 = boxes[i]
        crop = flat[offsets[i]:offsets[i + 1]].reshape(y1 - y0, x1 - x0)
        crops.append(((int(ix0[i] - wx0), int(iy0[i] - wy0), int(ix1[i] - wx0), int(iy1[i] - wy0)),
                      crop[iy0[i] - y0:iy1[i] - y0, ix0[i] - x0:ix1[i] - x0]))
    return crops, index.astype(np.int64)


def maskrcnn_target(masks: np.ndarray, labels: np.ndarray, min_mask_area: int = 1) -> dict:
    """MaskRCNNFamily.make_target of HEAD 5c35cee, in numpy."""
    crops = crops_from_masks(masks)
    boxes = np.array([b for b, _ in crops], np.float32).reshape(-1, 4)
    areas = np.array([int(c.sum()) for _, c in crops], np.int64)
    keep = areas >= max(min_mask_area, 1)
    return {"boxes": boxes[keep], "labels": np.asarray(labels, np.int64)[keep] + 1,
            "masks": masks[keep].view(np.uint8)}


def load_sample(image: np.ndarray, sparse: dict, labels: np.ndarray, augment: Any,
                window: tuple[int, int] | None, min_visible: int = 1):
    """InstanceDataset.load of HEAD 5c35cee: (image (H, W) uint8, masks (N, H, W) bool, labels)."""
    win = None
    if window is not None:
        h, w = image.shape
        wh, ww = min(window[0], h), min(window[1], w)
        y0 = int(np.random.randint(0, h - wh + 1))
        x0 = int(np.random.randint(0, w - ww + 1))
        win = (x0, y0, x0 + ww, y0 + wh)
        image = image[y0:y0 + wh, x0:x0 + ww]
    crops, inside = sparse_to_crops(sparse, window=win)
    labels = labels[inside]
    if augment is not None:
        return augment_crops(augment, image, crops, labels, min_visible=min_visible)
    masks = np.zeros((len(crops), *image.shape), bool)
    for j, ((x0, y0, x1, y1), m) in enumerate(crops):
        masks[j, y0:y1, x0:x1] = m
    keep = masks.sum(axis=(1, 2)) >= max(min_visible, 1)
    return image, masks[keep], labels[keep]
