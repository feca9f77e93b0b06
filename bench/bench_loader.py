"""Will the GPU wait? Training samples per second per CPU core, for every recipe config.

    .venv/bin/python -m bench loader                 # ~1-2 min idle
    BENCH_QUICK=1 .venv/bin/python -m bench loader   # fewer samples

One process, one thread (torch, OpenCV and BLAS set to 1), so the figure is per core; workers
scale it by their number. Steady state: every image is decoded and cached once before timing
(training does that in its first epoch). Each config runs with its own augmentation and crop
(512 px crops for the UNet recipes, whole images for Mask R-CNN), on the real samples in
../shared/data when present (1 competition image with 395 cells, 5 LIVECell images), else on
synthetic images. A sample = ``dataset[i]``: window, albumentations, targets, normalisation.

Prints ``loader <config> <samples/s per core>`` (samples per CPU-second) per config, then a table with the targets
(UNet recipes >= 100, Mask R-CNN recipes >= 40 samples/s per core, issue 12).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import SHARED

TARGETS = {"unet": 100.0, "maskrcnn": 40.0}


def _records(tmp: Path) -> tuple[list, str]:
    from cellseg.data.loaders import load_records

    if (SHARED / "sartorius").is_dir() and (SHARED / "livecell").is_dir():
        recs = load_records(SHARED / "sartorius") + load_records(SHARED / "livecell", "val")
        return recs, f"real samples ({SHARED})"
    from cellseg.data.synthetic import generate

    generate(tmp / "synth", n_images=6, seed=0, n_test=0, n_semi=0, n_livecell=0)
    return load_records(tmp / "synth" / "competition"), "synthetic images"


def loader_rate(cfg, family, records, n_samples: int) -> tuple[float, float, str]:
    """(samples per CPU-second and per wall-second of ``dataset[i]`` in steady state, shape of
    one target). CPU time is the per-core figure on a shared machine: wall time also counts
    the time other processes hold the core."""
    import numpy as np

    from cellseg.data.sampling import build_train_data

    spec = family.target_spec(**cfg.model.args)
    ds, sampler = build_train_data(cfg.data, spec, records, seed=0)
    np.random.seed(0)
    for i in range(len(ds)):  # steady state: decode + cache every image once
        ds.image_and_layers(i)
    order = [i % len(ds) for i in range(n_samples)]
    _, target = ds[order[0]]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in order:
        ds[i]
    cpu = n_samples / (time.process_time() - c0)
    wall = n_samples / (time.perf_counter() - t0)
    shape = {k: tuple(v.shape) for k, v in target.items() if hasattr(v, "shape")}
    return cpu, wall, ", ".join(f"{k} {v}" for k, v in shape.items())


def main() -> None:
    import cv2
    import torch

    from cellseg.config import config_names, load_train_config
    from cellseg.models import get_family

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    quick = os.environ.get("BENCH_QUICK") == "1"
    configs = [n for n in config_names() if n.startswith(("unet_", "maskrcnn_"))
               and not n.endswith("_tiny")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        records, what = _records(Path(tmp))
        for name in configs:
            cfg = load_train_config(name)
            family = get_family(cfg.model.family)
            n = 12 if quick else 48
            rate, wall, shape = loader_rate(cfg, family, records, n)
            print(f"loader {name} {rate:.1f}", flush=True)
            rows.append((name, cfg, rate, wall, shape))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nsamples per CPU-second (= per core) on {what}; 1 thread; load average {load:.1f} "
          f"on {os.cpu_count()} cores while measuring (wall rate shown too)\n")
    print("| config | crop | augment | target | samples/s per core | wall samples/s | target "
          "| met |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cfg, rate, wall, shape in rows:
        goal = TARGETS[cfg.model.family]
        crop = cfg.data.crop_size or "whole image"
        print(f"| {name} | {crop} | {cfg.data.augment} | {shape} | {rate:.1f} | {wall:.1f} | "
              f">= {goal:.0f} | {'yes' if rate >= goal else 'NO'} |")


if __name__ == "__main__":
    main()
