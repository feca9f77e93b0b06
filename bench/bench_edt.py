"""The loader's distance transform: OpenCV (``cellseg.data.targets``) vs the ``edt`` package.

    .venv/bin/python -m bench edt            # ~1 min on one core; needs `pip install edt`

The UNet centre target runs ONE exact Euclidean transform per sample on a shelf-packed canvas of
the cells' boxes (``targets._centre_from_pairs``). This bench records those canvases for real
images of ``../shared/data/sartorius_409`` (5 per cell type, whole images: the worst case; a
256 px training crop holds ~1/5 of the cells), then times, on exactly those inputs, with one thread:

* ``opencv``: ``cv2.distanceTransform(canvas, DIST_L2, DIST_MASK_PRECISE)`` (the current path);
* ``edt``: ``edt.edt(canvas, black_border=True, parallel=1)``;

and compares the targets after the kit's exactness step (``sqrt(rint(d * d))``): bit-identical or
not, and the largest difference. It also times the whole centre map and the three UNet maps, so
the transform's share of the target cost is visible.
"""

from __future__ import annotations

import os
import time

import numpy as np

from bench import SHARED

PER_TYPE = 5
REPEAT = 5


def _best(fn, *args) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.process_time()
        fn(*args)
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    import cv2

    cv2.setNumThreads(1)
    try:
        import edt
    except ImportError:
        print("edt is not installed (pip install edt): nothing to compare")
        return
    from cellseg.data import sartorius, targets

    root = SHARED / "sartorius_409"
    if not (root / "train.csv").is_file():
        print(f"no {root}: nothing to measure")
        return
    recs = sartorius.load_train(root)
    picked = []
    for t in ("astro", "cort", "shsy5y"):
        picked += sorted((r for r in recs if r.cell_type == t), key=lambda r: -r.n_instances
                         )[:PER_TYPE]
    canvases: list[np.ndarray] = []
    real = cv2.distanceTransform

    def recording(src, *args, **kw):
        canvases.append(src.copy())
        return real(src, *args, **kw)

    layers_of = {}
    for r in picked:
        masks = r.masks()
        layers_of[r.image_id] = targets.layers_from_masks(masks)
    cv2.distanceTransform = recording
    try:
        for r in picked:
            targets.centre_from_layers(layers_of[r.image_id])
    finally:
        cv2.distanceTransform = real
    t_cv = t_edt = 0.0
    identical = 0
    worst = 0.0
    for canvas in canvases:
        a = real(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        b = edt.edt(canvas, black_border=True, parallel=1).astype(np.float32)
        fa, fb = np.sqrt(np.rint(a * a)), np.sqrt(np.rint(b * b))
        identical += bool(np.array_equal(fa, fb))
        worst = max(worst, float(np.abs(fa - fb).max()))
        t_cv += _best(real, canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        t_edt += _best(lambda c: edt.edt(c, black_border=True, parallel=1), canvas)
    t_centre = sum(_best(targets.centre_from_layers, layers_of[r.image_id]) for r in picked)
    t_maps = sum(_best(targets.unet_maps_from_layers, layers_of[r.image_id]) for r in picked)
    n = len(canvases)
    size = np.mean([c.size for c in canvases]) / 1e6
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n} canvases of {len(picked)} whole sartorius_409 images ({PER_TYPE} most crowded per "
          f"type, {sum(r.n_instances for r in picked)} cells), mean {size:.2f} Mpx; best of "
          f"{REPEAT}, CPU ms per image, 1 thread; load average {load:.1f} on {os.cpu_count()} "
          "cores\n")
    print("| step | ms per image |")
    print("|---|---:|")
    print(f"| distance transform, opencv (current) | {1e3 * t_cv / n:.2f} |")
    print(f"| distance transform, edt | {1e3 * t_edt / n:.2f} |")
    print(f"| whole centre map (opencv path) | {1e3 * t_centre / n:.2f} |")
    print(f"| all three UNet maps (opencv path) | {1e3 * t_maps / n:.2f} |")
    print(f"\nafter sqrt(rint(d*d)): {identical}/{n} canvases bit-identical, largest difference "
          f"{worst:.3g} px; edt/opencv time {t_edt / t_cv:.2f}x")


if __name__ == "__main__":
    main()
