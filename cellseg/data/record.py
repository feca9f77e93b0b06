"""The one per-image record every loader returns.

Instances are stored as competition RLE strings (row-major, 1-indexed; see ``cellseg.core.rle``):
compact, picklable for data-loader workers, and exactly what the metric and submission need.
Masks may overlap (competition training masks do); ``label_image`` resolves overlaps
deterministically, ``masks`` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cellseg.core import rle as rle_codec
from cellseg.core.masks import decode_labels


@dataclass(frozen=True)
class ImageRecord:
    """One image and its (possibly empty) instance annotations.

    Attributes:
        image_id: competition id (12 hex chars) or LIVECell file stem.
        image_path: the image file (PNG or TIFF).
        height, width: image size in pixels (520, 704 for both data sets).
        cell_type: e.g. ``"shsy5y"``, ``"astro"``, ``"cort"`` (competition) or ``"A172"`` (LIVECell);
            None when unknown (test images).
        source: ``"sartorius"``, ``"livecell"`` or ``"synthetic"``.
        sample_id: competition ``sample_id`` (the grouping key for folds); None elsewhere.
        rles: one competition RLE per instance, may overlap.
        ignore_rles: regions left out of the training loss (their pixels that no instance
            covers): cells a pseudo-labelling teacher found but was not sure of, which would
            otherwise be taught as background. Empty for annotated data.
        meta: any further columns (plate_time, elapsed_timedelta, LIVECell image id, ...).
    """

    image_id: str
    image_path: Path
    height: int
    width: int
    cell_type: str | None = None
    source: str = "sartorius"
    sample_id: str | None = None
    rles: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    ignore_rles: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def n_instances(self) -> int:
        return len(self.rles)

    def label_image(self) -> np.ndarray:
        """(H, W) int32 label image, instance i -> i + 1; overlaps go to the later instance."""
        return decode_labels(self.rles, self.shape)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool stack of instance masks, overlaps kept (costs N*H*W bytes)."""
        out = np.zeros((len(self.rles), self.height, self.width), dtype=bool)
        for i, r in enumerate(self.rles):
            out[i] = rle_codec.decode(r, self.shape)
        return out

    def read_image(self) -> np.ndarray:
        """(H, W) uint8 grayscale image."""
        from cellseg.io import read_gray

        img = read_gray(self.image_path)
        if img.shape != self.shape:
            raise ValueError(f"image {self.image_path} is {img.shape[0]}x{img.shape[1]} (HxW), "
                             f"the annotations expect {self.height}x{self.width}")
        return img
