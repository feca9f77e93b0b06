"""`cellseg train`: data, model, train state, epochs; resume and DDP (torchvision-references style).

    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet_tiny
    cellseg train --config unet_livecell_pretrain --data /data/LIVECell_dataset_2021 --out runs/unet_lc
    cellseg train --config unet_competition_finetune --data /data/sartorius \\
        --init-from runs/unet_lc/best.pt --out runs/unet_ft_f0 --set data.fold=0
    cellseg train --config unet_tiny --data ... --out runs/unet_tiny --resume     # after a crash
    torchrun --nproc_per_node 2 -m cellseg train --config unet_tiny --data ... --out runs/ddp

The output folder receives ``last.pt`` (the resume point), ``best.pt`` (best validation score; the
final weights, flagged ``selection: last_no_validation``, when there is no validation),
``log.csv``, ``steps.csv``, ``curves.png`` and ``config.yaml``; cadence in
``cellseg.training.bookkeeping``. Only rank 0 writes files and validates under DDP.

Resume (``--resume``, also after kill -9 or Ctrl-C) continues at the saved epoch and step,
mid-epoch too, from ``TrainState.load_state_dict`` (weights, optimiser, LR schedule, AMP scaler,
EMA, early-stopping counters, RNG states). Every epoch reseeds its shuffle and augmentation from
(seed, epoch), so on CPU with ``data.workers=0`` a resumed run ends bit-identical to an
uninterrupted one (data-loader workers keep their own augmentation streams, which no checkpoint
captures).

One run per folder: ``<out>/.lock`` (``cellseg.training.runlock``) refuses a second run, also a
``--resume`` of a running one; a stale lock (its process is gone) is replaced with a note. What
survives which fault (kill -9, SIGTERM, full disk, ...): docs/robustness.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from cellseg.config import (ConfigError, TrainConfig, from_dict, load_train_config, save_yaml,
                            to_dict)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellseg train", description=__doc__.split("\n\n")[0],
                                     add_help=add_help)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cellseg train`` arguments (shared by the CLI and ``get_args_parser``)."""
    parser.add_argument("--config", required=True,
                        help="shipped config name (unet_tiny, maskrcnn_competition_finetune, ...) "
                             "or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--data", action="append", default=None, metavar="PATH",
                        help="training data (competition folder, train.csv, LIVECell root, COCO "
                             "JSON); repeat for several; replaces data.sources")
    parser.add_argument("--out", default=None, help="output folder (replaces train.out)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/last.pt (starts fresh when there is none)")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="initialise weights from a checkpoint (e.g. LIVECell pretraining)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument("--weights-cache", default=None, metavar="DIR",
                        help="pretrained weights cache, as written by `cellseg weights prefetch` "
                             "(TORCH_HOME=DIR/torch, HF_HOME=DIR/huggingface)")
    parser.add_argument("--offline", action="store_true",
                        help="never download pretrained weights (also HF_HUB_OFFLINE=1): a "
                             "missing file stops before any data is loaded")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config named by ``--config`` with ``--set`` applied, then the path/device flags."""
    cfg = load_train_config(args.config, args.overrides or [])
    data = dataclasses.replace(cfg.data, sources=tuple(args.data)) if args.data else cfg.data
    flags = {"out": args.out, "init_from": getattr(args, "init_from", None),
             "device": getattr(args, "device", None)}
    train = dataclasses.replace(cfg.train, **{k: v for k, v in flags.items() if v is not None})
    return dataclasses.replace(cfg, data=data, train=train)


def main(args: argparse.Namespace) -> int:
    """Train as configured by ``args`` (see ``get_args_parser``); return an exit code
    (0 done, 130 stopped by Ctrl-C/SIGTERM after writing ``last.pt``)."""
    from cellseg.models import get_family
    from cellseg.models.pretrained import check_pretrained_available
    from cellseg.data.sampling import type_mix
    from cellseg.data.sources import load_data
    from cellseg.data.typeclf import fit_on_records
    from cellseg.training import data as td
    from cellseg.training import distributed as D
    from cellseg.training.bookkeeping import Bookkeeper, Plan, stop_requests
    from cellseg.training.checkpoints import RunCheckpoints
    from cellseg.training.engine import train_one_epoch
    from cellseg.training.state import TrainState, seed_all

    cfg = config_from_args(args)
    tc = cfg.train
    dist = D.init(tc.device)
    log = _logger(dist.is_main)
    lock = None
    try:
        out = Path(tc.out)
        # pretrained names (encoder_weights: imagenet, weights: coco, sam_checkpoint: vit_b) are
        # found or fetched now, before --out is created or any data is read (--offline: a
        # missing file stops here)
        cfg = check_pretrained_available(cfg, offline=getattr(args, "offline", False),
                                         weights_cache=getattr(args, "weights_cache", None))
        tc = cfg.train
        # one run per --out, refused before any data is read (rank 0 decides for every rank)
        lock = _lock_out(out, args.resume, dist, log)
        # every data source is checked (paths, splits, image files) before a model is built
        train_records, val_records, data_desc, train_sources = load_data(cfg.data, log)
        log(f"data: {len(train_records)} training images ({data_desc['n_train_cells']} cells), "
            f"{len(val_records)} validation images")
        if not val_records:
            log("warning: no validation images: best.pt will hold the final weights, not the "
                "best ones (set data.fold or data.val_split to validate)")
        ckpt = _resume_checkpoint(out, cfg, log) if args.resume else None
        seed_all(tc.seed)
        family = get_family(cfg.model.family)
        model = family.build(**cfg.model.args)
        # the test images' types are unknown: predict (and validation) pick each image's
        # thresholds with this classifier of the training images' pixels
        type_clf = fit_on_records(train_records, log)
        model.type_classifier = type_clf
        if ckpt is None and tc.init_from:
            _init_weights(model, tc.init_from, cfg.model.family, log)
        opts = _step_options(cfg, family, dist, not args.no_progress)
        log(precision_line(opts, cfg))
        model.to(dist.device, memory_format=_memory_format(opts.channels_last))

        spec = family.target_spec(**cfg.model.args)
        dataset, sampler = td.build_dataset(cfg, spec, train_records, train_sources, dist)
        if cfg.data.type_balance > 0:
            log(f"sampling: {type_mix(sampler, train_records)} (data.type_balance "
                f"{cfg.data.type_balance:g})")
        loader = td.make_loader(cfg, dataset, sampler, family.collate, dist)
        plan = Plan.of(tc, len(loader))
        opts = dataclasses.replace(opts, max_steps=plan.total_steps)
        state = TrainState.create(model, family, cfg, plan.total_steps, opts, dataset,
                                  wrap=_ddp_wrapper(dist))
        if ckpt is not None:
            state.load_state_dict(ckpt)
        # the family's own record of the network (norm resolved, weight files dropped) rebuilds
        # it from the checkpoint alone
        files = RunCheckpoints(out, spec=model.spec.to_dict(),
                               config=to_dict(cfg), data=data_desc,
                               target_spec=spec.to_dict(),
                               type_classifier=type_clf.to_dict() if type_clf else None)
        files.on_missing_out = lambda: _out_vanished(out, cfg, lock, log)
        _prepare_out(out, cfg, dist)
        with stop_requests() as stop:
            keeper = Bookkeeper(tc, state, files, plan, dist, stop=stop, log=log,
                                validate=_validator(cfg, family, val_records, dist, opts))
            if ckpt is not None:
                keeper.train_log.resume(state.step, state.epoch)
            t_start = time.perf_counter()
            while state.step < plan.total_steps:
                sampler.set_epoch(state.epoch)
                state.start_epoch(tc.seed, dist.rank)
                skip = state.batch_in_epoch * tc.batch_size
                epoch_loader = td.make_loader(cfg, dataset, sampler, family.collate, dist,
                                              skip=skip) if skip else loader
                stats = train_one_epoch(state, epoch_loader, opts, after_step=keeper.after_step)
                if keeper.end_epoch(stats):
                    break
            keeper.finish()
        log(f"{'stopped' if keeper.interrupted else 'done'} in "
            f"{time.perf_counter() - t_start:.1f} s at step {state.step}/{plan.total_steps}; best "
            f"val score {state.best_score if state.metrics else 'n/a'}; checkpoints in {out}")
        if dist.enabled:  # every rank says where it stopped (they must agree)
            print(f"rank {dist.rank}: {'stopped' if keeper.interrupted else 'done'} at step "
                  f"{state.step}", file=sys.stderr, flush=True)
        return 130 if keeper.interrupted else 0
    finally:
        if lock is not None:
            lock.release()
        D.cleanup()


# ----------------------------------------------------------------------------- main's helpers


def _logger(is_main: bool):
    def log(msg: str) -> None:
        if is_main:
            print(msg, file=sys.stderr, flush=True)
    return log


def _resume_checkpoint(out: Path, cfg: TrainConfig, log) -> dict[str, Any] | None:
    """``<out>/last.pt`` when it exists (its model config must match), else None."""
    from cellseg.checkpoint import load_checkpoint

    path = out / "last.pt"
    if not path.exists():
        log(f"--resume: no {path} yet, starting from scratch")
        return None
    ckpt = load_checkpoint(path)  # sha256-verified: a torn or replaced last.pt is one line
    # compared typed: a config saved with only the non-default args is the same model
    if from_dict(type(cfg.model), ckpt["config"].get("model")) != cfg.model:
        raise ConfigError(f"--resume: {path} was trained with model {ckpt['config'].get('model')}"
                          f", the config now says {to_dict(cfg.model)}; resume with the same "
                          "model or start a new --out")
    log(f"resuming from {path} (epoch {ckpt['epoch']}, step {ckpt['step']})")
    return ckpt


def _init_weights(model: Any, path: str, family: str, log) -> None:
    """Load matching weights from a checkpoint (pretraining -> fine-tuning); shapes that differ
    (e.g. a new head) are skipped and reported."""
    from cellseg.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt["family"] != family:
        raise ConfigError(f"--init-from {path} holds a {ckpt['family']!r} model, this config "
                          f"trains {family!r}")
    src = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    own = model.state_dict()
    loadable = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    if not loadable:
        raise ConfigError(f"--init-from {path}: no weight fits this model "
                          f"(built with {ckpt.get('model_args')}); check model.args")
    skipped = sorted(set(src) - set(loadable))
    missing = sorted(set(own) - set(loadable))
    model.load_state_dict(loadable, strict=False)
    log(f"initialised {len(loadable)}/{len(own)} tensors from {path}"
        + (f"; skipped {len(skipped)} (e.g. {skipped[:3]})" if skipped else "")
        + (f"; {len(missing)} left as built (e.g. {missing[:3]})" if missing else ""))


def _step_options(cfg: TrainConfig, family: Any, dist: Any, progress: bool):
    """How to step: device, accumulation, clipping, autocast dtype, memory layout."""
    import torch

    from cellseg.training.engine import StepOptions

    tc, cuda = cfg.train, dist.device.type == "cuda"
    want = tc.amp_dtype
    if want == "bfloat16_if_native":
        from cellseg.config import native_bfloat16  # looked up per call: tests patch it

        want = "bfloat16" if native_bfloat16(dist.device) else "auto"
    amp_dtype = None
    if tc.amp and (cuda or want != "auto"):
        # CUDA: float16 + GradScaler unless bfloat16 is asked for. CPU: only on request ("auto"
        # is fp32 there: both are slower than fp32 on CPUs without bf16/fp16 units); float16 on
        # CPU runs the CUDA code path (autocast float16 + a GradScaler), which is how that path
        # is tested on machines without a GPU
        amp_dtype = torch.bfloat16 if want == "bfloat16" else torch.float16
    channels_last = (tc.channels_last if tc.channels_last is not None
                     else getattr(family, "kind", None) == "dense")
    return StepOptions(device=dist.device, grad_accum=tc.grad_accum, clip_norm=tc.clip_norm,
                       amp_dtype=amp_dtype, channels_last=channels_last,
                       log_every=tc.log_every, progress=progress and dist.is_main)


def precision_line(opts: Any, cfg: TrainConfig) -> str:
    """One log line: the step's precision, and why when ``bfloat16_if_native`` decided it."""
    name = {None: "float32"}.get(opts.amp_dtype, str(opts.amp_dtype).replace("torch.", ""))
    line = f"precision: {name}" + (" autocast" if opts.amp_dtype is not None else "")
    if cfg.train.amp and cfg.train.amp_dtype == "bfloat16_if_native":
        line += (" (train.amp_dtype bfloat16_if_native: this device computes bfloat16 natively)"
                 if opts.amp_dtype is not None and "bfloat16" in name else
                 " (train.amp_dtype bfloat16_if_native: this device has no native bfloat16, "
                 "which would be slower than float32 here; a step budget sized for bfloat16 "
                 "then takes about twice the CPU time)")
    return line


def _memory_format(channels_last: bool):
    import torch

    return torch.channels_last if channels_last else torch.preserve_format


def _ddp_wrapper(dist: Any):
    if not dist.enabled:
        return None
    import torch

    # device_ids on CUDA: UNTESTED here (no GPU; docs/status.md); CPU/gloo DDP is tested
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return lambda net: torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def _validator(cfg: TrainConfig, family: Any, records: list, dist: Any, opts: Any):
    """``model -> metrics`` on the validation records (rank 0), or None without records."""
    if not records:
        return None
    from cellseg.infer.config import load_inference_config
    from cellseg.training.engine import evaluate

    infer_cfg = load_inference_config(cfg.val.infer)
    return lambda model: evaluate(model, family, records, infer_cfg, device=dist.device,
                                  progress=opts.progress, matching=cfg.val.matching)


def _lock_out(out: Path, resume: bool, dist: Any, log):
    """Rank 0 takes ``<out>/.lock`` (``cellseg.training.runlock``); every rank raises the same
    ``RunLockedError`` when it is refused. Returns the lock (None on other ranks)."""
    from cellseg.training import distributed as D
    from cellseg.training.runlock import RunLock, RunLockedError

    lock, refused = None, None
    if dist.is_main:
        lock = RunLock(out, resume=resume, log=log)
        try:
            lock.acquire()
        except RunLockedError as exc:
            refused = (exc.what, exc.where, exc.fix)
    refused = D.broadcast_object(refused)
    if refused is not None:
        what, where, fix = refused
        raise RunLockedError(what, where=where, fix=fix)
    return lock


def _out_vanished(out: Path, cfg: TrainConfig, lock: Any, log) -> None:
    """The run folder was deleted (or unmounted) mid-run: recreate it with config.yaml and the
    lock, so the checkpoint being written is not lost."""
    log(f"warning: the output folder {out} vanished mid-run (deleted or unmounted); recreating "
        "it and writing the checkpoint there (earlier files in it are gone)")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(out / "config.yaml", cfg)
    if lock is not None:
        lock.refresh()


def _prepare_out(out: Path, cfg: TrainConfig, dist: Any) -> None:
    if not dist.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # left by a run killed while writing a file
        stale.unlink(missing_ok=True)
    save_yaml(out / "config.yaml", cfg)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
