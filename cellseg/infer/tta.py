"""Flip test-time augmentation: flip a batch, un-flip what the model predicts.

Flips: "" (identity), "h" (left-right, last axis), "v" (up-down, second-to-last axis), "hv".
Dense outputs are averaged after un-flipping (``cellseg.infer.predict``); instance outputs are
un-flipped here and merged by mask voting (``cellseg.infer.merge.vote``).

Dense maps are assumed to be flip-equivariant per channel (probabilities, distances): a family
whose channels are signed vector fields (e.g. cellpose-style flows) would also need their sign
flipped, which no family of the kit has.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cellseg.core.instances import Instances

_AXES = {"": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}


def passes(tta: Sequence[str]) -> list[str]:
    """Identity first, then the configured flips (duplicates removed, order kept)."""
    out = [""]
    for f in tta:
        if f not in _AXES:
            raise ValueError(f"unknown flip {f!r}; valid: h, v, hv")
        if f not in out:
            out.append(f)
    return out


def flip(x: Any, how: str) -> Any:
    """Flip a torch tensor or numpy array over its last two axes ("" returns it unchanged).
    Flips are involutions, so the same call un-flips."""
    axes = _AXES[how]
    if not axes:
        return x
    if isinstance(x, np.ndarray):
        return np.flip(x, axis=axes)
    return x.flip(dims=axes)


def unflip_instances(inst: Instances, how: str) -> Instances:
    """Map instances predicted on a flipped image of shape ``inst.image_shape`` back."""
    axes = _AXES[how]
    if not axes or len(inst) == 0:
        return inst
    h, w = inst.image_shape
    boxes = inst.boxes.copy()
    masks = list(inst.masks)
    if -1 in axes:
        boxes[:, [0, 2]] = w - inst.boxes[:, [2, 0]]
        masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
    if -2 in axes:
        boxes[:, [1, 3]] = h - inst.boxes[:, [3, 1]]
        masks = [np.ascontiguousarray(m[::-1, :]) for m in masks]
    return Instances(inst.image_shape, boxes, masks, inst.scores, inst.labels, dict(inst.extra))
