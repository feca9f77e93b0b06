"""Benchmark the competition metric end to end from RLE strings.

    .venv/bin/python -m bench metric
    CELLSEG_BENCH_IMAGES=60 .venv/bin/python -m bench metric   # smaller run

240 synthetic 520x704 images x 300 cells (random ellipses on a jittered grid, drawn with
OpenCV), predictions = the same cells moved, resized, dropped, plus extra cells. Scored by

* the kit: ``cellseg.core.metrics.score`` on the RLE strings (parse, sparse intersections, match);
* a reference that decodes every RLE to a dense mask, encodes it with ``pycocotools.mask``
  and uses ``pycocotools.mask.iou`` per image, then the same greedy matching. The reference is
  timed on a subset and extrapolated linearly to all images (stated in the table).

Targets: >= 10x faster than the reference, <= 2 s for the 240 images, peak memory <= 500 MB.
"""

from __future__ import annotations

import os
import resource
import time
import tracemalloc

import numpy as np

SHAPE = (520, 704)
N_IMAGES = int(os.environ.get("CELLSEG_BENCH_IMAGES", 240))
N_CELLS = 300  # 15 rows x 20 columns
REF_IMAGES = int(os.environ.get("CELLSEG_BENCH_REF_IMAGES", 8))


def make_image(seed: int) -> tuple[list[str], list[str]]:
    """Truth and predicted RLE strings of one synthetic image (non-overlapping each)."""
    import cv2

    from cellseg.core.masks import encode_labels

    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(np.arange(15), np.arange(20), indexing="ij")
    cy = gy.ravel() * 34 + 17 + rng.integers(-3, 4, N_CELLS)
    cx = gx.ravel() * 35 + 17 + rng.integers(-3, 4, N_CELLS)
    ay, ax = rng.integers(6, 15, N_CELLS), rng.integers(6, 15, N_CELLS)
    angle = rng.uniform(0, 180, N_CELLS)
    truth = np.zeros(SHAPE, np.int32)
    pred = np.zeros(SHAPE, np.int32)
    k = 0
    for i in range(N_CELLS):
        cv2.ellipse(truth, (int(cx[i]), int(cy[i])), (int(ax[i]), int(ay[i])), angle[i], 0, 360,
                    i + 1, -1)
        if rng.random() < 0.05:
            continue  # missed cell
        k += 1
        d = rng.integers(-2, 3, 4)
        cv2.ellipse(pred, (int(cx[i] + d[0]), int(cy[i] + d[1])),
                    (max(3, int(ax[i] + d[2])), max(3, int(ay[i] + d[3]))), angle[i], 0, 360,
                    k, -1)
    for _ in range(10):  # false positives
        k += 1
        cv2.circle(pred, (int(rng.integers(0, 704)), int(rng.integers(0, 520))),
                   int(rng.integers(3, 8)), k, -1)
    return encode_labels(truth), encode_labels(pred)


def reference_image_score(truth: list[str], pred: list[str]) -> float:
    """pycocotools IoU per image (dense decode + encode), then greedy one-to-one matching."""
    from pycocotools import mask as mask_utils

    from cellseg.core import rle

    def encode(rles: list[str]) -> list[dict]:
        return [mask_utils.encode(np.asfortranarray(rle.decode(r, SHAPE).astype(np.uint8)))
                for r in rles]

    t, p = encode(truth), encode(pred)
    if not t and not p:
        return 1.0
    if not t or not p:
        return 0.0
    iou = np.asarray(mask_utils.iou(p, t, [0] * len(t))).T  # (T, P)
    ti, pi = np.nonzero(iou > 0.5)
    order = np.lexsort((pi, ti, -iou[ti, pi]))
    used_t, used_p, matched = set(), set(), []
    for k in order:
        if ti[k] not in used_t and pi[k] not in used_p:
            used_t.add(ti[k])
            used_p.add(pi[k])
            matched.append(iou[ti[k], pi[k]])
    matched = np.asarray(matched)
    scores = []
    for thr in np.arange(10, 20) / 20:
        tp = int((matched > thr).sum())
        scores.append(tp / (len(t) + len(p) - tp))
    return float(np.mean(scores))


def main() -> None:
    from cellseg.core import metrics

    t0 = time.perf_counter()
    data = [make_image(seed) for seed in range(N_IMAGES)]
    gen_s = time.perf_counter() - t0
    truth = {f"img{i:04d}": d[0] for i, d in enumerate(data)}
    pred = {f"img{i:04d}": d[1] for i, d in enumerate(data)}
    n_true = sum(map(len, truth.values()))
    n_pred = sum(map(len, pred.values()))

    # kit: best of 3 timed runs, then one run under tracemalloc for the peak
    times, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        report = metrics.score(truth, pred)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    kit_s, kit_cpu = min(times), min(cpu)
    tracemalloc.start()
    metrics.score(truth, pred)
    _, kit_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # reference on a subset, extrapolated
    ids = list(truth)[:REF_IMAGES]
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    ref_scores = {k: reference_image_score(truth[k], pred[k]) for k in ids}
    ref_sub_s, ref_sub_cpu = time.perf_counter() - t0, time.process_time() - c0
    _, ref_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    scale = len(truth) / len(ids)
    ref_s, ref_cpu = ref_sub_s * scale, ref_sub_cpu * scale
    diff = max(abs(report.per_image[k] - ref_scores[k]) for k in ids)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"{len(truth)} images x {N_CELLS} cells ({n_true} true, {n_pred} predicted cells), "
          f"{SHAPE[0]}x{SHAPE[1]}; scored end to end from RLE strings; data generation "
          f"{gen_s:.1f} s (not timed); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores\n")
    print("| implementation | images timed | wall s (all images) | CPU s (all images) "
          "| CPU ms / image | peak MB (tracemalloc) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| cellseg.core.metrics.score, best of 3 | {len(truth)} | {kit_s:.2f} | {kit_cpu:.2f} | "
          f"{1000 * kit_cpu / len(truth):.2f} | {kit_peak / 2**20:.1f} |")
    print(f"| pycocotools mask.iou reference | {len(ids)}, extrapolated x{scale:.0f} | "
          f"{ref_s:.1f} | {ref_cpu:.1f} | {1000 * ref_sub_cpu / len(ids):.1f} | "
          f"{ref_peak / 2**20:.1f} |")
    print(f"\nspeedup (CPU): {ref_cpu / kit_cpu:.0f}x, (wall): {ref_s / kit_s:.0f}x; "
          f"score {report.score:.4f}; max |kit - reference| image score on the subset: "
          f"{diff:.1e}; process peak RSS {rss:.0f} MB (includes the generated data and imports)")
    ok = ref_cpu / kit_cpu >= 10 and kit_cpu <= 2.0 and kit_peak <= 500 * 2**20
    print(f"targets (>= 10x, <= 2 s, <= 500 MB; CPU time, the wall time depends on the "
          f"machine's load): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
