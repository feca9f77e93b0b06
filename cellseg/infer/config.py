"""Inference configuration: every default of tiling, TTA, ensembling and postprocessing, once.

    from cellseg.infer.config import load_inference_config
    cfg = load_inference_config("infer_default", ["tile_size=256", "tta=[h,v]"])

Loaded by the one typed loader, ``cellseg.configlib.load_config`` (unknown keys are rejected with
the nearest valid key, also inside a training config's ``val.infer``).
Per-cell-type postprocessing lives in ``types``: a mapping ``cell type name -> TypeThresholds``;
``default`` applies to any type not listed and to images whose type is unknown.

Thresholds live here, once: models emit raw candidates plus their extras (``mask_prob``,
``pred_iou``, ``stability``, ``box_score``) and every filter that ``cellseg tune`` searches (score,
area, NMS, pred_iou, stability, rescoring) is applied by ``cellseg.infer.postprocess`` from this
config. What stays in a model is what makes a candidate at all, not a filter: the mask binarisation
``mask_threshold`` of maskrcnn/promptseg, maskrcnn's ``box_score_thresh`` floor (0.05, the
lowest score ``tune`` tries, so the candidate list stays finite) and the UNet watershed's
fragment floor ``decode.min_area`` (8 px, set here through ``decode``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Mapping

from cellseg.configlib import ConfigError, Range, from_dict, load_config, to_dict

EMPTY_POLICIES = ("best", "placeholder", "allow_empty")
FLIPS = ("h", "v", "hv")


@dataclass(frozen=True)
class TypeThresholds:
    """Postprocessing thresholds of one cell type.

    score_thresh: drop instances scoring below it.
    min_area: drop instances with fewer pixels (checked before AND after overlap removal).
    nms_iou: mask NMS, drop an instance whose mask IoU with a better one exceeds it (1.0: off).
    min_pred_iou, min_stability: drop instances whose ``extra["pred_iou"]`` (a learned IoU head,
        promptseg) or ``extra["stability"]`` (SAM's stability score) fall below; 0 = off, and
        instances without that extra are never dropped by it.
    """

    score_thresh: float = 0.5
    min_area: int = 0
    nms_iou: float = 0.5
    min_pred_iou: float = 0.0
    min_stability: float = 0.0

    # checked at load time by cellseg.configlib (numeric ranges)
    RANGES: ClassVar[dict[str, Range]] = {
        "score_thresh": Range(0, 1), "min_area": Range(0), "nms_iou": Range(0, 1),
        "min_pred_iou": Range(0, 1), "min_stability": Range(0, 1)}


@dataclass(frozen=True)
class InferenceConfig:
    """How to turn an image into non-overlapping instances.

    Tiling (in pixels of the upscaled image): ``tile_size`` int (square) or [h, w], or null (the
    default: least compute, no seams) for one tile holding the whole image padded up to a multiple
    of ``pad_multiple``; set it when the (upscaled) image does not fit memory. ``overlap`` pixels
    shared by neighbouring tiles (should exceed the largest cell for instance families);
    ``scale`` upscales the input (e.g. 2.0), outputs are mapped back to native size.
    ``batch_size`` tiles per forward pass (tiles of several images are batched together).
    ``amp``: torch.autocast float16 on CUDA (ignored on CPU, same code path).
    ``cuda_path_on_cpu``: run the CUDA forward path on CPU too (float16 autocast when ``amp``,
    channels_last input): slow, it exists to test that path on machines without a GPU.
    ``tta``: flips among "h", "v", "hv" added to the identity pass.
    ``model_weights``: one weight per model for ensembling (empty: all 1).
    ``vote_iou``: mask IoU that clusters instances across TTA passes / models for mask voting.
    ``seam_iou`` / ``seam_containment``: two instances from different tiles are the same cell when
    their mask IoU or intersection / smaller area reaches these.
    ``decode``: keyword arguments passed to a dense family's ``decode``.
    ``cell_type_names``: label index -> cell type name (per-type heads; used by the image-level vote).
    ``overlap_drop``: in greedy overlap removal, drop a cell that loses more than this share of its area.
    ``empty_policy`` (an image with no cell left after postprocessing):
      "best": keep the single best-scoring candidate from before thresholds; with no candidate
      at all fall back to "placeholder".
      "placeholder": a 3x3 square at the image centre, score 0 (keeps every image in the CSV).
      "allow_empty": leave the image without cells (the submission writer decides what to write).
    """

    tile_size: int | tuple[int, ...] | None = None
    overlap: int = 96
    scale: float = 1.0
    pad_multiple: int = 32
    batch_size: int = 4
    amp: bool = True
    cuda_path_on_cpu: bool = False
    tta: tuple[str, ...] = ()
    model_weights: tuple[float, ...] = ()
    vote_iou: float = 0.5
    seam_iou: float = 0.3
    seam_containment: float = 0.6
    decode: dict[str, Any] = field(default_factory=dict)
    cell_type_names: tuple[str, ...] = ()
    default: TypeThresholds = field(default_factory=TypeThresholds)
    types: dict[str, TypeThresholds] = field(default_factory=dict)
    overlap_drop: float = 0.5
    fill_holes: bool = True
    rescore: bool = False
    empty_policy: Literal["best", "placeholder", "allow_empty"] = "best"

    # checked at load time by cellseg.configlib (numeric ranges)
    RANGES: ClassVar[dict[str, Range]] = {
        "tile_size": Range(32), "overlap": Range(0), "scale": Range(0, lo_open=True),
        "pad_multiple": Range(1), "batch_size": Range(1), "model_weights": Range(0),
        "vote_iou": Range(0, 1), "seam_iou": Range(0, 1), "seam_containment": Range(0, 1),
        "overlap_drop": Range(0, 1)}

    def __post_init__(self) -> None:
        # the loader types per-type mappings; this covers InferenceConfig(types={...}) in code
        types = {}
        for name, value in dict(self.types).items():
            if isinstance(value, TypeThresholds):
                types[str(name)] = value
            else:
                types[str(name)] = from_dict(TypeThresholds, value, where=f"types.{name}")
        object.__setattr__(self, "types", types)
        ts = self.tile_size
        if isinstance(ts, (list, tuple)):
            if len(ts) != 2:
                raise ConfigError(f"tile_size={list(ts)!r} is not a size", key="tile_size",
                                  fix="give one int or [height, width]")
            object.__setattr__(self, "tile_size", (int(ts[0]), int(ts[1])))
        bad = [f for f in self.tta if f not in FLIPS]
        if bad:
            raise ConfigError(f"tta={list(self.tta)!r}: unknown flip(s) {bad}", key="tta",
                              fix=f"valid flips: {', '.join(FLIPS)}")
        if self.scale <= 0:
            raise ConfigError(f"scale={self.scale} is not positive", key="scale",
                              fix="use e.g. 1.0 (native) or 2.0 (upscale)")
        if self.overlap < 0:
            raise ConfigError(f"overlap={self.overlap} is negative", key="overlap",
                              fix="use 0 or more pixels")
        tile = self.tile_hw
        if tile is not None and min(tile) <= self.overlap:
            raise ConfigError(f"overlap={self.overlap} is not smaller than tile_size={tile}",
                              key="overlap", fix="lower overlap or raise tile_size")

    @property
    def tile_hw(self) -> tuple[int, int] | None:
        """(tile height, tile width) or None (whole image as one tile)."""
        ts = self.tile_size
        if ts is None:
            return None
        if isinstance(ts, tuple):
            return ts  # type: ignore[return-value]
        return (int(ts), int(ts))

    def thresholds_for(self, cell_type: str | None) -> TypeThresholds:
        """The thresholds of ``cell_type`` (``default`` when unknown or not listed)."""
        if cell_type is None:
            return self.default
        return self.types.get(cell_type, self.default)


def load_inference_config(name_or_path: str | os.PathLike | Mapping[str, Any] | InferenceConfig
                          | None = None,
                          overrides: Iterable[str] = ()) -> InferenceConfig:
    """Load a shipped config by name (``infer_default``), a YAML path or a mapping, then apply
    ``a.b=c`` overrides (e.g. ``types.astro.score_thresh=0.4``). None: the dataclass defaults."""
    if isinstance(name_or_path, InferenceConfig):
        return load_config(InferenceConfig, to_dict(name_or_path), overrides)
    # a tuned file may nest everything under "infer" (like a training config's val.infer)
    return load_config(InferenceConfig, name_or_path, overrides, section="infer")
