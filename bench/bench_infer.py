"""Inference cost per image, by stage, and peak memory vs the number of images.

    .venv/bin/python -m bench infer
    CELLSEG_BENCH_IMAGES=10 CELLSEG_BENCH_RSS=10,100 .venv/bin/python -m bench infer

1. Per-image wall time of ``predict_to_submission`` broken down by stage (model forward,
   tiling + blending + seam merging, dense decode, voting, postprocess, read, RLE + writing,
   final ``validate_submission`` of the whole file) for
   the UNet (``unet_tiny`` model args) and Mask R-CNN (``maskrcnn_tiny`` model args), plus the
   competition-recipe architectures (UNet-ResNet34, Mask R-CNN R50), randomly initialised, with the default inference config on CPU (whole image as one
   tile), and again with 512-pixel tiles and 96 pixels of overlap (blending / seam merging
   exercised; the tiled Mask R-CNN case uses a third of the images). Target: everything
   but the forward pass <= 10 % of the total. Random weights make decoding and postprocessing
   busier than a trained model does (noise maps, many weak detections): an upper bound.
2. Peak RSS (``ru_maxrss`` of a ``cellseg predict`` subprocess) for 10 and 100 images: the
   predictor streams, so the ratio must stay <= 1.1.

Images are synthetic 520x704 frames (``cellseg.data.synthetic.render``) written to a temp folder.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
STAGES = ("forward", "tiling", "decode", "vote", "postprocess", "read", "write", "validate")


def _write_images(folder: Path, n: int) -> None:
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    folder.mkdir(parents=True, exist_ok=True)
    # 3 distinct frames (one per competition cell type), repeated: rendering is not the point
    frames = [render(t, seed=k)[0] for k, t in enumerate(("shsy5y", "astro", "cort"))]
    for k in range(n):
        write_png(folder / f"img{k:04d}.png", frames[k % 3])


def _checkpoint(family: str, config: str, path: Path) -> Path:
    import torch

    from cellseg.checkpoint import save_checkpoint
    from cellseg.config import load_train_config
    from cellseg.models import get_family

    torch.manual_seed(0)
    cfg = load_train_config(config)
    model = get_family(family).build(**cfg.model.args)
    save_checkpoint(path, model=model.state_dict(), spec=model.spec)
    return path


def _stage_table(tmp: Path, n_images: int) -> None:
    import torch

    from cellseg.data.sartorius import list_images
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import PredictOptions, Timer, load_models, predict_to_submission

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    images = tmp / f"images{n_images}"
    _write_images(images, n_images)
    records = list_images(images)
    base = load_inference_config()
    print(f"{n_images} synthetic 520x704 images, default inference config (tile_size {base.tile_size}, "
          f"batch {base.batch_size}), CPU, {torch.get_num_threads()} threads, random weights. "
          f"Seconds per image by stage.\n")
    print("| case | " + " | ".join(STAGES) + " | total s/img | non-forward share | cells/img |")
    print("|---" * (len(STAGES) + 4) + "|")
    # Mask R-CNN: 2000 detections per tile make the mask head's activations ~2 GB per tile on
    # CPU, so one tile per forward; its tiled case runs on fewer images (it is slow on CPU)
    cases = [("unet", "unet", "unet_tiny", {}, n_images),
             ("unet tiled 512/96", "unet", "unet_tiny", {"tile_size": 512}, n_images),
             ("maskrcnn", "maskrcnn", "maskrcnn_tiny", {"batch_size": 1}, n_images),
             ("maskrcnn tiled 512/96", "maskrcnn", "maskrcnn_tiny",
              {"batch_size": 1, "tile_size": 512}, max(1, n_images // 3)),
             # the architectures a user submits with: their forward pass dominates even more
             ("unet resnet34 (recipe)", "unet", "unet_competition_finetune", {}, n_images),
             ("maskrcnn R50 (recipe)", "maskrcnn", "maskrcnn_competition_finetune",
              {"batch_size": 1}, max(1, n_images // 3))]
    quiet = PredictOptions(progress=False)
    for label, family, config, changes, n in cases:
        cfg = dataclasses.replace(base, **changes)
        ckpt = tmp / f"{config}.pt"
        if not ckpt.exists():
            _checkpoint(family, config, ckpt)
        models = load_models([ckpt], device="cpu")
        # warm-up (first-call allocations, lazy imports) outside the timing
        predict_to_submission(models, records[:1], cfg, tmp / "warm.csv", quiet)
        timer = Timer()
        t0 = time.perf_counter()
        predict_to_submission(models, records[:n], cfg, tmp / f"{family}.csv", quiet,
                              timer=timer)
        total = time.perf_counter() - t0
        with open(tmp / f"{family}.csv") as fh:
            n_cells = sum(1 for _ in fh) - 1
        sec = timer.seconds
        other = total - sec.get("forward", 0.0)
        cells = " | ".join(f"{sec.get(s, 0.0) / n:.3f}" for s in STAGES)
        print(f"| {label} | {cells} | {total / n:.3f} | {100 * other / total:.1f} % "
              f"| {n_cells / n:.0f} |", flush=True)


_CHILD = """
import resource, sys
from cellseg.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(rc)
"""


def _rss_table(tmp: Path, counts: list[int]) -> None:
    ckpt = tmp / "unet.pt"
    if not ckpt.exists():
        _checkpoint("unet", "unet_tiny", ckpt)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="2")
    print("\n| images | peak RSS MB | wall s | ratio to first |")
    print("|---|---|---|---|")
    first = None
    for n in counts:
        folder = tmp / f"rss{n}"
        _write_images(folder, n)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, "predict", "--weights", str(ckpt),
                               "--images", str(folder), "--out", str(tmp / f"rss{n}.csv"),
                               "--device", "cpu", "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"| {n} | failed (exit {proc.returncode}): {proc.stderr[-300:]!r} | | |")
            continue
        kb = int(next(line.split()[1] for line in proc.stdout.splitlines()
                      if line.startswith("MAXRSS_KB")))
        first = first or kb
        print(f"| {n} | {kb / 1024:.0f} | {wall:.1f} | {kb / first:.3f} |")


def main() -> None:
    n_images = int(os.environ.get("CELLSEG_BENCH_IMAGES", "10"))
    counts = [int(c) for c in os.environ.get("CELLSEG_BENCH_RSS", "10,100").split(",") if c]
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        _stage_table(Path(tmp), n_images)
        if counts:
            _rss_table(Path(tmp), counts)


if __name__ == "__main__":
    main()
