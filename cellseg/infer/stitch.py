"""Stitched maps: models + images -> each image's model outputs, tiled, flipped and merged,
before any decode or threshold.

    from cellseg.infer.stitch import stitch, decode_stitched
    stitched = stitch(models, images, cfg)        # one Stitched per (H, W) uint8 image
    raw = [decode_stitched(s, cfg) for s in stitched]   # voted instances, before postprocessing

Per batch of images: upscale (``cfg.scale``), pad, cut into tiles (tiles of several images share a
forward batch), run every model under every flip pass (autocast float16 on CUDA, plain float32 on
CPU: one code path). Dense families: tiles blended into one map per image (flip passes averaged
after un-flipping; models of the same dense family averaged with their weights) and resized to
native size: ``Stitched.dense``. Instance families: each pass's tiles merged across seams
(``merge.merge_seams``), mapped back to native size: ``Stitched.instances``. ``decode_stitched``
decodes each dense map ONCE with ``cfg.decode`` (``family.decode``) and fuses everything by
weighted mask voting (``merge.vote``). The model-heavy half (``stitch``) runs once; the cheap half
(``decode_stitched``) can be rerun under other decode settings (``cellseg tune --decode``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from cellseg.core.instances import Instances
from cellseg.infer import tiling
from cellseg.infer.celltype import class_map, label_names
from cellseg.infer.config import InferenceConfig
from cellseg.infer.merge import merge_seams, vote
from cellseg.infer.tta import flip, passes, unflip_instances

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cellseg.models.base import ModelFamily

# one ensemble member: (network, its family, vote weight); the network's own description is
# ``model.spec`` (``cellseg.models.base.ModelSpec``)
Member = tuple["torch.nn.Module", "ModelFamily", float]


class Timer:
    """Accumulates wall time per stage name (used by the benchmark; costs nothing otherwise)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


NO_TIMER = Timer()


@dataclass
class DenseMaps:
    """One dense family's (K, H, W) float32 maps of one image at native size: the weighted
    average over that family's models and flip passes. ``weight``: the family's summed model
    weight in the vote; ``agnostic``: its labels mean "cell", not a cell type, in an ensemble
    whose other labels name types (decoded labels become -1, so they do not vote for type 0)."""

    family: "ModelFamily"
    maps: np.ndarray
    weight: float
    agnostic: bool = False


@dataclass
class Stitched:
    """One image's model outputs before decode and thresholds, in native coordinates.

    ``instances``: (instances, vote weight) per instance-family model and flip pass, in model
    order (agnostic labels already -1, see ``DenseMaps``); ``dense``: one ``DenseMaps`` per dense
    family, in order of first appearance.
    """

    shape: tuple[int, int]
    instances: list[tuple[Instances, float]] = field(default_factory=list)
    dense: list[DenseMaps] = field(default_factory=list)


def model_weights(models: Sequence[Member], cfg: InferenceConfig) -> list[float]:
    """Each member's vote weight: ``cfg.model_weights`` when set, else the members' own."""
    if cfg.model_weights:
        if len(cfg.model_weights) != len(models):
            raise ValueError(f"model_weights has {len(cfg.model_weights)} values for "
                             f"{len(models)} models")
        return [float(w) for w in cfg.model_weights]
    return [float(w) for _, _, w in models]


def _device_of(model: "torch.nn.Module") -> "torch.device":
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- tiling plumbing


@dataclass
class _Prepared:
    """One image ready for tiling: scaled, padded, with its tile origins."""

    native: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]
    tile: tuple[int, int]
    origins: list[tuple[int, int]]
    image: np.ndarray  # (padded H, padded W) uint8


def _prepare(image: np.ndarray, cfg: InferenceConfig) -> _Prepared:
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 image, got {image.shape} {image.dtype}")
    native = image.shape
    scaled = tiling.scaled_shape(native, cfg.scale)
    img = tiling.resize_image(image, scaled)
    padded, tile, origins = tiling.tile_grid(scaled, cfg.tile_hw, cfg.overlap, cfg.pad_multiple)
    return _Prepared(native, scaled, padded, tile, origins, tiling.pad_to(img, padded))


def _tile_batches(prepared: Sequence[_Prepared], batch_size: int
                  ) -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Batches of (B, th, tw) uint8 tiles across images, with (image index, tile index) each.
    Only tiles of one shape share a batch (whole-image tiles of different sizes do not)."""
    batch: list[np.ndarray] = []
    meta: list[tuple[int, int]] = []
    for i, p in enumerate(prepared):
        th, tw = p.tile
        for t, (y0, x0) in enumerate(p.origins):
            tile = p.image[y0:y0 + th, x0:x0 + tw]
            if batch and (tile.shape != batch[0].shape or len(batch) >= batch_size):
                yield np.stack(batch), meta
                batch, meta = [], []
            batch.append(tile)
            meta.append((i, t))
    if batch:
        yield np.stack(batch), meta


def _cuda_path(device: "torch.device", cfg: InferenceConfig) -> bool:
    """The CUDA forward path (float16 autocast, channels_last input): on CUDA, or on CPU when
    ``cfg.cuda_path_on_cpu`` asks for it (how that path is tested without a GPU)."""
    return device.type == "cuda" or bool(cfg.cuda_path_on_cpu)


def _autocast(device: "torch.device", cfg: InferenceConfig) -> Any:
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.float16,
                          enabled=bool(cfg.amp) and _cuda_path(device, cfg))


def _layout(x: Any, device: "torch.device", cfg: InferenceConfig) -> Any:
    """A 4-D batch in channels_last on the CUDA path (convolutions run faster in that layout);
    anything else (Mask R-CNN's image lists) unchanged."""
    import torch

    if _cuda_path(device, cfg) and isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _dense_maps(model: "torch.nn.Module", family: "ModelFamily", prepared: Sequence[_Prepared],
                cfg: InferenceConfig, timer: Timer) -> list[np.ndarray]:
    """Blended (K, scaled H, scaled W) float32 maps per image, flip passes averaged."""
    import torch

    device = _device_of(model)
    flips = passes(cfg.tta)
    blenders = [tiling.DenseBlender(p.padded, p.scaled,
                                    tiling.taper_window(p.tile, cfg.overlap)) for p in prepared]
    for batch, meta in _tile_batches(prepared, cfg.batch_size):
        with timer("forward"), torch.inference_mode(), _autocast(device, cfg):
            x = _layout(family.preprocess(model, batch), device, cfg)
            out = None
            for f in flips:
                y = flip(family.predict_dense(model, flip(x, f)), f).float()
                out = y if out is None else out + y
            out = (out / len(flips)).cpu().numpy()
        with timer("tiling"):
            for k, (i, t) in enumerate(meta):
                y0, x0 = prepared[i].origins[t]
                blenders[i].add(out[k], y0, x0)
    with timer("tiling"):
        return [b.result() for b in blenders]


def _instance_passes(model: "torch.nn.Module", family: "ModelFamily",
                     prepared: Sequence[_Prepared], cfg: InferenceConfig, timer: Timer
                     ) -> list[list[Instances]]:
    """Per image, per flip pass: the tile instances merged across seams, in native coordinates."""
    import torch

    device = _device_of(model)
    flips = passes(cfg.tta)
    # per image, per pass: placed parts, tile ids, cut flags
    acc = [[([], [], []) for _ in flips] for _ in prepared]
    for batch, meta in _tile_batches(prepared, cfg.batch_size):
        for f_idx, f in enumerate(flips):
            with timer("forward"), torch.inference_mode(), _autocast(device, cfg):
                x = _layout(family.preprocess(model, batch), device, cfg)
                preds = family.predict_instances(model, flip(x, f))
            with timer("tiling"):
                for k, (i, t) in enumerate(meta):
                    p = prepared[i]
                    inst = preds[k]
                    inst = Instances(p.tile, inst.boxes, inst.masks, inst.scores, inst.labels,
                                     dict(inst.extra))
                    inst = unflip_instances(inst, f)
                    placed, cut = tiling.place_tile_instances(inst, p.origins[t], p.tile, p.padded)
                    parts, ids, cuts = acc[i][f_idx]
                    parts.append(placed)
                    ids.append(np.full(len(placed), t, np.int64))
                    cuts.append(cut)
    out = []
    with timer("tiling"):
        for p, per_pass in zip(prepared, acc):
            merged = []
            for parts, ids, cuts in per_pass:
                inst = Instances.concatenate(parts)
                th, tw = p.tile
                tiles = np.array([(x0, y0, x0 + tw, y0 + th) for y0, x0 in p.origins])
                inst = merge_seams(inst, np.concatenate(ids), np.concatenate(cuts),
                                   iou=cfg.seam_iou, containment=cfg.seam_containment, tiles=tiles)
                inst = inst.clip(p.scaled)
                merged.append(inst.rescale(p.native))
            out.append(merged)
    return out



def stitch(models: Sequence[Member], images: Sequence[np.ndarray], cfg: InferenceConfig, *,
           device: Any = None, timer: Timer | None = None) -> list[Stitched]:
    """Every model under every flip pass over the tiles of ``images``: one ``Stitched`` per image.

    Args:
        models: (model, family, weight) triples (``cfg.model_weights`` overrides the weights).
        images: (H, W) uint8 arrays (sizes may differ).
        device: if given, models are moved there first (a no-op when they already are).
    """
    if not models:
        raise ValueError("no model given")
    timer = timer or NO_TIMER
    weights = model_weights(models, cfg)
    with timer("tiling"):
        prepared = [_prepare(img, cfg) for img in images]
    out = [Stitched(p.native) for p in prepared]
    n_passes = len(passes(cfg.tta))
    # in an ensemble mixing per-type heads with class-agnostic models, the agnostic label 0
    # ("cell") must not vote for cell type 0
    typed = bool(label_names(cfg, models))
    dense_groups: dict[str, list[tuple[Any, Any, float]]] = {}
    for (model, family, _), w in zip(models, weights):
        if device is not None:
            model.to(device)
        model.eval()
        if family.kind == "dense":
            dense_groups.setdefault(family.name, []).append((model, family, w))
        elif family.kind == "instances":
            agnostic = typed and not class_map(model)
            for st, per_pass in zip(out, _instance_passes(model, family, prepared, cfg, timer)):
                for inst in per_pass:
                    if agnostic:
                        inst.labels = np.full(len(inst), -1, np.int64)
                    st.instances.append((inst, w / n_passes))
        else:
            raise ValueError(f"family {family.name!r} has unknown kind {family.kind!r}")
    for group in dense_groups.values():
        total = sum(w for _, _, w in group)
        sums: list[np.ndarray | None] = [None] * len(prepared)
        for model, family, w in group:
            for i, maps in enumerate(_dense_maps(model, family, prepared, cfg, timer)):
                sums[i] = maps * (w / total) if sums[i] is None else sums[i] + maps * (w / total)
        agnostic = typed and not class_map(group[0][0])
        for st, p, maps in zip(out, prepared, sums):
            with timer("tiling"):
                maps = tiling.resize_maps(maps, p.native)
            st.dense.append(DenseMaps(group[0][1], maps, total, agnostic))
    return out


def decode_stitched(st: Stitched, cfg: InferenceConfig, *, cell_type: str | None = None,
                    timer: Timer | None = None) -> Instances:
    """Decode one image's dense maps with ``cfg.decode_for(cell_type)`` (the global decode,
    with that type's own on top) and vote them with its instance outputs (``cfg.vote_iou``): the
    image's raw instances in native coordinates, BEFORE postprocessing (thresholds, NMS,
    overlap removal)."""
    timer = timer or NO_TIMER
    outputs = list(st.instances)
    for d in st.dense:
        with timer("decode"):
            inst = d.family.decode(d.maps, **cfg.decode_for(cell_type))
        inst = Instances(st.shape, inst.boxes, inst.masks, inst.scores, inst.labels,
                         dict(inst.extra))
        if d.agnostic:
            inst.labels = np.full(len(inst), -1, np.int64)
        outputs.append((inst, d.weight))
    with timer("vote"):
        return vote([o for o, _ in outputs], [w for _, w in outputs], iou=cfg.vote_iou)
