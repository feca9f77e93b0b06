"""UNet maps -> instances: marker-controlled watershed, pure numpy.

    from cellseg.models.unet_decode import decode_unet
    inst = decode_unet(maps)          # maps: (3, H, W) float32 "cell", "border", "centre" in [0, 1]

Steps (map definitions in ``cellseg.data.targets``):
1. ``fg = cell > fg_thresh``; ``core = fg & (border <= border_thresh)``.
2. Markers: 8-connected components of ``core & (centre > seed_thresh)`` with at least
   ``min_marker_area`` pixels. The border channel cuts touching cells apart; the centre channel keeps
   necks and thin contacts the border missed from merging two cells.
3. ``skimage.segmentation.watershed`` on elevation ``1 - centre + border`` inside ``fg``
   (8-connectivity). Core pixels (elevation < 1) flood before any border pixel (elevation >= 1), so a
   border pixel is claimed by the first core next to it: its own cell when the maps are perfect.
4. Instances smaller than ``min_area`` are dropped. Score = mean ``cell`` probability over the
   instance (also ``extra["mask_prob"]``); ``extra["centre_max"]`` = peak centre value.

Exactness (pinned by tests): decoding ``unet_maps_from_labels(labels)`` with the default
thresholds returns exactly the partition of a non-overlapping label image whose cells each have an
8-connected core and whose every pixel touches that core. A cell that is a union of 3x3 squares
(unchanged by a 3x3 binary opening) always meets the second condition: the centre of a 3x3 square
inside the cell sees only its own cell, so it is core. Sharp one-pixel wedge tips in contact with
another cell do not, and no decoder can tell from the maps which side such a pixel belongs to.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cellseg.data.targets import UNET_CHANNELS
from cellseg.core.instances import Instances


# what ``cellseg tune --decode`` searches (coordinate ascent, one value at a time) for the
# keyword arguments of ``decode_unet`` (``InferenceConfig.decode``)
DECODE_GRID: dict[str, tuple[float, ...]] = {
    "seed_thresh": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "fg_thresh": (0.3, 0.4, 0.5, 0.6, 0.7),
    "border_thresh": (0.3, 0.4, 0.5, 0.6, 0.7),
    "min_marker_area": (2, 4, 8, 16, 32),
}


def decode_unet(maps: np.ndarray, *, channels: Sequence[str] = UNET_CHANNELS, fg_thresh: float = 0.5,
                border_thresh: float = 0.5, seed_thresh: float = 0.3, min_marker_area: int = 8,
                min_area: int = 8) -> Instances:
    """Decode (K, H, W) float maps in [0, 1] (names in ``channels``) into one image's instances.

    ``channels`` must contain "cell"; "border" and "centre" are optional (missing border = none,
    missing centre = normalised distance transform of the core). Labels are all 0 (one class).
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    maps = np.asarray(maps, dtype=np.float32)
    channels = list(channels)
    if maps.ndim != 3 or maps.shape[0] != len(channels):
        raise ValueError(f"maps must be (K={len(channels)}, H, W) for channels {channels}, "
                         f"got shape {maps.shape}")
    if "cell" not in channels:
        raise ValueError(f"decode_unet needs a 'cell' channel, got channels {channels}")
    if not np.isfinite(maps).all():
        raise ValueError("decode_unet got non-finite values in the maps (NaN/inf network output?)")
    cell = maps[channels.index("cell")]
    border = maps[channels.index("border")] if "border" in channels else np.zeros_like(cell)
    fg = cell > fg_thresh
    core = fg & (border <= border_thresh)
    if "centre" in channels:
        centre = maps[channels.index("centre")]
    else:
        centre = ndimage.distance_transform_edt(core).astype(np.float32)
        centre /= max(float(centre.max()), 1.0)

    eight = np.ones((3, 3), bool)
    markers, n_markers = ndimage.label(core & (centre > seed_thresh), structure=eight)
    if n_markers and min_marker_area > 1:
        sizes = np.bincount(markers.ravel(), minlength=n_markers + 1)
        small = sizes < min_marker_area
        small[0] = False
        markers[small[markers]] = 0
    if not markers.any():
        return Instances(cell.shape)

    elevation = 1.0 - centre + border
    labels = watershed(elevation, markers, connectivity=2, mask=fg)

    ids = np.unique(labels[labels > 0])
    areas = ndimage.sum_labels(np.ones_like(cell), labels, ids)
    keep = areas >= max(int(min_area), 1)
    if not keep.all():
        drop = np.zeros(int(labels.max()) + 1, bool)
        drop[ids[~keep]] = True
        labels[drop[labels]] = 0
        ids = ids[keep]
    if ids.size == 0:
        return Instances(cell.shape)
    mean_prob = np.asarray(ndimage.mean(cell, labels, ids), np.float32)
    centre_max = np.asarray(ndimage.maximum(centre, labels, ids), np.float32)
    inst = Instances.from_label_image(labels, scores=mean_prob)
    inst.extra["mask_prob"] = mean_prob.copy()
    inst.extra["centre_max"] = centre_max
    return inst
