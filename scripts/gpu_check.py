"""The device check: what only a GPU can prove, in one command and one table (< 5 min on a GPU).

    make gpu-check                                  # = python scripts/gpu_check.py
    python scripts/gpu_check.py --device cuda --out /tmp/gpu_check
    python scripts/gpu_check.py --device cpu --unet-steps 2 --maskrcnn-steps 0 --workers 0  # dry run

On synthetic data (``cellseg.data.synthetic``, 520x704 images), through the kit's own commands:

1. float16 training (autocast + GradScaler) of the tiny UNet and the tiny Mask R-CNN for a few
   hundred steps each: loss at start and end, steps the GradScaler skipped (inf/NaN gradients),
   its final scale, seconds per step.
2. predict on the device vs on the CPU (float32) with the trained UNet (and Mask R-CNN): number
   of instances on both and the mean best-IoU of each CPU instance with a device one.
3. the loader against the step: training batches per second the DataLoader delivers (workers as
   configured) vs optimiser steps per second on a batch already on the device; the GPU is kept
   busy when the loader is faster.
4. 2-process DDP over nccl when two GPUs exist (SKIP otherwise).

Prints one Markdown table (check | result | status) and exits 1 when a check FAILs. On a CPU the
same code runs (the float16 CPU path, CPU vs CPU predict, DDP skipped): tests/test_gpu_check.py
runs it that way, so the script stays runnable for the day a GPU is there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[str, str, str]  # check, result, status (OK / FAIL / SKIP / INFO)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--out", default="gpu_check_out", help="work folder (data, runs)")
    p.add_argument("--images", type=int, default=12, help="synthetic training images")
    p.add_argument("--data", default=None,
                   help="a competition folder to use instead of generating synthetic images")
    p.add_argument("--unet-steps", type=int, default=300)
    p.add_argument("--maskrcnn-steps", type=int, default=150)
    p.add_argument("--predict-images", type=int, default=3)
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the loader check")
    p.add_argument("--ddp-steps", type=int, default=20)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- 1. float16 training


def train_fp16(family_cfg: str, data: Path, out: Path, steps: int, device: str) -> dict[str, Any]:
    """``cellseg train`` with float16 autocast + GradScaler for ``steps`` steps; returns
    {"seconds", "steps", "skipped", "scale", "loss_first", "loss_last", "ckpt"}."""
    import csv

    from cellseg.checkpoint import load_checkpoint
    from cellseg.cli import main

    argv = ["train", "--config", family_cfg, "--data", str(data), "--out", str(out),
            "--no-progress", "--device", device]
    for kv in ("train.amp=true", "train.amp_dtype=float16", f"train.max_steps={steps}",
               "train.epochs=100000", "train.log_every=1", "data.fold=0", "train.val_every=0",
               "train.save_every=0", "data.max_val_images=1"):
        argv += ["--set", kv]
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"cellseg train {family_cfg} exited {rc}")
    ck = load_checkpoint(out / "last.pt")
    # the optimiser counts only the steps it took; the GradScaler skipped the others
    taken = max((int(s["step"]) for s in ck["optimizer"]["state"].values() if "step" in s),
                default=ck["step"])
    with open(out / "steps.csv", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]
    k = max(1, min(10, len(losses) // 4))  # mean of the first / last k logged steps
    return {"seconds": seconds, "steps": int(ck["step"]), "skipped": int(ck["step"]) - taken,
            "scale": (ck.get("scaler") or {}).get("scale"), "ckpt": out / "best.pt",
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}


def train_row(name: str, r: dict[str, Any], device: str) -> Row:
    fell = r["loss_last"] < r["loss_first"]
    ok = fell and r["scale"] is not None and r["skipped"] < max(5, r["steps"] // 10)
    return (f"float16 train {name} ({device})",
            f"{r['steps']} steps, {r['seconds'] / max(1, r['steps']):.3f} s/step, loss "
            f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}, {r['skipped']} skipped, scale "
            f"{r['scale']}", "OK" if ok else "FAIL")


# ----------------------------------------------------------------------------- 2. predict


def predict_compare(ckpt: Path, images: list[Path], device: str) -> tuple[int, int, float]:
    """(instances on device, instances on CPU, mean best-IoU of CPU instances with device ones);
    the device run uses the kit's CUDA path (float16 autocast, channels_last)."""
    import torch

    from cellseg.models import load_model
    from cellseg.core.metrics import iou_matrix
    from cellseg.infer.config import InferenceConfig
    from cellseg.infer.predict import predict_image
    from cellseg.io import read_gray

    def run_on(dev: str, cfg: InferenceConfig) -> list:
        model, family, _ = load_model(ckpt, device=dev)
        return [predict_image([(model, family, 1.0)], read_gray(p), cfg, device=torch.device(dev))
                for p in images]

    on_dev = run_on(device, InferenceConfig(cuda_path_on_cpu=True))
    on_cpu = run_on("cpu", InferenceConfig(amp=False))
    ious = []
    for a, b in zip(on_cpu, on_dev):
        if len(a) and len(b):
            ious.append(float(iou_matrix(a, b, shape=a.image_shape).max(axis=1).mean()))
        elif len(a) or len(b):
            ious.append(0.0)
    return (sum(len(i) for i in on_dev), sum(len(i) for i in on_cpu),
            sum(ious) / len(ious) if ious else 1.0)


def predict_row(name: str, n_dev: int, n_cpu: int, iou: float, device: str) -> Row:
    ok = abs(n_dev - n_cpu) <= max(2, 0.05 * n_cpu) and iou >= 0.9
    return (f"predict {name} {device} vs cpu",
            f"{n_dev} vs {n_cpu} instances, mean matched IoU {iou:.3f}", "OK" if ok else "FAIL")


# ----------------------------------------------------------------------------- 3. loader vs step


def loader_vs_step(config: str, data: Path, device: str, batches: int, workers: int) -> Row:
    """Batches/s of the training DataLoader alone vs optimiser steps/s on a resident batch."""
    import dataclasses

    import torch

    from cellseg.config import load_train_config
    from cellseg.models import get_family
    from cellseg.data.sources import load_data
    from cellseg.training import data as td
    from cellseg.training.distributed import DistInfo
    from cellseg.training.engine import StepOptions, to_device, train_one_epoch
    from cellseg.training.state import TrainState

    cfg = load_train_config(config, ["data.fold=null", "train.amp=true",
                                     "train.amp_dtype=float16", f"data.workers={workers}"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=(str(data),)))
    dist = DistInfo(device=torch.device(device))
    family = get_family(cfg.model.family)
    train, _, _, sources = load_data(cfg.data, log=lambda m: None)
    dataset, sampler = td.build_dataset(cfg, family.target_spec(**cfg.model.args), train,
                                        sources, dist)
    loader = td.make_loader(cfg, dataset, sampler, family.collate, dist)
    got, t0, first = 0, time.perf_counter(), None
    while got < batches:
        for batch in loader:
            first = first or batch
            got += 1
            if got >= batches:
                break
    load_rate = got / (time.perf_counter() - t0)
    model = family.build(**cfg.model.args).to(device)
    opts = StepOptions(device=torch.device(device), amp_dtype=torch.float16, clip_norm=10.0,
                       log_every=10 ** 9)
    state = TrainState.create(model, family, cfg, batches + 5, opts)
    resident = [to_device(first, torch.device(device))] * batches
    train_one_epoch(state, resident[:3], opts)  # warm-up (cudnn autotune, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_one_epoch(state, resident, opts)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    step_rate = batches / (time.perf_counter() - t0)
    status = "OK" if load_rate >= step_rate else "FAIL"
    return (f"loader vs step ({config}, {cfg.data.workers} workers)",
            f"loader {load_rate:.1f} batches/s, {device} step {step_rate:.1f} steps/s "
            f"(x{load_rate / step_rate:.2f})", status)


# ----------------------------------------------------------------------------- 4. nccl DDP


def ddp_row(data: Path, out: Path, steps: int, device: str) -> Row:
    import torch

    if not device.startswith("cuda") or torch.cuda.device_count() < 2:
        return ("2-process nccl DDP", f"{torch.cuda.device_count()} GPU(s) here", "SKIP")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", "-m", "cellseg", "train", "--config", "unet_tiny", "--data",
            str(data), "--out", str(out), "--no-progress", "--set", f"train.max_steps={steps}",
            "--set", "train.amp=true", "--set", "data.fold=null"]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    ok = done.returncode == 0 and (out / "last.pt").exists()
    detail = (f"{steps} steps in {time.perf_counter() - t0:.0f} s" if ok
              else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return ("2-process nccl DDP", detail, "OK" if ok else "FAIL")


# ----------------------------------------------------------------------------- main


def table(rows: list[Row]) -> str:
    lines = ["| check | result | status |", "|---|---|---|"]
    lines += [f"| {c} | {r} | {s} |" for c, r, s in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[Row]:
    import torch

    from cellseg.data.synthetic import generate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "synth" / "competition"
    if not (data / "train.csv").exists():
        generate(out / "synth", n_images=args.images, seed=0, n_test=0, n_semi=0, n_livecell=0)
    rows: list[Row] = [("device", f"{device}: " + (torch.cuda.get_device_name(0)
                                                   if device.startswith("cuda") else
                                                   f"{os.cpu_count()} CPU cores")
                        + f", torch {torch.__version__}", "INFO")]
    images = sorted((data / "train").glob("*.png"))[:args.predict_images]
    for name, cfg, steps in (("unet", "unet_tiny", args.unet_steps),
                             ("maskrcnn", "maskrcnn_tiny", args.maskrcnn_steps)):
        if steps <= 0:
            rows.append((f"float16 train {name}", "not asked for (0 steps)", "SKIP"))
            continue
        try:
            r = train_fp16(cfg, data, out / f"run_{name}", steps, device)
            rows.append(train_row(name, r, device))
            rows.append(predict_row(name, *predict_compare(r["ckpt"], images, device), device))
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a FAIL row
            rows.append((f"float16 train/predict {name}", f"{type(exc).__name__}: {exc}"[:200],
                         "FAIL"))
    try:
        rows.append(loader_vs_step("unet_tiny", data, device, args.loader_batches,
                                   args.workers))
    except Exception as exc:  # noqa: BLE001
        rows.append(("loader vs step", f"{type(exc).__name__}: {exc}"[:200], "FAIL"))
    rows.append(ddp_row(data, out / "run_ddp", args.ddp_steps, device))
    return rows


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    rows = run(parse_args(argv))
    rows.append(("total time", f"{time.perf_counter() - t0:.0f} s", "INFO"))
    print(table(rows), flush=True)
    return 1 if any(s == "FAIL" for _, _, s in rows) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
