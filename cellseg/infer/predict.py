"""The inference pipeline: models + images -> non-overlapping instances -> submission.csv.

    cellseg predict --weights runs/unet/best.pt --images data/test --out submission.csv

    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models, predict_image
    models = load_models(["runs/unet/best.pt"], device="cuda")
    inst = predict_image(models, image, load_inference_config())   # image: (H, W) uint8

Two halves, each written once: "stitched maps" (``cellseg.infer.stitch.stitch``: tiling, flip TTA,
ensemble merge -> each image's dense maps and instance passes) and "decode + postprocess"
(``stitch.decode_stitched`` then ``postprocess.postprocess`` with the thresholds of the type that
``cellseg.infer.celltype`` decides). ``predict_records`` streams records through both, chunk by
chunk, and is what ``cellseg predict`` (through ``predict_to_submission``) and training validation
both call; ``cellseg.infer.output.PredictionWriter`` writes every output.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from cellseg.core.instances import Instances
from cellseg.infer.celltype import class_names, label_names, pixel_cell_type
from cellseg.infer.config import InferenceConfig
from cellseg.infer.output import save_label_png, save_overlay
from cellseg.infer.postprocess import placeholder, postprocess
from cellseg.infer.stitch import NO_TIMER, Member, Timer, decode_stitched, stitch

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord

__all__ = ["Member", "Timer", "PredictOptions", "class_names", "load_models", "predict_raw",
           "predict_images", "predict_image", "predict_records", "predict_to_submission",
           "save_label_png", "save_overlay"]


# ----------------------------------------------------------------------------- models


def load_models(paths: Sequence[str | os.PathLike], device: Any = "cpu",
                weights: Sequence[float] | None = None) -> list[Member]:
    """Load checkpoints (``cellseg.models.load_model``) as (model, family, weight) triples.

    ``weights``: one per path (default 1 each). A checkpoint's cell-type classifier (fitted by
    training) rides on its model as ``model.type_classifier`` (``cellseg.infer.celltype``).
    """
    from cellseg.data.typeclf import TypeClassifier
    from cellseg.models import load_model

    weights = [1.0] * len(paths) if not weights else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} model weights for {len(paths)} checkpoints; "
                         f"pass one weight per --weights file")
    out = []
    for path, w in zip(paths, weights):
        model, family, ckpt = load_model(path, device=device)
        clf = ckpt.get("type_classifier")
        model.type_classifier = TypeClassifier.from_dict(clf) if clf else None
        out.append((model, family, w))
    return out



# ----------------------------------------------------------------------------- prediction


def predict_raw(models: Sequence[Member], images: Sequence[np.ndarray], cfg: InferenceConfig,
                *, cell_types: Sequence[str | None] | None = None, device: Any = None,
                timer: Timer | None = None) -> list[Instances]:
    """Every model, every flip pass, tiles merged, dense maps decoded and outputs voted: one
    ``Instances`` per image, in native coordinates, BEFORE postprocessing (thresholds, NMS,
    overlap removal). ``stitch.stitch`` then ``stitch.decode_stitched``.

    Args:
        models: (model, family, weight) triples (``cfg.model_weights`` overrides the weights).
        images: (H, W) uint8 arrays (sizes may differ).
        cell_types: per image, the type whose decode applies (``cfg.decode_for``; None: the
            global decode).
        device: if given, models are moved there first (a no-op when they already are).
    """
    timer = timer or NO_TIMER
    cell_types = [None] * len(images) if cell_types is None else list(cell_types)
    return [decode_stitched(s, cfg, cell_type=ct, timer=timer)
            for s, ct in zip(stitch(models, images, cfg, device=device, timer=timer), cell_types)]


def predict_images(models: Sequence[Member], images: Sequence[np.ndarray], cfg: InferenceConfig,
                   *, cell_types: Sequence[str | None] | None = None, device: Any = None,
                   timer: Timer | None = None) -> list[Instances]:
    """``predict_raw`` then ``postprocess`` for each image (final, non-overlapping instances).

    ``cell_types``: per image, a type to force (None: decided by ``cellseg.infer.celltype``: the
    models' pixel classifier, else a vote through ``cfg.cell_type_names`` or the models' class
    names).
    """
    timer = timer or NO_TIMER
    cell_types = [None] * len(images) if cell_types is None else list(cell_types)
    with timer("cell type"):  # before decoding: a type may have its own decode
        cell_types = [ct if ct is not None else pixel_cell_type(models, im)
                      for ct, im in zip(cell_types, images)]
    raw = predict_raw(models, images, cfg, cell_types=cell_types, device=device, timer=timer)
    # per-type heads name their classes: the image-level type vote can use them
    cfg = dataclasses.replace(cfg, cell_type_names=label_names(cfg, models))
    with timer("postprocess"):
        return [postprocess(r, cfg, cell_type=ct) for r, ct in zip(raw, cell_types)]


def predict_image(models: Sequence[Member], image: np.ndarray, cfg: InferenceConfig, *,
                  cell_type: str | None = None, device: Any = None) -> Instances:
    """Predict one (H, W) uint8 image: postprocessed, non-overlapping ``Instances`` in native
    coordinates (``cell_type`` forces the per-type thresholds; else they are voted)."""
    return predict_images(models, [image], cfg, cell_types=[cell_type], device=device)[0]


def predict_records(models: Sequence[Member], records: Sequence["ImageRecord"],
                    cfg: InferenceConfig, *, cell_type: str | None = None, device: Any = None,
                    timer: Timer | None = None, failed: list[str] | None = None
                    ) -> Iterator[tuple["ImageRecord", np.ndarray | None, Instances]]:
    """Yield (record, (H, W) uint8 image or None, final instances) for every record, in order,
    reading and predicting ``cfg.batch_size`` images at a time (memory does not grow with the
    number of records). The one loop behind ``cellseg predict`` and training validation.

    ``cell_type``: forced for every image (``--cell-type``); else decided per image by
    ``cellseg.infer.celltype`` (a record's own ``cell_type`` is not used).
    ``failed``: None raises on the first image that cannot be read or predicted; a list
    collects their ids instead (each reported on stderr), and they get the empty-image policy
    (no candidate: a placeholder, or nothing with "allow_empty").
    """
    timer = timer or NO_TIMER
    step = max(1, int(cfg.batch_size))
    for s in range(0, len(records), step):
        chunk = list(records[s:s + step])
        images = [_read(rec, failed, timer) for rec in chunk]
        ok = [k for k, img in enumerate(images) if img is not None]
        preds = _predict_ok(models, [chunk[k] for k in ok], [images[k] for k in ok], cfg,
                            cell_type, device, timer, failed)
        out = dict(zip(ok, preds))
        for k, rec in enumerate(chunk):
            inst = out.get(k)
            if inst is None:
                inst = (Instances(rec.shape) if cfg.empty_policy == "allow_empty"
                        else placeholder(rec.shape))
            yield rec, images[k], inst


def _read(rec: "ImageRecord", failed: list[str] | None, timer: Timer) -> np.ndarray | None:
    from cellseg.io import read_gray

    try:
        with timer("read"):
            # the file decides the size: records listed without opening files assume 520x704
            return read_gray(rec.image_path)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the run
        if failed is None:
            raise
        print(f"cellseg predict: cannot read {rec.image_id} ({rec.image_path}): {exc}",
              file=sys.stderr)
        failed.append(rec.image_id)
        return None


def _predict_ok(models: Sequence[Member], recs: Sequence["ImageRecord"],
                images: Sequence[np.ndarray], cfg: InferenceConfig, cell_type: str | None,
                device: Any, timer: Timer, failed: list[str] | None) -> list[Instances | None]:
    """Final instances of the images read (None: failed); a failing batch is retried image by
    image to find the culprit (with ``failed`` None, the error is raised instead)."""
    if not images:
        return []
    try:
        return list(predict_images(models, images, cfg, cell_types=[cell_type] * len(images),
                                   device=device, timer=timer))
    except Exception:  # noqa: BLE001 - retry one by one to find the culprit
        if failed is None:
            raise
    out: list[Instances | None] = []
    for rec, image in zip(recs, images):
        try:
            out.append(predict_images(models, [image], cfg, cell_types=[cell_type],
                                      device=device, timer=timer)[0])
        except Exception as exc:  # noqa: BLE001
            print(f"cellseg predict: prediction failed for {rec.image_id}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(rec.image_id)
            out.append(None)
    return out


# ----------------------------------------------------------------------------- submission


@dataclass(frozen=True)
class PredictOptions:
    """What ``predict_to_submission`` writes besides the CSV, and how it runs.

    cell_type: force this type's thresholds for every image (else decided per image).
    save_masks / overlay: folders for per-image uint16 label PNGs / outline overlays.
    results: a COCO results JSON (COCO RLE, score, per-instance extras) for ``cellseg score``.
    progress: a tqdm bar on stderr.
    """

    cell_type: str | None = None
    save_masks: str | os.PathLike | None = None
    overlay: str | os.PathLike | None = None
    results: str | os.PathLike | None = None
    progress: bool = True


def predict_to_submission(models: Sequence[Member], records: Sequence["ImageRecord"],
                          cfg: InferenceConfig, out_path: str | os.PathLike,
                          options: PredictOptions | None = None, *, device: Any = None,
                          timer: Timer | None = None) -> int:
    """Predict every record (``predict_records``) and write ``out_path`` (competition CSV) and
    the outputs ``options`` asks for through one ``PredictionWriter``, atomically, streaming.

    An image that fails to read or predict is reported on stderr by name and gets the
    empty-image policy; the run goes on. The written file is then checked with
    ``validate_submission``.

    Returns:
        The number of images that failed (0 = all predicted). Raises ``ValueError`` when the
        written file does not validate (a bug, never expected).
    """
    from tqdm import tqdm

    from cellseg.infer.output import PredictionWriter

    opts = options or PredictOptions()
    timer = timer or NO_TIMER
    failed: list[str] = []
    writer = PredictionWriter(out_path, results=opts.results, save_masks=opts.save_masks,
                              overlay=opts.overlay)
    bar = tqdm(total=len(records), desc="predict", unit="img", file=sys.stderr,
               disable=not opts.progress)
    with writer:
        for rec, image, inst in predict_records(models, records, cfg, cell_type=opts.cell_type,
                                                device=device, timer=timer, failed=failed):
            with timer("write"):
                writer.add(rec.image_id, inst, image)
            bar.update(1)
    bar.close()
    with timer("validate"):
        writer.validate()
    if failed:
        print(f"cellseg predict: {len(failed)} image(s) failed: {', '.join(failed)}",
              file=sys.stderr)
    return len(failed)
