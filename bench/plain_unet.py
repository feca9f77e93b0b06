"""The plain-UNet reference the kit's recipe must beat on real images (issue 13).

    python -m bench plain_unet            # train on 5 real samples, score the 6th (BENCH_STEPS=300,
                                          # BENCH_QUICK=1: 30 steps; ~4 s/step on one idle core)
    python -m bench plain_unet_oracle     # truth -> 3-class targets -> decode, per border width
    python -m bench.plain_unet --train /data/sartorius /data/livecell:val --test held_out/ \\
        --steps 300 --out runs/plain [--border 2] [--tta] [--threads 1]

A from-scratch ``smp.Unet("resnet18", in_channels=1, classes=3)`` (interior / border / background),
cross-entropy + soft Dice, Adam 1e-3 with cosine decay over the run, random 256x256 crops with
flips and 90-degree rotations, batch 8, per-image standardisation. Inference runs the whole image
(padded to a multiple of 32; optional 4-flip TTA) and splits cells by watershed on interior
markers. The loop, targets, loss and decode are written here, independently of the kit, on
purpose: only reading annotations, writing predictions and the competition metric are shared
(``bench/peer_io.py``), so every method is scored by the same code.

The border class is ``--border`` pixels wide inside each cell (default 2), so two touching cells are
separated by twice that. This is the 3-class recipe of the nucleus-segmentation U-Net of Caicedo et
al. (Cytometry A 2019, carpenterlab's ``unet4nuclei``: ``boundary_size = 2``, "min 2 pixels", from
``skimage.segmentation.find_boundaries``), whose 2-pixel band between touching objects our width 1
already drew; width 2 doubles that band, as DSB-2018-era recipes widen it to separate touching
cells. The price is that a cell narrower than about twice the width has no interior left to seed
it: on the 6 real samples the truth encoded and decoded back scores 0.961 (width 1), 0.934 (2) and
0.872 (3) (``python -m bench plain_unet_oracle``); only training shows whether the wider band is
learned better.

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
DEFAULT_BORDER = 2  # pixels inside each cell; see the module docstring


# ----------------------------------------------------------------------------- targets / data


def class_map(labels: np.ndarray, border: int = DEFAULT_BORDER) -> np.ndarray:
    """(H, W) int label image -> (H, W) int64 classes: 0 background, 1 interior, 2 border.

    Border = the cell's own pixels within ``border`` pixels (4-connected steps) of its outline:
    the outline is skimage's ``find_boundaries`` mode "inner" (pixels next to background or to
    another cell), grown ``border - 1`` times inside the foreground. Touching cells are thus
    separated by ``2 * border`` border pixels.
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    if border < 1:
        raise ValueError(f"border width must be >= 1 pixel, got {border}")
    out = np.zeros(labels.shape, np.int64)
    fg = labels > 0
    out[fg] = INTERIOR
    edge = find_boundaries(labels, mode="inner") & fg
    if border > 1:
        edge = ndimage.binary_dilation(edge, iterations=border - 1, mask=fg)
    out[edge] = BORDER
    return out


def standardise(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W) float32 with zero mean and unit variance (per image)."""
    x = image.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1.0)


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
          seed: int = 0, border: int = DEFAULT_BORDER, bf16: bool = False, log_every: int = 25,
          log=print):
    """Train the reference on ``records`` for ``steps`` optimiser steps; returns the model.
    ``bf16``: forward pass and loss under torch's CPU bfloat16 autocast (what any PyTorch user
    turns on for speed on a CPU with bf16 units), so the peer gets the same steps per CPU-minute
    as a kit recipe that does."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = [standardise(r.read_image()) for r in records]
    targets = [class_map(r.label_image(), border) for r in records]
    model = build_model().to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = random_batch(images, targets, rng, batch, crop)
        x = torch.from_numpy(xs).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss, parts = loss_fn(logits.float(), torch.from_numpy(ys))
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
        border: int = DEFAULT_BORDER, tta: bool = False, bf16: bool = False, log=print) -> dict:
    """Train on ``train_specs``, predict ``test_specs`` into ``out/pred.csv``, score when the
    test images are annotated; returns (and writes to ``out/scores.json``) the summary."""
    import torch

    from bench.peer_io import load_annotated, load_test, predict_and_score

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_records = load_annotated(train_specs)
    if not train_records:
        raise ValueError(f"no annotated training image in {list(train_specs)}")
    test_records = load_test(test_specs)
    t0 = time.perf_counter()
    model = train(train_records, steps, batch=batch, crop=crop, lr=lr, seed=seed, border=border,
                  bf16=bf16, log=log)
    train_s = time.perf_counter() - t0
    torch.save(model.state_dict(), out / ".model.pt.tmp")
    os.replace(out / ".model.pt.tmp", out / "model.pt")
    summary = {"peer": "plain_unet", "steps": steps, "batch": batch, "crop": crop, "lr": lr,
               "seed": seed, "border": border, "tta": tta, "bf16": bf16,
               "train_images": [r.image_id for r in train_records],
               "train_seconds": round(train_s, 1), "torch_threads": torch.get_num_threads()}
    return predict_and_score(out, test_records,
                             lambda r: decode(predict_probs(model, r.read_image(), tta=tta)),
                             summary)


def oracle(records: Sequence, border: int) -> list[float]:
    """Competition score of each record's truth encoded as ``class_map(..., border)`` and decoded
    back by ``decode`` (one-hot probabilities): the ceiling the targets allow."""
    from cellseg.core import metrics

    scores = []
    for r in records:
        classes = class_map(r.label_image(), border)
        probs = np.stack([(classes == k).astype(np.float32) for k in range(3)])
        scores.append(float(metrics.match_image(r.rles, decode(probs), r.shape).score))
    return scores


def get_args_parser() -> argparse.ArgumentParser:
    from bench.peer_io import add_common_arguments

    p = argparse.ArgumentParser(prog="python -m bench.plain_unet",
                                description=__doc__.split("\n\n")[0])
    add_common_arguments(p, steps=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--border", type=int, default=DEFAULT_BORDER,
                   help=f"border class width in pixels inside each cell (default "
                        f"{DEFAULT_BORDER}; 1 = the reference before issue 19)")
    p.add_argument("--tta", action="store_true", help="4-flip test-time augmentation")
    p.add_argument("--bf16", action="store_true",
                   help="train under CPU bfloat16 autocast (fast on CPUs with bf16 units)")
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    from bench.peer_io import set_threads

    args = get_args_parser().parse_args(argv)
    set_threads(args.threads)
    summary = run(args.train, args.test, args.out, steps=args.steps, batch=args.batch,
                  crop=args.crop, lr=args.lr, seed=args.seed, border=args.border, tta=args.tta,
                  bf16=args.bf16,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({k: summary[k] for k in ("score", "train_seconds", "steps")}))
    return 0


def _shared_data() -> Path:
    return Path(os.environ.get("CELLSEG_SHARED_DATA",
                               Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    """``python -m bench plain_unet``: train on 5 of the real samples, score the 6th (an MCF7
    LIVECell image), print one table row. ``BENCH_STEPS`` (default 300), 1 thread."""
    import tempfile

    import torch

    from bench.peer_io import load_annotated

    root = _shared_data()
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
    print("| reference | steps | border | held-out image | score | train s (1 thread) |")
    print("|---|---|---|---|---|---|")
    print(f"| plain smp UNet r18 | {steps} | {s['border']} | {held.image_id} | {s['score']:.4f} | "
          f"{s['train_seconds']:.0f} |")


def main_oracle() -> None:
    """``python -m bench plain_unet_oracle``: the 6 real samples' truth -> the reference's
    3-class targets -> its decode, scored, for border widths 1-3 (no training)."""
    from bench.peer_io import load_annotated

    root = _shared_data()
    if not (root / "sartorius").is_dir():
        print(f"(skipped: real samples not found at {root})")
        return
    records = load_annotated([str(root / "sartorius"), str(root / "livecell") + ":val"])
    rows = {w: oracle(records, w) for w in (1, 2, 3)}
    print("| border (px inside a cell) | mean | " + " | ".join(
        f"{r.image_id[:22]}" for r in records) + " |")
    print("|---|---|" + "---|" * len(records))
    for w, sc in rows.items():
        print(f"| {w}{' (default)' if w == DEFAULT_BORDER else ''} | {np.mean(sc):.4f} | "
              + " | ".join(f"{v:.3f}" for v in sc) + " |")


if __name__ == "__main__":
    sys.exit(cli())
