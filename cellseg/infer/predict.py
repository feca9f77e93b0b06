"""The inference pipeline: models + images -> non-overlapping instances -> submission.csv.

    cellseg predict --weights runs/unet/best.pt --images data/test --out submission.csv

    from cellseg.infer.predict import load_models, predict_image
    models = load_models(["runs/unet/best.pt"], device="cuda")
    inst = predict_image(models, image, cfg)          # image: (H, W) uint8

Per batch of images: upscale (``cfg.scale``), pad, cut into tiles (tiles of several images share a
forward batch), run every model under every flip pass (autocast float16 on CUDA, plain float32 on
CPU: one code path). Dense families: tiles blended into one map per image (flip passes averaged
after un-flipping; models of the same dense family averaged with their weights), resized to native
size and decoded ONCE (``family.decode``). Instance families: each pass's tiles merged across
seams (``merge.merge_seams``), mapped back to native size. All outputs of one image (dense decodes,
instance passes) are then fused by weighted mask voting (``merge.vote``) and postprocessed
(``postprocess.postprocess``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from cellseg.core import coco_rle
from cellseg.core.masks import encode_labels, runs_from_labels
from cellseg.infer import tiling
from cellseg.infer.config import InferenceConfig
from cellseg.infer.merge import merge_seams, vote
from cellseg.infer.postprocess import placeholder, postprocess
from cellseg.infer.tta import flip, passes, unflip_instances
from cellseg.core.instances import Instances

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cellseg.data.record import ImageRecord
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


_NO_TIMER = Timer()


# ----------------------------------------------------------------------------- models


def load_models(paths: Sequence[str | os.PathLike], device: Any = "cpu",
                weights: Sequence[float] | None = None) -> list[Member]:
    """Load checkpoints (``cellseg.checkpoint.load_model``) as (model, family, weight) triples.

    ``weights``: one per path (default 1 each).
    """
    from cellseg.checkpoint import load_model

    weights = [1.0] * len(paths) if not weights else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} model weights for {len(paths)} checkpoints; "
                         f"pass one weight per --weights file")
    out = []
    for path, w in zip(paths, weights):
        model, family, _ = load_model(path, device=device)
        out.append((model, family, w))
    return out


def _model_weights(models: Sequence[Member], cfg: InferenceConfig) -> list[float]:
    if cfg.model_weights:
        if len(cfg.model_weights) != len(models):
            raise ValueError(f"model_weights has {len(cfg.model_weights)} values for "
                             f"{len(models)} models")
        return [float(w) for w in cfg.model_weights]
    return [float(w) for _, _, w in models]


def class_names(models: Sequence[Member]) -> tuple[str, ...]:
    """Cell type names of the label indices of per-type heads (``model.spec.class_map``,
    {name: index}), from the first model that has one; () when none has."""
    for model, _, _ in models:
        cmap = _class_map(model)
        if cmap:
            return tuple(name for name, _ in sorted(cmap.items(), key=lambda kv: kv[1]))
    return ()


def _class_map(model: Any) -> dict[str, int] | None:
    """``model.spec.class_map``; None for a class-agnostic model or a network built elsewhere
    (no ``spec``)."""
    spec = getattr(model, "spec", None)
    return spec.class_map if spec is not None else None


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
    outputs: list[tuple[Instances, float]] = field(default_factory=list)


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


# ----------------------------------------------------------------------------- prediction


def predict_raw(models: Sequence[Member], images: Sequence[np.ndarray], cfg: InferenceConfig,
                *, device: Any = None, timer: Timer | None = None) -> list[Instances]:
    """Every model, every flip pass, tiles merged and outputs voted: one ``Instances`` per image,
    in native coordinates, BEFORE postprocessing (thresholds, NMS, overlap removal).

    Args:
        models: (model, family, weight) triples (``cfg.model_weights`` overrides the weights).
        images: (H, W) uint8 arrays (sizes may differ).
        device: if given, models are moved there first (a no-op when they already are).
    """
    if not models:
        raise ValueError("no model given")
    timer = timer or _NO_TIMER
    weights = _model_weights(models, cfg)
    with timer("tiling"):
        prepared = [_prepare(img, cfg) for img in images]
    n_passes = len(passes(cfg.tta))
    # in an ensemble mixing per-type heads with class-agnostic models, the agnostic label 0
    # ("cell") must not vote for cell type 0: mark it unknown (-1)
    typed = bool(cfg.cell_type_names or class_names(models))

    def agnostic(inst: Instances, model: Any) -> Instances:
        if typed and not _class_map(model):
            inst.labels = np.full(len(inst), -1, np.int64)
        return inst

    # dense models of one family are averaged before a single decode
    dense_groups: dict[str, list[tuple[Any, Any, float]]] = {}
    for (model, family, _), w in zip(models, weights):
        if device is not None:
            model.to(device)
        model.eval()
        if family.kind == "dense":
            dense_groups.setdefault(family.name, []).append((model, family, w))
        elif family.kind == "instances":
            for p, per_pass in zip(prepared, _instance_passes(model, family, prepared, cfg, timer)):
                p.outputs.extend((agnostic(inst, model), w / n_passes) for inst in per_pass)
        else:
            raise ValueError(f"family {family.name!r} has unknown kind {family.kind!r}")
    for group in dense_groups.values():
        total = sum(w for _, _, w in group)
        sums: list[np.ndarray | None] = [None] * len(prepared)
        for model, family, w in group:
            for i, maps in enumerate(_dense_maps(model, family, prepared, cfg, timer)):
                sums[i] = maps * (w / total) if sums[i] is None else sums[i] + maps * (w / total)
        family = group[0][1]
        for p, maps in zip(prepared, sums):
            with timer("tiling"):
                maps = tiling.resize_maps(maps, p.native)
            with timer("decode"):
                inst = family.decode(maps, **dict(cfg.decode))
            inst = Instances(p.native, inst.boxes, inst.masks, inst.scores, inst.labels,
                             dict(inst.extra))
            p.outputs.append((agnostic(inst, group[0][0]), total))
    with timer("vote"):
        return [vote([o for o, _ in p.outputs], [w for _, w in p.outputs], iou=cfg.vote_iou)
                for p in prepared]


def predict_images(models: Sequence[Member], images: Sequence[np.ndarray], cfg: InferenceConfig,
                   *, cell_types: Sequence[str | None] | None = None, device: Any = None,
                   timer: Timer | None = None) -> list[Instances]:
    """``predict_raw`` then ``postprocess`` for each image (final, non-overlapping instances).

    ``cell_types``: per image, the type whose thresholds apply (None: voted from the instance
    labels through ``cfg.cell_type_names``, or the models' class names when that is empty).
    """
    timer = timer or _NO_TIMER
    raw = predict_raw(models, images, cfg, device=device, timer=timer)
    cell_types = [None] * len(raw) if cell_types is None else list(cell_types)
    if not cfg.cell_type_names and class_names(models):
        # per-type heads name their classes: the image-level type vote can use them
        cfg = dataclasses.replace(cfg, cell_type_names=class_names(models))
    with timer("postprocess"):
        return [postprocess(r, cfg, cell_type=ct) for r, ct in zip(raw, cell_types)]


def predict_image(models: Sequence[Member], image: np.ndarray, cfg: InferenceConfig, *,
                  cell_type: str | None = None, device: Any = None) -> Instances:
    """Predict one (H, W) uint8 image: postprocessed, non-overlapping ``Instances`` in native
    coordinates (``cell_type`` forces the per-type thresholds; else they are voted)."""
    return predict_images(models, [image], cfg, cell_types=[cell_type], device=device)[0]


# ----------------------------------------------------------------------------- submission


def predict_to_submission(models: Sequence[Member], records: Sequence["ImageRecord"],
                          cfg: InferenceConfig, out_path: str | os.PathLike, *,
                          cell_type: str | None = None, save_masks: str | os.PathLike | None = None,
                          overlay: str | os.PathLike | None = None, device: Any = None,
                          progress: bool = True, timer: Timer | None = None,
                          results: str | os.PathLike | None = None) -> int:
    """Predict every record and write ``out_path`` (competition CSV) atomically, streaming.

    Images are read and predicted ``cfg.batch_size`` at a time, so memory does not grow with
    their number. An image that fails to read or predict is reported on stderr by name and gets
    the empty-image policy (no candidate: a placeholder, or nothing with "allow_empty"); the run
    goes on. The written file is then checked with ``validate_submission``.

    ``results``: also write the final instances as a COCO results JSON (COCO RLE, score, and
    every per-instance extra such as ``pred_iou`` / ``stability``), which ``cellseg score``
    ranks by score for AP and summarises. Held in memory until the end (RLEs only, small).

    Returns:
        The number of images that failed (0 = all predicted). Raises ``ValueError`` when the
        written file does not validate (a bug, never expected).
    """
    from tqdm import tqdm

    from cellseg.core.submission import SubmissionWriter, validate_submission

    timer = timer or _NO_TIMER
    failed: list[str] = []
    shapes: dict[str, tuple[int, int]] = {}
    coco_results: list[dict] = []
    step = max(1, int(cfg.batch_size))
    bar = tqdm(total=len(records), desc="predict", unit="img", file=sys.stderr, disable=not progress)
    # postprocessing guarantees disjoint cells, so the writer's per-image overlap check is
    # skipped; validate_submission re-checks the whole file at the end
    with SubmissionWriter(out_path, check_overlap=False) as writer:
        for s in range(0, len(records), step):
            chunk = list(records[s:s + step])
            predicted = _predict_chunk(models, chunk, cfg, cell_type, device, failed, timer)
            for rec, (image, inst) in zip(chunk, predicted):
                shapes[rec.image_id] = inst.image_shape
                with timer("write"):
                    # one label image serves the RLEs (one pass), the mask PNG and the overlay
                    labels = inst.to_label_image()
                    rles = encode_labels(labels)
                    writer.add(rec.image_id, rles, shape=inst.image_shape)
                    if results is not None:
                        coco_results.extend(_coco_results(rec.image_id, inst, labels, rles))
                    if save_masks is not None:
                        save_label_png(Path(save_masks) / f"{rec.image_id}.png", labels)
                    if overlay is not None and image is not None:
                        save_overlay(Path(overlay) / f"{rec.image_id}.png", image, labels)
            bar.update(len(chunk))
    bar.close()
    if results is not None:
        from cellseg.io import write_json

        write_json(results, coco_results)
    with timer("validate"):
        shape = next(iter(shapes.values()), (520, 704))
        if all(s == shape for s in shapes.values()):
            problems = validate_submission(out_path, ids=list(shapes), shape=shape)
        else:  # mixed sizes: ids and RLE bounds cannot share one shape, check the rest
            problems = validate_submission(out_path, shape=(1 << 20, 1 << 20))
    # a "warning" (an image left empty under allow_empty) does not invalidate the file
    problems = [p for p in problems if getattr(p, "severity", "error") == "error"]
    if problems:
        raise ValueError(f"{out_path} does not validate: " + "; ".join(map(str, problems[:10])))
    if failed:
        print(f"cellseg predict: {len(failed)} image(s) failed: {', '.join(failed)}",
              file=sys.stderr)
    return len(failed)


def _coco_results(image_id: str, inst: Instances, labels: np.ndarray, rles: list[str]
                  ) -> list[dict]:
    """COCO results entries of one image's final instances (label k <-> instance k - 1)."""
    ids = np.unique(labels[labels > 0]) - 1  # encode_labels order; instances emptied are absent
    out = []
    for k, coco in zip(ids, coco_rle.rles_to_coco(rles, inst.image_shape)):
        entry = {"image_id": image_id, "category_id": 1, "segmentation": coco,
                 "score": float(inst.scores[k])}
        entry.update({name: float(np.asarray(v)[k]) for name, v in inst.extra.items()
                      if np.ndim(v) == 1})
        out.append(entry)
    return out


def _predict_chunk(models: Sequence[Member], chunk: Sequence["ImageRecord"],
                   cfg: InferenceConfig, cell_type: str | None, device: Any, failed: list[str],
                   timer: Timer) -> list[tuple[np.ndarray | None, Instances]]:
    """(image or None, final instances) per record; failures get the empty policy."""
    from cellseg.io import read_gray

    images: list[np.ndarray | None] = []
    for rec in chunk:
        try:
            with timer("read"):
                # the file decides the size: records listed without opening files assume 520x704
                images.append(read_gray(rec.image_path))
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the run
            print(f"cellseg predict: cannot read {rec.image_id} ({rec.image_path}): {exc}",
                  file=sys.stderr)
            failed.append(rec.image_id)
            images.append(None)
    ok = [k for k, img in enumerate(images) if img is not None]
    types = [cell_type or chunk[k].cell_type for k in ok]
    out: dict[int, Instances] = {}
    try:
        preds = predict_images(models, [images[k] for k in ok], cfg, cell_types=types,
                               device=device, timer=timer)
        out.update(zip(ok, preds))
    except Exception:  # noqa: BLE001 - retry one by one to find the culprit
        for k, ct in zip(ok, types):
            try:
                out[k] = predict_images(models, [images[k]], cfg, cell_types=[ct],
                                        device=device, timer=timer)[0]
            except Exception as exc:  # noqa: BLE001
                print(f"cellseg predict: prediction failed for {chunk[k].image_id}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
                failed.append(chunk[k].image_id)
    results = []
    for k, rec in enumerate(chunk):
        inst = out.get(k)
        if inst is None:
            inst = (Instances(rec.shape) if cfg.empty_policy == "allow_empty"
                    else placeholder(rec.shape))
        results.append((images[k], inst))
    return results


def save_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an (H, W) label image (``Instances.to_label_image``) as a uint16 PNG."""
    from cellseg.io import write_png

    if labels.size and labels.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: {labels.max()} instances do not fit a uint16 label image")
    write_png(path, labels.astype(np.uint16))


def save_overlay(path: str | os.PathLike, image: np.ndarray, labels: np.ndarray) -> None:
    """Write the (H, W) uint8 image with each label's outline in a distinct colour (PNG), drawn
    by ``cellseg.report.instance_overlay`` (the kit's one overlay)."""
    from cellseg.io import write_png
    from cellseg.report import instance_overlay

    write_png(path, instance_overlay(image, runs_from_labels(labels)))
