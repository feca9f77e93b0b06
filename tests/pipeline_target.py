"""The training target a family gets from the data pipeline, for model tests.

    from pipeline_target import pipeline_target
    target = pipeline_target(get_family("maskrcnn"), masks, labels, **build_args)

Production builds targets in the data set (``InstanceDataset.target``) from the family's
``target_spec``; tests go through the same code instead of a second target builder.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pipeline_target(family: Any, masks: np.ndarray, labels: np.ndarray | None = None,
                    **build_args: Any) -> dict[str, Any]:
    """(N, H, W) bool masks and (N,) int64 class labels (default 0) -> the target dict of torch
    tensors that ``family.collate`` / ``family.loss`` receive for a network of ``build_args``."""
    import torch

    from cellseg.data.datasets import InstanceDataset
    from cellseg.data.targets import layers_from_masks

    masks = np.asarray(masks, dtype=bool)
    labels = (np.zeros(len(masks), np.int64) if labels is None
              else np.asarray(labels, np.int64).reshape(-1))
    dataset = InstanceDataset([], family.target_spec(**build_args))
    target = dataset.target(layers_from_masks(masks), labels, masks.shape[1:])
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in target.items()}
