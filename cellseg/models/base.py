"""The contract every model family fulfils, written once.

A *family* (``"unet"``, ``"maskrcnn"``, ``"promptseg"``) bundles what training and inference need
to know about one kind of model. Families are plain objects in the dict
``cellseg.models.FAMILIES``; ``get_family(name)`` raises a KeyError listing the valid names.

Conventions shared by all families:
- Input images are 8-bit grayscale (H, W). ``preprocess`` turns a batch of them into the float
  tensor the network eats, (B, C, H, W) float32, using the normalisation stored on the model
  (``model.cellseg_norm``: dict with ``mean``, ``std`` (0-255 scale) and ``in_channels``), so a
  checkpoint alone is enough to predict.
- Targets are built in data-loader workers by ``make_target`` from the augmented image and its
  instance masks, so the main process never decodes masks.
- ``kind == "dense"``: the network predicts per-pixel maps; inference stitches tiles of
  ``predict_dense`` output and calls ``decode`` ONCE on the stitched (K, H, W) map.
  ``kind == "instances"``: the network predicts instances per tile (``predict_instances``) and
  inference merges them across seams.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence

import numpy as np

from cellseg.core.instances import Instances


class ModelFamily(Protocol):
    name: str
    kind: Literal["dense", "instances"]

    def build(self, **kwargs: Any) -> "torch.nn.Module":  # noqa: F821
        """Build the network from explicit keyword arguments (never downloads weights)."""

    def preprocess(self, model: "torch.nn.Module", images: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(B, H, W) uint8 -> (B, C, H, W) float32 tensor on the model's device."""

    def make_target(self, masks: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Training target of one image from (N, H, W) bool masks and (N,) int64 class labels."""

    def collate(self, samples: Sequence[tuple["torch.Tensor", dict]]) -> tuple[Any, Any]:  # noqa: F821
        """Stack (image (C, H, W) float32, target) samples into a batch for ``loss``."""

    def loss(self, model: "torch.nn.Module", images: Any, targets: Any) -> dict[str, "torch.Tensor"]:  # noqa: F821
        """Training losses; key ``"loss"`` is the total that is back-propagated."""

    # dense families
    def predict_dense(self, model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """(B, C, H, W) preprocessed -> (B, K, H, W) float32 maps in [0, 1]."""

    def decode(self, dense: np.ndarray, **params: Any) -> Instances:
        """(K, H, W) float32 stitched maps -> instances of one image (pure numpy)."""

    # instance families
    def predict_instances(self, model: "torch.nn.Module", images: "torch.Tensor") -> list[Instances]:  # noqa: F821
        """(B, C, H, W) preprocessed -> one ``Instances`` per image (before postprocessing)."""
