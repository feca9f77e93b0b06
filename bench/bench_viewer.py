"""Benchmark the results viewer: time and size of ``DIR/index.html`` + its pictures.

    .venv/bin/python -m bench viewer
    CELLSEG_BENCH_IMAGES=60 .venv/bin/python -m bench viewer   # smaller run

240 synthetic 520x704 images x 300 cells (``bench.bench_metric.make_image``: ellipses on a
jittered grid, predictions moved, resized, dropped, plus extras), each with a grayscale PNG drawn
from its truth plus blurred noise (JPEG size close to a real image's; the picture sizes, not the
cell count, set the page's size). Two pages are written: one run (``cellseg score --report``) and two runs side by
side (``--compare``). Timed: everything ``write_viewer`` does (read each image, match, outline,
encode JPEG/PNG, write files and the page); not timed: data generation and RLE parsing.

Targets: one run <= 10 s wall for 240 images, each page (HTML + pictures) <= 50 MB, and peak
traced memory that does not grow with the number of images (the writer streams). On a loaded
machine the wall time says little: the CPU time per image is the figure to compare.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

N_IMAGES = int(os.environ.get("CELLSEG_BENCH_IMAGES", 240))


def _folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def make_data(folder: Path, n: int) -> tuple[dict, dict, dict, dict]:
    """(truth, pred A, pred B, image paths): image id -> ``Runs`` / path; the PNGs are written
    into ``folder``."""
    import cv2

    from bench.bench_metric import SHAPE, make_image
    from cellseg.core.masks import runs_from_rles

    truth, pred_a, pred_b, paths = {}, {}, {}, {}
    rng = np.random.default_rng(0)
    for i in range(n):
        t, p = make_image(i)
        _, p2 = make_image(10_000 + i)  # B: another draw, scored against the same truth
        key = f"img{i:04d}"
        truth[key] = runs_from_rles(t, SHAPE)
        pred_a[key] = runs_from_rles(p, SHAPE)
        pred_b[key] = runs_from_rles(p2, SHAPE)
        # blurred noise: its JPEG is about as large as a real phase-contrast image's (a bit
        # larger: 110 vs 92 kB at quality 75 for the Sartorius sample), white noise is far larger
        noise = cv2.GaussianBlur(rng.normal(0, 16, SHAPE), (0, 0), 1.0)
        gray = 120 + 25 * (truth[key].label_image() > 0) + noise
        paths[key] = folder / f"{key}.png"
        cv2.imwrite(str(paths[key]), np.clip(gray, 0, 255).astype(np.uint8))
    return truth, pred_a, pred_b, paths


def main() -> None:
    from cellseg.viewer import ViewRun, write_viewer

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "images").mkdir()
        t0 = time.perf_counter()
        truth, pred_a, pred_b, paths = make_data(tmp_path / "images", N_IMAGES)
        gen_s = time.perf_counter() - t0
        ids = list(truth)
        types = {k: ("astro", "cort", "shsy5y")[i % 3] for i, k in enumerate(ids)}
        rows = []
        for name, runs in (("one run", [ViewRun("A", pred_a)]),
                           ("A vs B", [ViewRun("A", pred_a), ViewRun("B", pred_b)])):
            out = tmp_path / name.replace(" ", "_")
            t0, c0 = time.perf_counter(), time.process_time()
            page = write_viewer(out, runs, ids, truth=truth, cell_types=types, image_paths=paths)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append((name, wall, cpu, _folder_mb(out), page.stat().st_size / 2**20))
        # memory, apart (tracemalloc slows numpy-heavy code): one thread, a quarter then all
        peaks = []
        for n in (max(1, N_IMAGES // 4), N_IMAGES):
            tracemalloc.start()
            write_viewer(tmp_path / f"mem{n}", [ViewRun("A", pred_a)], ids[:n], truth=truth,
                         image_paths=paths, threads=1)
            peaks.append((n, tracemalloc.get_traced_memory()[1] / 2**20))
            tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{N_IMAGES} images x 300 cells, 520x704; data generation {gen_s:.1f} s (not timed); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| page | wall s | CPU s (all threads) | CPU ms / image | page + pictures MB "
          "| index.html MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, cpu, mb, html_mb in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {1000 * cpu / N_IMAGES:.1f} | {mb:.1f} | "
              f"{html_mb:.2f} |")
    print("\npeak traced memory (one run, 1 thread): " + ", ".join(
        f"{n} images {mb:.0f} MB" for n, mb in peaks) + " (flat: the writer streams)")
    print(f"\nprocess peak RSS {rss:.0f} MB (includes the generated data and imports)")
    scale = 240 / N_IMAGES
    size_ok = max(r[3] for r in rows) * scale <= 50
    wall, cpu = rows[0][1] * scale, rows[0][2] * scale
    print(f"targets, scaled to 240 images: every page <= 50 MB: {'met' if size_ok else 'NOT met'}; "
          f"one run <= 10 s: wall {wall:.1f} s ({'met' if wall <= 10 else 'NOT met'}), CPU "
          f"{cpu:.1f} s ({'met' if cpu <= 10 else 'NOT met'}; the wall time follows the "
          f"machine's load, the CPU time does not)")

if __name__ == "__main__":
    main()
