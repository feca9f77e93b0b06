"""Tune per-cell-type postprocessing thresholds on a validation set with the competition metric.

    cellseg tune --weights runs/unet/best.pt --data data/competition --fold 0 --out tuned.yaml

The models run ONCE over the validation images; their raw (pre-threshold) merged instances are
kept (in memory, and in ``--cache`` as a pickle so a re-run skips the models). Then, for each cell
type separately (image scores are averaged over images and each image's thresholds are those of
its own type, so the types do not interact), coordinate ascent over ``score_thresh``, ``min_area``
and ``nms_iou`` on fixed grids, starting from the current values and changing a value only for a
strict gain: the tuned score is never below the starting one. The ground-truth cell type of each
record chooses its thresholds during tuning (at prediction time ``cellseg.infer.celltype`` decides
it: given or voted). Decode tuning (``tune_decode``) runs the models once through predict's
"stitched maps" half (``cellseg.infer.stitch.stitch``) and reruns only its "decode" half per
setting tried.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from cellseg.infer.config import InferenceConfig, TypeThresholds
from cellseg.infer.postprocess import postprocess
from cellseg.core.instances import Instances

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord
    from cellseg.infer.stitch import Stitched

GRIDS: dict[str, tuple[float, ...]] = {
    "score_thresh": tuple(round(0.05 * k, 2) for k in range(1, 20)),
    "min_area": (0, 10, 20, 40, 60, 80, 100, 150, 200, 300),
    "nms_iou": (0.3, 0.4, 0.5, 0.6, 0.7, 1.0),
}
EXTRA_GRID: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def coordinate_ascent(start: Any, grids: Mapping[str, Sequence[Any]],
                      evaluate: Callable[[Any], float], rounds: int,
                      replace: Callable[[Any, str, Any], Any]) -> tuple[Any, float, float]:
    """Coordinate ascent over ``grids`` (name -> candidate values) from ``start``: each value
    replaces the current one only for a strict gain, so the result never scores below the start.
    ``replace(params, name, value)`` builds a candidate. Returns (best params, best score,
    start score)."""
    params = start
    best = first = evaluate(start)
    for _ in range(max(1, rounds)):
        changed = False
        for name, values in grids.items():
            for v in values:
                cand = replace(params, name, v)
                if cand == params:
                    continue
                s = evaluate(cand)
                if s > best + 1e-12:
                    best, params, changed = s, cand, True
        if not changed:
            break
    return params, best, first


def _per_batch(fn: Any, records: Sequence["ImageRecord"], cfg: InferenceConfig,
               progress: bool) -> list[Any]:
    """``fn(images, records)`` over the records, ``cfg.batch_size`` at a time, concatenated."""
    from tqdm import tqdm

    out: list[Any] = []
    step = max(1, int(cfg.batch_size))
    for s in tqdm(range(0, len(records), step), desc="tune: predict", file=sys.stderr,
                  disable=not progress):
        batch = records[s:s + step]
        out.extend(fn([r.read_image() for r in batch], batch))
    return out


def collect_raw(models: Sequence[Any], records: Sequence["ImageRecord"], cfg: InferenceConfig, *,
                device: Any = None, progress: bool = True, by_type: bool = False
                ) -> list[Instances]:
    """Raw merged instances (before postprocessing) of every record, ``cfg.batch_size`` at a time
    (``by_type``: each decoded with its true type's decode, ``cfg.decode_for``)."""
    from cellseg.infer.predict import predict_raw

    return _per_batch(lambda images, recs: predict_raw(
        models, images, cfg, cell_types=tuning_types(recs, by_type), device=device),
        records, cfg, progress)


def save_cache(path: str | os.PathLike, records: Sequence["ImageRecord"],
               raw: Sequence[Instances]) -> None:
    """Pickle ``{image_id: Instances}`` atomically (a local cache written by this module)."""
    from cellseg.io import atomic_open

    with atomic_open(path, "wb") as fh:
        pickle.dump({r.image_id: inst for r, inst in zip(records, raw)}, fh,
                    protocol=pickle.HIGHEST_PROTOCOL)


def load_cache(path: str | os.PathLike, records: Sequence["ImageRecord"]) -> list[Instances] | None:
    """The cached raw predictions of ``records``, or None when the cache misses any of them."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        cache = pickle.load(fh)  # noqa: S301 - our own cache file
    if not all(r.image_id in cache for r in records):
        return None
    return [cache[r.image_id] for r in records]


def tuning_types(records: Sequence["ImageRecord"], by_type: bool) -> list[str | None]:
    """The type whose thresholds each record tunes: its true ``cell_type`` with ``by_type``,
    else None (``default``, tuned on every image together)."""
    return [r.cell_type if by_type else None for r in records]


def predict_knows_types(cfg: InferenceConfig, models: Sequence[Any] | None,
                        raw: Sequence[Instances] = ()) -> bool:
    """Whether predict will pick per-type thresholds for these models (a checkpoint's pixel
    classifier, or labels that name cell types: ``cellseg.infer.celltype``); tuning per type
    otherwise tunes thresholds predict never applies. Without models (a cache alone), nonzero
    labels betray a per-type head."""
    from cellseg.infer.celltype import label_names, type_classifiers

    if models is not None:
        return bool(label_names(cfg, models)) or bool(type_classifiers(models))
    return bool(cfg.cell_type_names) or any((inst.labels > 0).any() for inst in raw)


def score_images(raw: Sequence[Instances], truths: Sequence[Any], cfg: InferenceConfig,
                 cell_types: Sequence[str | None], matching: str = "dsb") -> np.ndarray:
    """(N,) competition score of each image after postprocessing with ``cfg`` (``matching``:
    the metric's rule, ``cellseg.core.metrics.MATCHING_RULES``)."""
    from cellseg.core.metrics import match_image

    return np.array([match_image(t, postprocess(r, cfg, cell_type=ct), r.image_shape,
                                 matching=matching).score
                     for r, t, ct in zip(raw, truths, cell_types)], dtype=np.float64)


def _with_thresholds(cfg: InferenceConfig, cell_type: str | None, th: TypeThresholds
                     ) -> InferenceConfig:
    if cell_type is None:
        return dataclasses.replace(cfg, default=th)
    return dataclasses.replace(cfg, types={**cfg.types, cell_type: th})


def tune_thresholds(raw: Sequence[Instances], records: Sequence["ImageRecord"],
                    cfg: InferenceConfig, *, grids: dict[str, Sequence[float]] | None = None,
                    rounds: int = 2, progress: bool = True, by_type: bool = True,
                    matching: str = "dsb") -> tuple[InferenceConfig, dict[str, Any]]:
    """Search per-cell-type thresholds maximising the mean image score.

    Args:
        raw: raw merged instances per record (``collect_raw``), same order as ``records``.
        records: the validation images with their truth (``rles``) and ``cell_type``.
        grids: candidate values per parameter (default ``GRIDS``).
        by_type: tune each record's cell type separately. Set False when predict cannot know an
            image's type (class-agnostic models and no ``--cell-type``): predict then uses
            ``default`` for every image, so ``default`` is tuned on all images together.
    Returns:
        (tuned config, report) with report = {"before", "after", "per_type": {type: {"n_images",
        "before", "after", "thresholds"}}}. Images without a type tune ``default``.
    """
    from cellseg.core.masks import runs_from_rles

    if grids is None:
        grids = dict(GRIDS)
        # box-prompted models carry a learned IoU and SAM's stability score: tune them as filters
        for key, extra in (("min_pred_iou", "pred_iou"), ("min_stability", "stability")):
            if any(extra in inst.extra for inst in raw):
                grids[key] = EXTRA_GRID
    grids = dict(grids)
    if len(raw) != len(records):
        raise ValueError(f"{len(raw)} predictions for {len(records)} records")
    truths = [runs_from_rles(r.rles, r.shape) for r in records]
    types = tuning_types(records, by_type)
    before_all = score_images(raw, truths, cfg, types, matching)
    groups: dict[str | None, list[int]] = {}
    for k, t in enumerate(types):
        groups.setdefault(t, []).append(k)
    tuned = cfg
    per_type: dict[str, Any] = {}
    after_all = before_all.copy()
    for ctype, idx in groups.items():
        g_raw = [raw[k] for k in idx]
        g_truth = [truths[k] for k in idx]
        g_types = [ctype] * len(idx)
        th = cfg.thresholds_for(ctype)

        def evaluate(t: TypeThresholds) -> float:
            return float(score_images(g_raw, g_truth, _with_thresholds(cfg, ctype, t), g_types,
                                      matching).mean())

        th, best, start = coordinate_ascent(
            th, grids, evaluate, rounds,
            lambda t, name, v: dataclasses.replace(t, **{name: type(getattr(t, name))(v)}))
        tuned = _with_thresholds(tuned, ctype, th)
        after_all[idx] = score_images(g_raw, g_truth, tuned, g_types, matching)
        per_type[ctype or "default"] = {"n_images": len(idx), "before": start, "after": best,
                                        "thresholds": dataclasses.asdict(th)}
        if progress:
            print(f"tune {ctype or 'default'}: {start:.4f} -> {best:.4f} with {th}",
                  file=sys.stderr)
    report = {"before": float(before_all.mean()), "after": float(after_all.mean()),
              "per_type": per_type}
    return tuned, report


def write_config(path: str | os.PathLike, cfg: InferenceConfig) -> None:
    """Write ``cfg`` as an inference config YAML (atomically), loadable by
    ``load_inference_config(path)``."""
    from cellseg.configlib import save_yaml

    save_yaml(path, cfg)


# ----------------------------------------------------------------------------- decode thresholds


def decode_grid(family: Any) -> dict[str, tuple[float, ...]] | None:
    """The decode search grid of a dense family (the UNet's lives beside its decode,
    ``cellseg.models.unet_decode.DECODE_GRID``); None for a family without one."""
    if family.name == "unet":
        from cellseg.models.unet_decode import DECODE_GRID

        return DECODE_GRID
    return None


def collect_stitched(models: Sequence[Any], records: Sequence["ImageRecord"],
                     cfg: InferenceConfig, *, device: Any = None, progress: bool = True
                     ) -> list["Stitched"]:
    """Predict's "stitched maps" half (``cellseg.infer.stitch.stitch``: tiling, TTA, ensemble
    merge) of every record, ``cfg.batch_size`` at a time: what decode tuning reruns the decode
    on. Raises ValueError without a dense family (nothing to decode)."""
    from cellseg.infer.stitch import stitch

    if not any(fam.kind == "dense" for _, fam, _ in models):
        raise ValueError(f"decode tuning needs a dense family (e.g. unet), got "
                         f"{sorted({fam.name for _, fam, _ in models})}; tune without --decode")
    return _per_batch(lambda images, _: stitch(models, images, cfg, device=device), records,
                      cfg, progress)


def raw_from_stitched(stitched: Sequence["Stitched"], cfg: InferenceConfig,
                      cell_types: Sequence[str | None] | None = None) -> list[Instances]:
    """Raw instances (before postprocessing) as ``predict_raw`` gives them under ``cfg``
    (``cellseg.infer.stitch.decode_stitched``; ``cell_types``: per image, whose decode)."""
    from cellseg.infer.stitch import decode_stitched

    cell_types = [None] * len(stitched) if cell_types is None else list(cell_types)
    return [decode_stitched(s, cfg, cell_type=ct) for s, ct in zip(stitched, cell_types)]


def tune_decode(stitched: Sequence["Stitched"], records: Sequence["ImageRecord"],
                cfg: InferenceConfig, *, by_type: bool = False, grids: dict | None = None,
                rounds: int = 2, progress: bool = True,
                matching: str = "dsb") -> tuple[dict[str, Any], dict[str, Any]]:
    """Coordinate ascent over the decode keyword arguments (global: ``cfg.decode`` is not per
    type), scoring with the current postprocessing thresholds; a value changes only for a strict
    gain, so the result is never below the start. ``grids`` defaults to the dense family's
    ``decode_grid``. Returns (decode dict, report {"before", "after", "decode"})."""
    from cellseg.core.metrics import runs_from_rles

    if grids is None:
        families = {d.family.name: d.family for st in stitched for d in st.dense}
        if len(families) != 1:
            raise ValueError(f"decode tuning needs models of one dense family, got "
                             f"{sorted(families) or 'none'}")
        family = next(iter(families.values()))
        grids = decode_grid(family)
        if not grids:
            raise ValueError(f"no decode grid for family {family.name!r}; decode tuning knows "
                             f"the unet family")
    truths = [runs_from_rles(r.rles, r.shape) for r in records]
    types = tuning_types(records, by_type)

    def evaluate(params: dict[str, Any]) -> float:
        raw = raw_from_stitched(stitched, dataclasses.replace(cfg, decode=params))
        return float(score_images(raw, truths, cfg, types, matching).mean())

    params, best, start = coordinate_ascent(dict(cfg.decode), grids, evaluate, rounds,
                                            lambda p, name, v: {**p, name: v})
    if progress:
        print(f"tune decode: {start:.4f} -> {best:.4f} with {params}", file=sys.stderr)
    return params, {"before": start, "after": best, "decode": params}


def tune_decode_by_type(stitched: Sequence["Stitched"], records: Sequence["ImageRecord"],
                        cfg: InferenceConfig, *, grids: dict | None = None, rounds: int = 2,
                        progress: bool = True, matching: str = "dsb"
                        ) -> tuple[InferenceConfig, dict[str, Any]]:
    """``tune_decode`` on the images of each cell type apart; each type's result goes to its
    ``types[t].decode`` (what ``cfg.decode_for(t)`` applies when predict knows the type), the
    global ``decode`` stays. Images without a type are left out. Returns (config, report
    {"before", "after", "per_type": {type: {"n_images", "before", "after", "decode"}}}), the
    scores being means over the typed images."""
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(records):
        if r.cell_type:
            groups.setdefault(r.cell_type, []).append(k)
    tuned, per_type = cfg, {}
    for ctype, idx in sorted(groups.items()):
        # the type's images decoded with the decode under test (its own on top of the global)
        start = dataclasses.replace(cfg, decode=cfg.decode_for(ctype))
        params, rep = tune_decode([stitched[k] for k in idx], [records[k] for k in idx], start,
                                  by_type=True, grids=grids, rounds=rounds, progress=False,
                                  matching=matching)
        th = dataclasses.replace(cfg.thresholds_for(ctype),
                                 decode={k: v for k, v in params.items()
                                         if cfg.decode.get(k) != v})
        tuned = _with_thresholds(tuned, ctype, th)
        per_type[ctype] = {"n_images": len(idx), "before": rep["before"], "after": rep["after"],
                           "decode": th.decode}
        if progress:
            print(f"tune decode {ctype}: {rep['before']:.4f} -> {rep['after']:.4f} with "
                  f"{th.decode or 'the global decode'}", file=sys.stderr)
    n = sum(v["n_images"] for v in per_type.values()) or 1
    report = {key: sum(v[key] * v["n_images"] for v in per_type.values()) / n
              for key in ("before", "after")}
    return tuned, {**report, "per_type": per_type}
