"""The plain-UNet reference the kit's recipe must beat on real images (issue 13).

    python -m bench plain_unet            # train on 5 real samples, score the 6th (BENCH_STEPS=300,
                                          # BENCH_QUICK=1: 30 steps; ~4 s/step on one idle core)
    python -m bench.plain_unet --train /data/sartorius /data/livecell:val --test held_out/ \\
        --steps 300 --out runs/plain [--tta] [--threads 1]

A from-scratch ``smp.Unet("resnet18", in_channels=1, classes=3)`` (interior / border / background),
cross-entropy + soft Dice, Adam 1e-3 with cosine decay over the run, random 256x256 crops with
flips and 90-degree rotations, batch 8, per-image standardisation. Inference runs the whole image
(padded to a multiple of 32; optional 4-flip TTA) and splits cells by watershed on interior
markers. The loop, targets, loss and decode are written here, independently of the kit, on
purpose: only reading annotations (``cellseg.data.sources``), RLE encoding and the competition metric
(``cellseg.core.metrics``) are shared, so both methods are scored by the same code.

``cellseg cv --reference`` runs this module as a subprocess per fold. Outputs in ``--out``:
``model.pt`` (a plain state dict), ``pred.csv`` (submission rows for the ``--test`` images),
``scores.json`` (per test image score when the test images are annotated, and timing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

BACKGROUND, INTERIOR, BORDER = 0, 1, 2


# ----------------------------------------------------------------------------- targets / data


def class_map(labels: np.ndarray) -> np.ndarray:
    """(H, W) int label image -> (H, W) int64 classes: 0 background, 1 interior, 2 border.

    Border = the cell's own pixels on its outline (skimage ``find_boundaries`` mode "inner"),
    which also separates touching cells by two border pixels.
    """
    from skimage.segmentation import find_boundaries

    out = np.zeros(labels.shape, np.int64)
    fg = labels > 0
    out[fg] = INTERIOR
    out[find_boundaries(labels, mode="inner") & fg] = BORDER
    return out


def standardise(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W) float32 with zero mean and unit variance (per image)."""
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1.0)


def load_annotated(specs: Sequence[str]) -> list:
    """Annotated records of ``specs`` (paths, optionally ``PATH:SPLIT``)."""
    from cellseg.data.sources import load_sources

    return load_sources(specs, annotated=True)


def random_batch(images: list[np.ndarray], targets: list[np.ndarray], rng: np.random.Generator,
                 batch: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, crop, crop) float32 images and (B, crop, crop) int64 classes: random image, random
    crop, random flips and 90-degree rotation (images smaller than ``crop`` are zero-padded)."""
    xs = np.zeros((batch, 1, crop, crop), np.float32)
    ys = np.zeros((batch, crop, crop), np.int64)
    for b in range(batch):
        k = int(rng.integers(len(images)))
        img, tgt = images[k], targets[k]
        h, w = img.shape
        y0 = int(rng.integers(max(h - crop, 0) + 1))
        x0 = int(rng.integers(max(w - crop, 0) + 1))
        ci, ct = img[y0:y0 + crop, x0:x0 + crop], tgt[y0:y0 + crop, x0:x0 + crop]
        if rng.random() < 0.5:
            ci, ct = ci[:, ::-1], ct[:, ::-1]
        if rng.random() < 0.5:
            ci, ct = ci[::-1], ct[::-1]
        r = int(rng.integers(4))
        ci, ct = np.rot90(ci, r), np.rot90(ct, r)
        xs[b, 0, :ci.shape[0], :ci.shape[1]] = ci
        ys[b, :ct.shape[0], :ct.shape[1]] = ct
    return xs, ys


# ----------------------------------------------------------------------------- model / loop


def build_model():
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3)


def loss_fn(logits, target):
    """Cross-entropy + multi-class soft Dice (mean over the 3 classes)."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return ce + dice.mean(), {"ce": float(ce.detach()), "dice": float(dice.mean().detach())}


def train(records: Sequence, steps: int, *, batch: int = 8, crop: int = 256, lr: float = 1e-3,
          seed: int = 0, log_every: int = 25, log=print):
    """Train the reference on ``records`` for ``steps`` optimiser steps; returns the model."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = [standardise(r.read_image()) for r in records]
    targets = [class_map(r.label_image()) for r in records]
    model = build_model().to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = random_batch(images, targets, rng, batch, crop)
        x = torch.from_numpy(xs).to(memory_format=torch.channels_last)
        loss, parts = loss_fn(model(x), torch.from_numpy(ys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not np.isfinite(float(loss.detach())):
            raise FloatingPointError(f"plain UNet: non-finite loss at step {step}: {parts}")
        if log_every and (step % log_every == 0 or step == steps):
            log(f"plain step {step}/{steps}: loss {float(loss.detach()):.4f} ce {parts['ce']:.4f} "
                f"dice {parts['dice']:.4f} ({(time.perf_counter() - t0) / step:.2f} s/step)")
    return model


def predict_probs(model, image: np.ndarray, tta: bool = False) -> np.ndarray:
    """(H, W) uint8 -> (3, H, W) float32 class probabilities (mean over 4 flips with ``tta``)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    x = torch.from_numpy(standardise(image))[None, None]
    x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="reflect")
    flips = [(), (3,), (2,), (2, 3)] if tta else [()]
    model.eval()
    out = 0
    with torch.no_grad():
        for dims in flips:
            xi = x.flip(dims) if dims else x
            p = model(xi.contiguous(memory_format=torch.channels_last)).softmax(1)
            out = out + (p.flip(dims) if dims else p)
    return (out / len(flips))[0, :, :h, :w].numpy()


def decode(probs: np.ndarray, *, marker_thresh: float = 0.5, fg_thresh: float = 0.5,
           min_marker: int = 8, min_area: int = 16) -> np.ndarray:
    """(3, H, W) probabilities -> (H, W) int32 label image: markers are connected interior
    regions (p_interior > ``marker_thresh``), grown by watershed on 1 - p_interior over the
    foreground (p_background < ``fg_thresh``); cells under ``min_area`` pixels are dropped."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    interior = probs[INTERIOR]
    fg = probs[BACKGROUND] < fg_thresh
    markers, n = ndimage.label(interior > marker_thresh)
    if n:
        sizes = np.bincount(markers.ravel(), minlength=n + 1)
        small = sizes < min_marker
        small[0] = False
        markers[small[markers]] = 0
    if not markers.any():
        return np.zeros(interior.shape, np.int32)
    labels = watershed(1.0 - interior, markers, mask=fg | (markers > 0))
    sizes = np.bincount(labels.ravel())
    labels[(sizes < min_area)[labels]] = 0
    # renumber 1..N
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels]


# ----------------------------------------------------------------------------- CLI


def run(train_specs: Sequence[str], test_specs: Sequence[str], out: str | os.PathLike, *,
        steps: int, batch: int = 8, crop: int = 256, lr: float = 1e-3, seed: int = 0,
        tta: bool = False, log=print) -> dict:
    """Train on ``train_specs``, predict ``test_specs`` into ``out/pred.csv``, score when the
    test images are annotated; returns (and writes to ``out/scores.json``) the summary."""
    import torch

    from cellseg.core import masks, metrics, rle
    from cellseg.io import write_json
    from cellseg.data.sources import load_sources
    from cellseg.core.submission import SubmissionWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_records = load_annotated(train_specs)
    if not train_records:
        raise ValueError(f"no annotated training image in {list(train_specs)}")
    test_records = load_sources(test_specs)
    t0 = time.perf_counter()
    model = train(train_records, steps, batch=batch, crop=crop, lr=lr, seed=seed, log=log)
    train_s = time.perf_counter() - t0
    torch.save(model.state_dict(), out / ".model.pt.tmp")
    os.replace(out / ".model.pt.tmp", out / "model.pt")
    per_image = {}
    t1 = time.perf_counter()
    with SubmissionWriter(out / "pred.csv") as writer:
        for r in test_records:
            labels = decode(predict_probs(model, r.read_image(), tta=tta))
            rles = masks.encode_labels(labels)
            writer.add(r.image_id, rles, shape=r.shape)
            if r.rles:
                res = metrics.match_image(r.rles, labels, r.shape)
                per_image[r.image_id] = {"score": res.score, "cell_type": r.cell_type,
                                         "n_true": res.n_true, "n_pred": res.n_pred}
    summary = {"steps": steps, "batch": batch, "crop": crop, "lr": lr, "seed": seed, "tta": tta,
               "train_images": [r.image_id for r in train_records],
               "train_seconds": round(train_s, 1),
               "predict_seconds": round(time.perf_counter() - t1, 1),
               "torch_threads": torch.get_num_threads(), "per_image": per_image,
               "score": (float(np.mean([v["score"] for v in per_image.values()]))
                         if per_image else None)}
    write_json(out / "scores.json", summary)
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.plain_unet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--train", nargs="+", required=True, metavar="SRC",
                   help="annotated training sources (PATH or PATH:SPLIT)")
    p.add_argument("--test", nargs="+", required=True, metavar="SRC",
                   help="images to predict (scored when annotated)")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", action="store_true", help="4-flip test-time augmentation")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = run(args.train, args.test, args.out, steps=args.steps, batch=args.batch,
                  crop=args.crop, lr=args.lr, seed=args.seed, tta=args.tta,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: summary[k] for k in ("score", "train_seconds", "steps")}))
    return 0


def main() -> None:
    """``python -m bench plain_unet``: train on 5 of the real samples, score the 6th (an MCF7
    LIVECell image), print one table row. ``BENCH_STEPS`` (default 300), 1 thread."""
    import tempfile

    import torch

    root = Path(os.environ.get("CELLSEG_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (root / "sartorius").is_dir():
        print(f"(skipped: real samples not found at {root})")
        return
    torch.set_num_threads(1)
    steps = int(os.environ.get("BENCH_STEPS", "30" if os.environ.get("BENCH_QUICK") else "300"))
    records = load_annotated([str(root / "sartorius"), str(root / "livecell") + ":val"])
    held = next(r for r in records if r.cell_type == "MCF7")
    from cellseg.export import write_competition_folder

    with tempfile.TemporaryDirectory() as tmp:
        # the held-out image and the training images as competition folders, as `cellseg cv` does
        write_competition_folder([held], Path(tmp) / "test")
        write_competition_folder([r for r in records if r.image_id != held.image_id],
                                 Path(tmp) / "train")
        s = run([str(Path(tmp) / "train")], [str(Path(tmp) / "test")], Path(tmp) / "out",
                steps=steps, log=lambda m: None)
    print("| reference | steps | held-out image | score | train s (1 thread) |")
    print("|---|---|---|---|---|")
    print(f"| plain smp UNet r18 | {steps} | {held.image_id} | {s['score']:.4f} | "
          f"{s['train_seconds']:.0f} |")


if __name__ == "__main__":
    sys.exit(cli())
