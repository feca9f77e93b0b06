"""COCO-style mask AP/AR as LIVECell reports it: maxDets 2000 and LIVECell's size bins.

    from cellseg.core.metrics_coco import coco_metrics
    m = coco_metrics(truth, pred, scores)   # image id -> RLE strings / label image / Instances
    m["AP"], m["AP50"], m["AP75"], m["AR"], m["AP_small"], ...

* IoU thresholds 0.50:0.05:0.95, maxDets (100, 500, 2000); every headline number is read at
  maxDets = 2000 straight from the accumulated ``precision`` / ``recall`` arrays, because
  ``COCOeval.summarize()`` reports at the FIRST maxDets entry (and hard-codes 100 for the size
  bins), which would silently truncate crowded LIVECell images.
* Size bins (LIVECell paper): small < 324 px^2, medium 324-961, large > 961. COCO's areaRng
  test is inclusive at both ends, so an object of exactly 324 (961) px counts in both bins.
  The truth "area" is the mask's pixel count.
* Backend: ``faster-coco-eval`` (C++; same numbers as pycocotools, pinned by a test) by default;
  ``backend="pycocotools"`` for the reference implementation.
* Predictions without scores (a submission.csv) get score 1.0: COCO AP then ranks them by
  nothing (ties keep input order), which is what "every mask counts fully" means.
* Empty masks are left out on both sides (COCO cannot rate them). Undefined numbers are -1, as
  in pycocotools.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Mapping, Sequence

import numpy as np

from cellseg.core.masks import SHAPE, MaskInput, as_runs

MAX_DETS: tuple[int, ...] = (100, 500, 2000)
# LIVECell size bins in px^2 (small < 18^2, large > 31^2)
AREA_RANGES: dict[str, list[float]] = {"small": [0.0, 324.0], "medium": [324.0, 961.0],
                                       "large": [961.0, 1e10]}
SUMMARY_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                                 "AR", "AR_small", "AR_medium", "AR_large", "AR@100", "AR@500")


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def build_coco(truth: Mapping[str, MaskInput], pred: Mapping[str, MaskInput],
               scores: Mapping[str, Sequence[float]] | None = None, *,
               shape: tuple[int, int] | Mapping[str, tuple[int, int]] = SHAPE,
               ) -> tuple[dict, list[dict]]:
    """COCO ground-truth dict and detection list for the images of ``truth``.

    Image ids are 1.. in ``truth`` order, ``file_name`` is the kit's image id; one category
    (``cell``, id 1). Detections without scores get 1.0.
    """
    from pycocotools import mask as mask_utils  # lazy

    unknown = [k for k in pred if k not in truth]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted image ids are not in the truth, e.g. "
                         f"{unknown[:3]}")
    images, anns, dets = [], [], []
    for k, (image_id, t) in enumerate(truth.items(), start=1):
        shp = shape[image_id] if isinstance(shape, Mapping) else shape
        t_runs = as_runs(t, shp)
        images.append({"id": k, "file_name": str(image_id), "height": int(t_runs.shape[0]),
                       "width": int(t_runs.shape[1])})
        areas = t_runs.areas
        for i, seg in enumerate(t_runs.to_coco()):
            if seg is None:
                continue
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": 1,
                         "segmentation": seg, "area": float(areas[i]),
                         "bbox": [float(v) for v in mask_utils.toBbox(seg)], "iscrowd": 0})
        if image_id not in pred:
            continue
        p_runs = as_runs(pred[image_id], t_runs.shape)
        sc = np.ones(p_runs.n) if scores is None or image_id not in scores \
            else np.asarray(scores[image_id], dtype=np.float64)
        if sc.size != p_runs.n:
            raise ValueError(f"image {image_id}: {sc.size} scores for {p_runs.n} predictions")
        for i, seg in enumerate(p_runs.to_coco()):
            if seg is not None:
                dets.append({"image_id": k, "category_id": 1, "segmentation": seg,
                             "score": float(sc[i])})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "cell"}]}
    return gt, dets


def evaluate_coco(gt: dict, dets: list[dict], *, backend: str = "faster",
                  max_dets: Sequence[int] = MAX_DETS,
                  area_ranges: Mapping[str, Sequence[float]] = AREA_RANGES) -> dict[str, Any]:
    """Run COCOeval (segm) and return its accumulated arrays.

    Returns:
        ``{"precision": (T, R, K, A, M) float64, "recall": (T, K, A, M) float64,
        "iou_thrs": (T,), "area_labels": ["all", ...], "max_dets": [...]}`` as COCOeval lays
        them out (-1 where undefined).
    """
    import copy

    max_dets = sorted(int(m) for m in max_dets)
    labels = ["all", *area_ranges]
    rngs = [[0.0, 1e10], *[[float(a), float(b)] for a, b in area_ranges.values()]]
    gt = copy.deepcopy(gt)  # loadRes and COCO() annotate the dicts they are given
    dets = copy.deepcopy(dets)
    quiet = contextlib.redirect_stdout(io.StringIO())  # pycocotools prints progress
    with quiet:
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(dets) if dets else _empty_res(COCO, gt)
            ev = COCOeval_faster(coco_gt, coco_dt, iouType="segm", print_function=lambda *a: None,
                                 ranges=dict(zip(labels[1:], rngs[1:])), rle_iou_max_workers=1)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dets) if dets else _empty_res(COCO, gt)
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        else:
            raise ValueError(f"unknown COCO backend {backend!r}: use 'faster' or 'pycocotools'")
        ev.params.maxDets = list(max_dets)
        ev.params.areaRng = [list(r) for r in rngs]
        ev.params.areaRngLbl = labels
        ev.evaluate()
        ev.accumulate()
    return {"precision": np.asarray(ev.eval["precision"], dtype=np.float64),
            "recall": np.asarray(ev.eval["recall"], dtype=np.float64),
            "iou_thrs": np.asarray(ev.params.iouThrs, dtype=np.float64),
            "area_labels": labels, "max_dets": max_dets}


def _empty_res(coco_cls: Any, gt: dict) -> Any:
    res = coco_cls()
    res.dataset = {"images": list(gt["images"]), "annotations": [],
                   "categories": list(gt["categories"])}
    res.createIndex()
    return res


def summarize(arrays: Mapping[str, Any], max_det: int = 2000) -> dict[str, float]:
    """Headline numbers read from the accumulated arrays at ``max_det`` (not summarize()'s).

    Keys: ``SUMMARY_KEYS`` (AP over IoU .50:.95, AP50, AP75, AP per size bin, AR and AR per
    bin at ``max_det``, AR at 100 and 500 detections). -1 where undefined.
    """
    prec, rec = arrays["precision"], arrays["recall"]
    thrs, labels, dets = arrays["iou_thrs"], list(arrays["area_labels"]), list(arrays["max_dets"])
    m = dets.index(max_det)

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    def t_index(v: float) -> int:
        return int(np.flatnonzero(np.isclose(thrs, v))[0])

    out = {"AP": mean(prec[:, :, :, 0, m]),
           "AP50": mean(prec[t_index(0.5), :, :, 0, m]),
           "AP75": mean(prec[t_index(0.75), :, :, 0, m])}
    for name in labels[1:]:
        out[f"AP_{name}"] = mean(prec[:, :, :, labels.index(name), m])
    out["AR"] = mean(rec[:, :, 0, m])
    for name in labels[1:]:
        out[f"AR_{name}"] = mean(rec[:, :, labels.index(name), m])
    for d in dets:
        if d != max_det:
            out[f"AR@{d}"] = mean(rec[:, :, 0, dets.index(d)])
    return out


def coco_metrics(truth: Mapping[str, MaskInput], pred: Mapping[str, MaskInput],
                 scores: Mapping[str, Sequence[float]] | None = None, *,
                 shape: tuple[int, int] | Mapping[str, tuple[int, int]] = SHAPE,
                 max_dets: Sequence[int] = MAX_DETS,
                 area_ranges: Mapping[str, Sequence[float]] = AREA_RANGES,
                 backend: str = "faster") -> dict[str, float]:
    """COCO mask AP/AR at the largest ``max_dets`` (2000) with LIVECell size bins.

    Args:
        truth: image id -> true cells (RLE strings, label image, ``Runs``); may overlap.
        pred: image id -> predicted cells (same forms or ``Instances``).
        scores: image id -> (P,) confidences; missing -> 1.0 each. ``Instances`` inputs
            without ``scores`` use their own ``.scores``.
    Returns:
        ``SUMMARY_KEYS`` -> float, plus ``n_images``, ``n_true``, ``n_pred``, ``max_dets``.
    """
    if scores is None:
        from_inst = {k: v.scores for k, v in pred.items() if hasattr(v, "scores")}
        scores = from_inst or None
    gt, dets = build_coco(truth, pred, scores, shape=shape)
    arrays = evaluate_coco(gt, dets, backend=backend, max_dets=max_dets, area_ranges=area_ranges)
    out: dict[str, Any] = summarize(arrays, max(max_dets))
    out.update(n_images=len(gt["images"]), n_true=len(gt["annotations"]), n_pred=len(dets),
               max_dets=max(max_dets))
    return out
