"""Inference configuration: every default of tiling, TTA, ensembling and postprocessing, once.

    from cellseg.infer.config import load_inference_config
    cfg = load_inference_config()                          # the kit's defaults
    cfg = load_inference_config("tuned.yaml", ["tile_size=256", "tta=[h,v]"])

The field defaults of ``InferenceConfig`` below ARE the kit's inference defaults: what ``cellseg
predict``, training validation, ``tune``, ``cv``, ``pseudo-label`` and the Kaggle kernel use when
no config is given; no file or caller repeats them (``cellseg/configs/infer_default.yaml`` is
empty and stays a valid name for them). ``load_inference_config`` is how every caller gets a
config: a YAML file replaces the top-level keys it names and keeps the defaults of the others;
``a.b=c`` overrides then edit inside them (``types.astro.min_area=80`` keeps the other types).
Typed by the one loader, ``cellseg.configlib`` (unknown keys are rejected with the nearest valid
key, also inside a training config's ``val.infer``).
Per-cell-type postprocessing lives in ``types``: a mapping ``cell type name -> TypeThresholds``
(default: minimum areas for the competition's three types); ``default`` applies to any type not
listed and to images whose type is unknown (``cellseg.infer.celltype`` decides an image's type).

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

from cellseg.configlib import (ConfigError, Range, blame, from_dict, load_config,
                               read_config_source, to_dict)

FLIPS = ("h", "v", "hv")


def _default_decode() -> dict[str, Any]:
    # UNet decode: seeds are centre > 0.7 (decode_unet's own default, 0.3, is exact on perfect
    # maps). A trained network's centre map is softer than its target: at 0.3 the valleys
    # between touching cells stay above the threshold and whole colonies merge. Measured (issue
    # 13): 2-fold CV on the 6 real images, 80 steps, 0.043 -> 0.087 (seed 0.3 -> 0.7); a
    # 1,500-step model tuned on its training images chose 0.7 too (hidden images 0.180 ->
    # 0.190). Cost on perfect target maps: 0.965 -> 0.949.
    return {"seed_thresh": 0.7}


def _default_types() -> dict[str, "TypeThresholds"]:
    # per-type minimum areas in the spirit of the winners' settings; `cellseg tune` rewrites
    # them. They apply when an image's type is known (``cellseg.infer.celltype``).
    return {"shsy5y": TypeThresholds(min_area=40), "astro": TypeThresholds(min_area=120),
            "cort": TypeThresholds(min_area=60)}


@dataclass(frozen=True)
class TypeThresholds:
    """Postprocessing thresholds of one cell type.

    score_thresh: drop instances scoring below it.
    min_area: drop instances with fewer pixels (checked before AND after overlap removal).
    nms_iou: mask NMS, drop an instance whose mask IoU with a better one exceeds it (1.0: off).
    min_pred_iou, min_stability: drop instances whose ``extra["pred_iou"]`` (a learned IoU head,
        promptseg) or ``extra["stability"]`` (SAM's stability score) fall below; 0 = off, and
        instances without that extra are never dropped by it.
    decode: this type's dense-family decode arguments, on top of ``InferenceConfig.decode``
        (e.g. ``{seed_thresh: 0.5}`` for large irregular astrocytes that a high seed threshold
        cuts into pieces); empty = the global decode. Used when the type is known before
        decoding (``--cell-type`` or the checkpoint's pixel classifier, ``cellseg.infer.celltype``).
    """

    score_thresh: float = 0.5
    min_area: int = 0
    nms_iou: float = 0.5
    min_pred_iou: float = 0.0
    min_stability: float = 0.0
    decode: dict[str, Any] = field(default_factory=dict)

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
    ``decode``: keyword arguments passed to a dense family's ``decode`` (default: the UNet's seed
    threshold, ``_default_decode`` says why).
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
    decode: dict[str, Any] = field(default_factory=_default_decode)
    cell_type_names: tuple[str, ...] = ()
    default: TypeThresholds = field(default_factory=TypeThresholds)
    types: dict[str, TypeThresholds] = field(default_factory=_default_types)
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

    def decode_for(self, cell_type: str | None) -> dict[str, Any]:
        """The decode arguments of an image of ``cell_type``: ``decode`` with that type's own
        ``decode`` on top (None or an unlisted type: ``decode`` alone)."""
        return {**self.decode, **self.thresholds_for(cell_type).decode}

    def thresholds_for(self, cell_type: str | None) -> TypeThresholds:
        """The thresholds of ``cell_type`` (``default`` when unknown or not listed)."""
        if cell_type is None:
            return self.default
        return self.types.get(cell_type, self.default)


def load_inference_config(source: str | os.PathLike | Mapping[str, Any] | InferenceConfig
                          | None = None,
                          overrides: Iterable[str] = ()) -> InferenceConfig:
    """The one way to get an inference config: the defaults (``source`` None), or a YAML path /
    shipped name / mapping / config whose top-level keys replace the defaults' (a tuned file may
    nest everything under ``infer:``), then ``a.b=c`` overrides applied inside (e.g.
    ``types.astro.score_thresh=0.4`` keeps the other types and astro's other thresholds)."""
    overrides = list(overrides)
    if isinstance(source, InferenceConfig):
        data, origin = to_dict(source), "the given config"
    elif isinstance(source, Mapping):
        data, origin = dict(source), "the given mapping"
    elif source is None:
        data, origin = {}, "the defaults"
    else:
        data, origin = read_config_source(source)
    if set(data) == {"infer"} and isinstance(data["infer"], Mapping):
        data = dict(data["infer"])
    try:
        return load_config(InferenceConfig, {**to_dict(InferenceConfig()), **data}, overrides)
    except ConfigError as exc:
        raise ConfigError(exc.what, where=blame(exc.key, overrides, origin), fix=exc.fix,
                          key=exc.key) from None
