"""Training throughput on CPU: is the data loader fast enough to feed the model? And how fast does
the tiny UNet learn on synthetic data?

    .venv/bin/python -m bench train                 # ~1.5 min idle, up to ~10 on 2 busy cores
    BENCH_QUICK=1 .venv/bin/python -m bench train   # ~20 s idle

Table 1, per config (the tiny CPU configs, and the real competition recipes whose train step is
what a GPU would run; 1 thread): images/s of the data loader alone (read + mask
decode + augment + targets; 0 workers, and 2 workers including their start-up) vs images/s of
the train step alone (forward + backward + optimiser on pre-built batches), seconds per step.
The loader is timed in steady state: the mask cache is filled first (training decodes each
image's RLEs once, in epoch 1); the 2-worker figure includes the workers' start-up. The loader should be >= 3x the model so that
2-4 workers keep a GPU busy. Table 2: the CPU recipe's (``unet_competition_cpu``) train step in float32 and under bfloat16
autocast, and under bfloat16 with a lighter decoder. Table 3: validation score (competition metric on held-out synthetic
images) against training minutes for ``unet_tiny``, read from the run's ``log.csv``.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path


LIGHTER_DECODER = (128, 64, 32, 16, 16)  # smp's default UNet decoder widths halved but the last


def _loader_rate(cfg, family, model, records, n_images: int,
                 workers: int = 0, cache_dir: Path | None = None) -> tuple[float, list]:
    from cellseg.data.datasets import InstanceDataset, build_loader

    ds = InstanceDataset(records, family.target_spec(**cfg.model.args), augment=cfg.data.augment,
                         crop_size=cfg.data.crop_size, cache_dir=cache_dir)
    if cache_dir is not None:
        for i in range(len(ds)):  # steady state: epoch 1 decodes each image into the cache
            ds.image_and_layers(i)
    loader = build_loader(ds, cfg.train.batch_size, shuffle=True, workers=workers,
                          collate_fn=family.collate, drop_last=False, pin_memory=False)
    batches, seen = [], 0
    t0 = time.perf_counter()
    while seen < n_images:
        for images, targets in loader:
            batches.append((images, targets))
            seen += len(images)
            if seen >= n_images:
                break
    return seen / (time.perf_counter() - t0), batches


def _step_rate(cfg, family, model, batches, n_steps: int, amp_dtype=None,
               channels_last: bool = False) -> tuple[float, float]:
    import torch

    from cellseg.training import engine

    opt = engine.build_optimizer(model, cfg.optim)
    model.train()
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model.to(memory_format=fmt)
    batches = [(engine.to_device(x, torch.device("cpu"), channels_last),
                engine.to_device(y, torch.device("cpu"), channels_last)) for x, y in batches]

    def loss_of(images, targets):
        with torch.autocast("cpu", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return family.loss(model, images, targets)["loss"]

    # one warm-up step (allocations, lazy init) outside the timing
    loss_of(*batches[0]).backward()
    opt.step()
    opt.zero_grad()
    n_img, t0 = 0, time.perf_counter()
    for i in range(n_steps):
        images, targets = batches[i % len(batches)]
        loss = loss_of(images, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        n_img += len(images)
    dt = time.perf_counter() - t0
    return n_img / dt, dt / n_steps


def main() -> None:
    import torch

    from cellseg.config import load_train_config
    from cellseg.data.loaders import load_records
    from cellseg.data.synthetic import generate
    from cellseg.models import get_family

    quick = os.environ.get("BENCH_QUICK") == "1"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        n_images = 6 if quick else 16
        generate(tmp / "synth", n_images=n_images, seed=0, n_test=0, n_semi=0, n_livecell=0)
        data = tmp / "synth" / "competition"
        records = load_records(data)

        print("| config | loader img/s (0 workers) | loader img/s (2 workers) | train step img/s "
              "| s/step (batch) | loader (0 workers) / model | target >= 3x |")
        print("|---|---|---|---|---|---|---|")
        configs = ["unet_tiny", "maskrcnn_tiny"]
        if not quick:
            configs += ["unet_competition_finetune", "maskrcnn_competition_finetune"]
        for name in configs:
            cfg = load_train_config(name)
            family = get_family(cfg.model.family)
            torch.manual_seed(0)
            model = family.build(**cfg.model.args)
            n_load = 2 * cfg.train.batch_size if quick else 4 * cfg.train.batch_size
            cache = tmp / f"cache_{name}"
            load_rate, batches = _loader_rate(cfg, family, model, records, n_load, cache_dir=cache)
            load_rate2, _ = _loader_rate(cfg, family, model, records, n_load, workers=2,
                                         cache_dir=cache)
            step_rate, s_step = _step_rate(cfg, family, model, batches, 2 if quick else 4)
            ratio = load_rate / step_rate
            print(f"| {name} | {load_rate:.2f} | {load_rate2:.2f} | {step_rate:.2f} | {s_step:.2f} "
                  f"({cfg.train.batch_size}x{cfg.data.crop_size}px) | {ratio:.2f}x | "
                  f"{'ok' if ratio >= 3 else 'NO: loader-bound'} |", flush=True)

        # the CPU recipe's precision: bfloat16 autocast is what buys its 2,000 steps in an hour
        from cellseg.config import native_bfloat16

        cfg = load_train_config("unet_competition_cpu")
        family = get_family(cfg.model.family)
        _, batches = _loader_rate(cfg, family, None, records, 2 * cfg.train.batch_size,
                                  cache_dir=tmp / "cache_cpu")
        print(f"\nunet_competition_cpu train step (batch {cfg.train.batch_size}x"
              f"{cfg.data.crop_size}px, channels_last, 1 thread); this CPU computes bfloat16 "
              f"natively: {'yes' if native_bfloat16('cpu') else 'no'}\n")
        print("| step | s/step | speed-up |")
        print("|---|---:|---:|")
        base = None
        # the last row: what halving the decoder's widths would buy (docs/competition.md, "A
        # lighter decoder": more steps in the hour, measured and not adopted)
        lighter = {**cfg.model.args, "decoder_channels": LIGHTER_DECODER}
        for label, dtype, args in (("float32", None, cfg.model.args),
                                   ("bfloat16 autocast", torch.bfloat16, cfg.model.args),
                                   ("bfloat16 autocast, decoder "
                                    f"{list(LIGHTER_DECODER)}", torch.bfloat16, lighter)):
            torch.manual_seed(0)
            model = family.build(**args)
            _, s_step = _step_rate(cfg, family, model, batches, 2 if quick else 5, dtype, True)
            base = base or s_step
            print(f"| {label} | {s_step:.2f} | {base / s_step:.2f}x |", flush=True)

        # learning curve: the real `cellseg train` path, validation every epoch
        from cellseg.training.loop import get_args_parser, main as train_main

        epochs, val_every = (3, 1) if quick else (24, 3)
        out = tmp / "run"
        argv = ["--config", "unet_tiny", "--data", str(data), "--out", str(out), "--no-progress",
                "--device", "cpu", "--set", f"train.epochs={epochs}",
                "--set", f"train.val_every={val_every}", "--set", "train.batch_size=2",
                "--set", "train.max_steps=null", "--set", "data.max_val_images=2",
                "--set", "data.workers=0"]
        t0 = time.perf_counter()
        train_main(get_args_parser().parse_args(argv))
        wall = time.perf_counter() - t0
        with open(out / "log.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        print("\nunet_tiny learning curve on synthetic data "
              f"({len(records)} images, 1 thread; total wall {wall / 60:.1f} min incl. validation)\n")
        print("| epoch | optimiser steps | training minutes (cumulative) | train loss | val score |")
        print("|---|---|---|---|---|")
        minutes = 0.0
        for r in rows:
            minutes += float(r["seconds"]) / 60
            if not r.get("val_score"):
                continue
            print(f"| {r['epoch']} | {r['step']} | {minutes:.2f} | {float(r['loss']):.4f} | "
                  f"{float(r['val_score']):.4f} |", flush=True)


if __name__ == "__main__":
    main()
