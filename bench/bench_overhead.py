"""What a training step costs beyond forward + backward + optimiser, and the UNet step against a
plain smp UNet.

    .venv/bin/python -m bench overhead                  # ~10 min on 2 busy cores
    BENCH_QUICK=1 .venv/bin/python -m bench overhead    # UNet only, fewer repeats (~4 min)
    BENCH_THREADS=2 .venv/bin/python -m bench overhead  # default 1 thread
    BENCH_BEFORE=/work/main BENCH_QUICK=1 .venv/bin/python -m bench overhead  # + that code's full step

Prints, besides a table of medians:

- ``reference unet_r18 <ratio>``: the kit's UNet model step (``train_one_epoch`` on pre-built
  batches: forward, loss, backward, clip, Adam, with the kit's default channels_last) over a
  plain ``smp.Unet("resnet18", in_channels=1, classes=3)`` step with cross-entropy + soft Dice,
  channels_last and Adam. Batch 8 of 256² crops; both models step alternately on one batch.
  Target <= 1.2.
- ``overhead <config> <ratio>``: the kit's full train step (``cellseg train``: the loader on its
  worker, the step, logs, epoch ends and their checkpoint writes) over the bare model step on
  pre-built batches of the same model, config and data. The full step is the slope of wall
  time against steps: two ``cellseg train`` runs of K1 and K2 steps, (T2 - T1) / (K2 - K1), so
  start-up (imports, model build, record parsing, worker start) cancels out. Target <= 1.15.

Data: the 5 annotated LIVECell images of ``../shared/data`` listed 6 times (30 images, 4 steps
per epoch for the UNet: a short epoch, so the per-epoch costs weigh more than in a real run).
Configs: ``unet_r18`` = the issue-12 setting (``unet_competition_finetune`` with resnet18,
1 channel, 256² crops, batch 8, 1 worker); ``maskrcnn`` = ``maskrcnn_competition_finetune``
(ResNet-50 FPN, whole images, batch 2, 1 worker). Every figure is the median of repeated runs,
all with ``torch.set_num_threads(BENCH_THREADS)`` (1 by default) in the training process.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import SHARED

ROOT = Path(__file__).resolve().parents[1]
LIVECELL = SHARED / "livecell"

CONFIGS = {
    "unet_r18": ("unet_competition_finetune",
                 ["model.args={encoder_name: resnet18, in_channels: 1, norm: dataset}",
                  "data.crop_size=256", "train.batch_size=8", "data.workers=1"], (2, 8)),
    "maskrcnn": ("maskrcnn_competition_finetune", ["train.batch_size=2", "data.workers=1"],
                 (1, 4)),
}
COMMON = ["data.split=val", "data.fold=null", "train.epochs=1000", "train.log_every=10"]


def _threads() -> int:
    return int(os.environ.get("BENCH_THREADS", "1"))


def _config(name: str):
    from cellseg.config import load_train_config

    base, extra, _ = CONFIGS[name]
    return load_train_config(base, extra + COMMON + [
        "data.sources=[" + ", ".join([repr(str(LIVECELL))] * 6) + "]"])


def _batches(cfg, family, model, n: int) -> list:
    """``n`` batches from the config's own dataset, built once (0 workers)."""
    from cellseg.data.sources import load_data
    from cellseg.training import data as td
    from cellseg.training.distributed import DistInfo

    records, _, _, sources = load_data(cfg.data, log=lambda m: None)
    dataset, sampler = td.build_dataset(cfg, family.target_spec(**cfg.model.args), records,
                                        sources, DistInfo())
    cfg0 = _replace(cfg, "data.workers=0")
    loader = td.make_loader(cfg0, dataset, sampler, family.collate, DistInfo())
    out = []
    while len(out) < n:
        out += [b for _, b in zip(range(n - len(out)), loader)]
    return out


def _replace(cfg, *overrides):
    from cellseg.config import replace

    return replace(cfg, overrides)


def _kit_step_times(cfg, n_steps: int, batches=None) -> list[float]:
    """Seconds per model step of the kit (TrainState + train_one_epoch on pre-built batches)."""
    import torch

    from cellseg.models import get_family
    from cellseg.training.engine import train_one_epoch
    from cellseg.training.loop import _memory_format, _step_options
    from cellseg.training.state import TrainState
    from cellseg.training.distributed import DistInfo

    family = get_family(cfg.model.family)
    torch.manual_seed(0)
    model = family.build(**cfg.model.args)
    batches = batches or _batches(cfg, family, model, 2)
    opts = _step_options(cfg, family, DistInfo(), progress=False)
    model.to(memory_format=_memory_format(opts.channels_last))
    state = TrainState.create(model, family, cfg, 10_000, opts)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(st, losses):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return False

    loader = [batches[i % len(batches)] for i in range(n_steps + 1)]  # +1: warm-up
    train_one_epoch(state, loader, opts, after_step=tick)
    return times[1:]


def _plain_unet_times(batch, n_steps: int, channels_last: bool = True) -> list[float]:
    """The reference: smp.Unet(resnet18, 1 channel, 3 classes), CE + soft Dice, Adam."""
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3).to(
        memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    images = batch[0].contiguous(memory_format=fmt)
    # 3 classes from the kit's maps: background / cell interior / cell border
    maps = batch[1]["maps"]
    labels = torch.where(maps[:, 1] > 0.5, 2, torch.where(maps[:, 0] > 0.5, 1, 0))
    one_hot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    times = []
    for i in range(n_steps + 1):
        t0 = time.perf_counter()
        logits = model(images)
        prob = logits.softmax(1)
        inter = (prob * one_hot).sum((0, 2, 3))
        dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + one_hot.sum((0, 2, 3)) + 1)
        loss = F.cross_entropy(logits, labels) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def _full_run_seconds(name: str, steps: int, tmp: Path, repo: Path = ROOT) -> float:
    """Wall seconds of ``cellseg train`` for ``steps`` steps, in a fresh process (``repo``: the
    checkout whose code runs; an older one has its loop in ``cellseg.train``)."""
    import subprocess

    base, extra, _ = CONFIGS[name]
    module = ("cellseg.training.loop" if (repo / "cellseg" / "training" / "loop.py").exists()
              else "cellseg.train")
    argv = [sys.executable, "-c",
            f"import sys, torch; torch.set_num_threads({_threads()}); "
            f"from {module} import get_args_parser, main; "
            "sys.exit(main(get_args_parser().parse_args(sys.argv[1:])))",
            "--config", base, "--out", str(tmp / f"{name}_{steps}"), "--no-progress",
            "--device", "cpu"] + ["--data", str(LIVECELL)] * 6
    for kv in extra + COMMON + [f"train.max_steps={steps}"]:
        argv += ["--set", kv]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS=str(_threads()), PYTHONPATH=str(repo))
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    import torch

    if not (LIVECELL / "annotations").exists():
        print(f"skipped: no real samples at {LIVECELL}")
        return
    quick = os.environ.get("BENCH_QUICK") == "1"
    torch.set_num_threads(_threads())
    repeats = 2 if quick else 3
    print(f"torch threads: {_threads()}; medians of {repeats} repeats\n")

    # --- reference: the kit's UNet model step against a plain smp UNet step
    cfg = _config("unet_r18")
    from cellseg.models import get_family

    family = get_family("unet")
    batches = _batches(cfg, family, family.build(**cfg.model.args), 1)
    kit, plain, kit_cf, plain_cf = [], [], [], []
    for _ in range(repeats):  # alternate, so load changes on the shared machine hit both
        kit += _kit_step_times(cfg, 2, batches)
        plain += _plain_unet_times(batches[0], 2)
        if not quick:
            kit_cf += _kit_step_times(_replace(cfg, "train.channels_last=false"), 2, batches)
            plain_cf += _plain_unet_times(batches[0], 2, channels_last=False)
    med = statistics.median
    print("| step (batch 8 x 256², resnet18, 1 channel) | s/step (median) |")
    print("|---|---|")
    for label, ts in (("kit UNet, channels_last (default)", kit),
                      ("plain smp UNet CE+Dice, channels_last", plain),
                      ("kit UNet, contiguous", kit_cf), ("plain smp UNet, contiguous", plain_cf)):
        if ts:
            print(f"| {label} | {med(ts):.3f} |")
    print(f"\nreference unet_r18 {med(kit) / med(plain):.2f}\n", flush=True)

    # --- overhead: full `cellseg train` step over the bare model step
    names = ["unet_r18"] if quick else ["unet_r18", "maskrcnn"]
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        for name in names:
            k1, k2 = CONFIGS[name][2]
            cfg = _config(name)
            bare, full = [], []
            for _ in range(repeats):
                bare.append(med(_kit_step_times(cfg, 2)))
                t1 = _full_run_seconds(name, k1, Path(tmp))
                t2 = _full_run_seconds(name, k2, Path(tmp))
                full.append((t2 - t1) / (k2 - k1))
            print(f"| {name} | bare step {med(bare):.2f} s | full step {med(full):.2f} s "
                  f"(runs of {k1} and {k2} steps) |")
            print(f"overhead {name} {med(full) / med(bare):.2f}", flush=True)
            before = os.environ.get("BENCH_BEFORE")
            if before:  # the same full-step slope with an older checkout's code
                slopes = [(_full_run_seconds(name, k2, Path(tmp), Path(before))
                           - _full_run_seconds(name, k1, Path(tmp), Path(before))) / (k2 - k1)
                          for _ in range(repeats)]
                print(f"| {name} | full step before ({before}) {med(slopes):.2f} s |", flush=True)


if __name__ == "__main__":
    main()
