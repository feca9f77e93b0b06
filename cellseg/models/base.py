"""The contract every model family fulfils, written once.

A *family* (``"unet"``, ``"maskrcnn"``, ``"promptseg"``) bundles what training and inference need
to know about one kind of model. Families are plain objects in the dict
``cellseg.models.FAMILIES``; ``get_family(name)`` raises a KeyError listing the valid names.

What every family provides (``ModelFamily``), and what each kind adds:

- ``args_type``: the frozen dataclass of its build arguments (``cellseg.models.args``), declared
  once. ``build(args)`` and ``target_spec(args)`` take one (or a mapping / keyword arguments of
  its fields, typed through it); the config loader types ``model.args`` with it.
- ``build`` returns the network with ``model.spec``, a frozen ``ModelSpec`` (family, the build
  arguments without weight files, norm, class map, output names), set by ``attach_spec``.
  Checkpoints store ``spec.to_dict()`` under ``"spec"`` and
  ``cellseg.models.load_model`` rebuilds from it.
- ``target_spec`` tells the data pipeline which training target to build
  (``cellseg.data.targets.TargetSpec``); data-loader workers build it from the augmented image
  and its instances, so the main process never decodes masks.
- Input images are 8-bit grayscale (H, W). ``preprocess`` turns a batch of them into the float
  tensor the network eats, (B, C, H, W) float32, using ``model.spec.norm`` (``mean``, ``std`` on
  the 0-255 scale, ``in_channels``), so a checkpoint alone is enough to predict.
- ``kind == "dense"`` (``DenseFamily``): the network predicts per-pixel maps; inference stitches
  tiles of ``predict_dense`` output and calls ``decode`` ONCE on the stitched (K, H, W) map.
  ``kind == "instances"`` (``InstanceFamily``): the network predicts instances per tile
  (``predict_instances``) and inference merges them across seams.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence, TypeVar

import numpy as np

from cellseg.core.instances import Instances

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cellseg.data.targets import TargetSpec
    from cellseg.models.args import BuildArgs


class ModelFamily(Protocol):
    """What training and inference call on every family."""

    name: str
    kind: Literal["dense", "instances"]
    args_type: type["BuildArgs"]

    def build(self, args: "BuildArgs | Mapping[str, Any] | None" = None, /,
              **kwargs: Any) -> "torch.nn.Module":
        """The network from its build arguments, ``model.spec`` attached (never downloads
        weights: pretrained names resolve through the local caches)."""

    def target_spec(self, args: "BuildArgs | Mapping[str, Any] | None" = None, /,
                    **kwargs: Any) -> "TargetSpec":
        """The training target the data pipeline builds for a network of these arguments."""

    def preprocess(self, model: "torch.nn.Module", images: np.ndarray) -> "torch.Tensor":
        """(B, H, W) uint8 -> (B, C, H, W) float32 tensor on the model's device."""

    def collate(self, samples: Sequence[tuple["torch.Tensor", dict]]) -> tuple[Any, Any]:
        """Stack (image (C, H, W) float32, target) samples into a batch for ``loss``."""

    def loss(self, model: "torch.nn.Module", images: Any, targets: Any
             ) -> dict[str, "torch.Tensor"]:
        """Training losses; key ``"loss"`` is the total that is back-propagated."""


class DenseFamily(ModelFamily, Protocol):
    """``kind == "dense"``: per-pixel maps, decoded once per stitched image."""

    def predict_dense(self, model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
        """(B, C, H, W) preprocessed -> (B, K, H, W) float32 maps in [0, 1]."""

    def decode(self, dense: np.ndarray, **params: Any) -> Instances:
        """(K, H, W) float32 stitched maps -> instances of one image (pure numpy)."""


class InstanceFamily(ModelFamily, Protocol):
    """``kind == "instances"``: instances per tile."""

    def predict_instances(self, model: "torch.nn.Module", images: "torch.Tensor"
                          ) -> list[Instances]:
        """(B, C, H, W) preprocessed -> one ``Instances`` per image (before postprocessing)."""


def _plain(obj: Any) -> Any:
    """A deep copy made of plain dicts / lists / tuples (what a checkpoint may hold)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return copy.deepcopy(obj)


@dataclass(frozen=True)
class ModelSpec:
    """What a built network is: everything that rebuilds it and feeds it, apart from its weights.

    family: the family name (``cellseg.models.FAMILIES``).
    args: the family's build arguments (its ``args_type``) as plain types, which rebuild the
        architecture WITHOUT any weight file (weight names/files set to None;
        ``pretrained_origin`` records where they came from).
    norm: ``{"mean": [C floats], "std": [C floats], "in_channels": C}`` on the 0-255 scale, used by
        ``preprocess`` and the data set.
    class_map: cell type -> class index of a per-cell-type head; None when class-agnostic.
    outputs: names of the dense output maps (``("cell", "border", "centre")``); () for instance
        families.

    The mapping fields are private deep copies; treat them as read-only (``dataclasses.replace``
    makes a changed spec). Saved in checkpoints as ``to_dict()`` under ``"spec"``.
    """

    family: str
    args: dict[str, Any] = field(default_factory=dict)
    norm: dict[str, Any] = field(default_factory=dict)
    class_map: dict[str, int] | None = None
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # copies, so the caller's dicts (a config, another model's spec) never alias this one
        object.__setattr__(self, "args", _plain(dict(self.args)))
        object.__setattr__(self, "norm", _plain(dict(self.norm)))
        if self.class_map is not None:
            object.__setattr__(self, "class_map", {str(k): int(v) for k, v in self.class_map.items()})
        object.__setattr__(self, "outputs", tuple(str(o) for o in self.outputs))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``torch.load(weights_only=True)`` accepts it)."""
        return {"family": self.family, "args": _plain(self.args), "norm": _plain(self.norm),
                "class_map": dict(self.class_map) if self.class_map is not None else None,
                "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        """Inverse of ``to_dict``; unknown keys are a ValueError naming the valid ones."""
        known = {"family", "args", "norm", "class_map", "outputs"}
        unknown = sorted(set(data) - known)
        if unknown or "family" not in data:
            raise ValueError(f"model spec keys {sorted(data)}: needs 'family', valid keys "
                             f"{sorted(known)}")
        return cls(family=str(data["family"]), args=data.get("args") or {},
                   norm=data.get("norm") or {}, class_map=data.get("class_map"),
                   outputs=tuple(data.get("outputs") or ()))


M = TypeVar("M")


def attach_spec(model: M, spec: ModelSpec) -> M:
    """Set ``model.spec`` (the one place a family's ``build`` records what it built); returns
    the model."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"attach_spec needs a ModelSpec, got {type(spec).__name__}")
    model.spec = spec  # type: ignore[attr-defined]  (nn.Module keeps plain attributes in __dict__)
    return model
