"""Training orchestration: data, model, optimiser, epochs, validation, checkpoints, resume, DDP.

    cellseg train --config unet_tiny --data data/synth/competition --out runs/unet_tiny
    cellseg train --config unet_livecell_pretrain --data /data/LIVECell_dataset_2021 --out runs/unet_lc
    cellseg train --config unet_competition_finetune --data /data/sartorius \\
        --init-from runs/unet_lc/best.pt --out runs/unet_ft_f0 --set data.fold=0
    cellseg train --config unet_tiny --data ... --out runs/unet_tiny --resume     # after a crash
    torchrun --nproc_per_node 2 -m cellseg train --config unet_tiny --data ... --out runs/ddp

The output folder receives ``last.pt`` (every epoch, optionally every N steps: resume from it),
``best.pt`` (best validation score; the final weights when there is no validation), ``log.csv``,
``steps.csv``, ``curves.png`` and ``config.yaml``. Checkpoints are self-describing (see
``cellseg.checkpoint``). Only rank 0 writes files and validates under DDP.

Resume (``--resume``, also after kill -9) continues at the saved epoch and step, mid-epoch too:
weights, optimiser, LR schedule, AMP scaler, EMA, early-stopping counters and RNG states are
restored. Every epoch reseeds its shuffle and augmentation from (seed, epoch), so on CPU with
``data.workers=0`` a resumed run ends bit-identical to an uninterrupted one (data-loader workers keep
their own augmentation streams, which no checkpoint captures).

Data: records come from ``cellseg.data.loaders.load_records`` for every ``data.sources`` entry.
Validation images are ``data.val_split`` of the same sources (LIVECell's val split) or else the
held-out ``data.fold`` of ``make_folds`` (grouped by sample_id, stratified by cell type).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cellseg.config import ConfigError, DataConfig, TrainConfig, load_train_config, save_yaml, to_dict


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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellseg train", description=__doc__.split("\n\n")[0],
                                     add_help=add_help)
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The training config named by ``--config`` with ``--set``/``--data``/``--out``/... applied."""
    overrides = list(args.overrides or [])
    if args.data:
        overrides.append("data.sources=[" + ", ".join(_yaml_str(p) for p in args.data) + "]")
    if args.out:
        overrides.append(f"train.out={_yaml_str(args.out)}")
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={_yaml_str(args.init_from)}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={_yaml_str(args.device)}")
    return load_train_config(args.config, overrides)


def _yaml_str(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


# ----------------------------------------------------------------------------- data


def load_data(cfg: DataConfig, log=print) -> tuple[list, list, dict[str, Any]]:
    """(train records, validation records, description for the checkpoint)."""
    from cellseg.data.loaders import load_records

    if not cfg.sources:
        raise ConfigError("no training data: pass --data PATH (competition folder, train.csv, "
                          "LIVECell root or COCO JSON) or set data.sources in the config")
    records = [r for src in cfg.sources for r in load_records(src, split=cfg.split)]
    records = _filter(records, cfg)
    desc: dict[str, Any] = {"sources": list(cfg.sources), "split": cfg.split}
    if cfg.val_split:
        val = _filter([r for src in cfg.sources for r in load_records(src, split=cfg.val_split)], cfg)
        train = records
        desc["val_split"] = cfg.val_split
    elif cfg.fold is not None:
        from cellseg.data.folds import make_folds

        n_groups = len({r.sample_id or f"image:{r.image_id}" for r in records})
        n_folds = min(cfg.n_folds, n_groups)
        if n_folds < cfg.n_folds:
            log(f"warning: only {n_groups} sample group(s) for {cfg.n_folds} folds; "
                f"using {n_folds} folds")
        if n_folds < 2 or cfg.fold >= n_folds:
            log("warning: too few sample groups to hold a fold out; training without validation")
            train, val = records, []
        else:
            folds = make_folds(records, n_folds=n_folds, seed=cfg.fold_seed)
            val = [r for r in records if folds[r.image_id] == cfg.fold]
            train = [r for r in records if folds[r.image_id] != cfg.fold]
        desc.update(fold=cfg.fold, n_folds=n_folds, fold_seed=cfg.fold_seed)
    else:
        train, val = records, []
    if cfg.max_train_images is not None:
        train = train[:cfg.max_train_images]
    if cfg.max_val_images is not None:
        val = _spread(val, cfg.max_val_images)
    if not train:
        raise ConfigError(f"no training images left from {list(cfg.sources)} (split "
                          f"{cfg.split!r}, min_cells {cfg.min_cells}, cell_types {cfg.cell_types})")
    desc.update(n_train=len(train), n_val=len(val),
                n_train_cells=sum(r.n_instances for r in train),
                val_ids=[r.image_id for r in val], train_ids=[r.image_id for r in train],
                cell_types=sorted({str(r.cell_type) for r in train}))
    return train, val, desc


def _filter(records: list, cfg: DataConfig) -> list:
    if cfg.min_cells:
        records = [r for r in records if r.n_instances >= cfg.min_cells]
    if cfg.cell_types:
        keep = {t.lower() for t in cfg.cell_types}
        records = [r for r in records if str(r.cell_type).lower() in keep]
    return records


def _spread(records: list, n: int) -> list:
    """``n`` records evenly spaced over the list (covers every cell type of a sorted list)."""
    if len(records) <= n:
        return list(records)
    step = len(records) / n
    return [records[int(i * step)] for i in range(n)]


def _init_weights(model: Any, path: str, family: str, log=print) -> None:
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


# ----------------------------------------------------------------------------- checkpoints / main


def main(args: argparse.Namespace) -> int:
    """Train as configured by ``args`` (see ``get_args_parser``); return an exit code."""
    import torch

    from cellseg import distributed as D
    from cellseg import engine
    from cellseg.checkpoint import load_checkpoint, save_checkpoint
    from cellseg.train_log import TrainLog

    cfg = config_from_args(args)
    tc = cfg.train
    dist = D.init(tc.device)
    progress = dist.is_main and not getattr(args, "no_progress", False)

    def log(msg: str) -> None:
        if dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    try:
        out = Path(tc.out)
        resume_path = out / "last.pt"
        ckpt = None
        if args.resume:
            if resume_path.exists():
                ckpt = load_checkpoint(resume_path)
                if ckpt["config"].get("model") != to_dict(cfg.model):
                    raise ConfigError(f"--resume: {resume_path} was trained with model "
                                      f"{ckpt['config'].get('model')}, the config now says "
                                      f"{to_dict(cfg.model)}")
                log(f"resuming from {resume_path} (epoch {ckpt['epoch']}, step {ckpt['step']})")
            else:
                log(f"--resume: no {resume_path} yet, starting from scratch")

        engine.seed_all(tc.seed)
        from cellseg.models import get_family

        family = get_family(cfg.model.family)
        model = family.build(**cfg.model.args)
        # the family's own record of its arguments (norm resolved, weight files dropped) rebuilds
        # the network from the checkpoint alone
        model_args = to_dict(getattr(model, "cellseg_args", None) or dict(cfg.model.args))
        if ckpt is None and tc.init_from:
            _init_weights(model, tc.init_from, cfg.model.family, log)
        model.to(dist.device)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])

        train_records, val_records, data_desc = load_data(cfg.data, log)
        log(f"data: {len(train_records)} training images ({data_desc['n_train_cells']} cells), "
            f"{len(val_records)} validation images")

        loader, sampler, dataset = _make_loader(cfg, family, train_records, dist, model)
        steps_per_epoch = math.ceil(len(loader) / tc.grad_accum)
        # the schedule spans the configured epochs; max_steps only cuts the run short, so a run
        # stopped by max_steps and resumed follows the same LR curve as an uninterrupted one
        total_steps = steps_per_epoch * tc.epochs

        net = model
        if dist.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        optimizer = engine.build_optimizer(model, cfg.optim)
        scheduler = engine.build_scheduler(optimizer, total_steps, cfg.schedule)
        use_amp = tc.amp and dist.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        ema = engine.ModelEMA(model, tc.ema_decay) if tc.ema_decay else None
        state = engine.LoopState(step=0, max_steps=tc.max_steps)
        start_epoch, skip_batches, best_score, bad_vals = 0, 0, -math.inf, 0
        best_metrics: dict[str, Any] = {}
        train_log = TrainLog(out)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.load_state_dict(ckpt["ema"], ckpt.get("ema_updates", 0))
            state.step = int(ckpt["step"])
            start_epoch = int(ckpt["epoch"])
            skip_batches = int(ckpt.get("batch_in_epoch", 0))
            best_score = float(ckpt.get("best_score", -math.inf))
            best_metrics = dict(ckpt.get("best_metrics") or {})
            bad_vals = int(ckpt.get("bad_vals", 0))
            if dist.is_main:
                train_log.resume(state.step, start_epoch)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(".*.tmp"):  # left by a run killed while writing a file
                stale.unlink(missing_ok=True)
            save_yaml(out / "config.yaml", cfg)

        infer_cfg = None
        if val_records and dist.is_main:
            from cellseg.infer.config import load_inference_config

            infer_cfg = load_inference_config(dict(cfg.val.infer))

        def checkpoint_state(epoch: int, metrics: dict, batch_in_epoch: int = 0) -> dict:
            return dict(model=model.state_dict(), family=cfg.model.family,
                        model_args=model_args, config=to_dict(cfg), epoch=epoch,
                        step=state.step, batch_in_epoch=batch_in_epoch, metrics=metrics,
                        best_score=best_score, best_metrics=best_metrics, bad_vals=bad_vals,
                        data=data_desc, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else None,
                        ema=ema.state_dict() if ema is not None else None,
                        ema_updates=ema.updates if ema is not None else 0,
                        rng={**engine.rng_state(), "augment": engine.augment_rng_state(dataset)})

        if ckpt is not None and skip_batches == 0 and state.done:
            log("nothing to do: the checkpoint already reached train.max_steps")
        epoch = start_epoch
        t_start = time.perf_counter()
        for epoch in range(start_epoch, tc.epochs):
            if state.done:
                break
            skip = skip_batches if epoch == start_epoch else 0
            if skip and ckpt is not None:
                engine.set_rng_state(ckpt.get("rng") or {})
                engine.set_augment_rng_state(dataset, (ckpt.get("rng") or {}).get("augment"))
            else:
                epoch_seed = tc.seed * 1_000_003 + epoch * 1_009 + dist.rank
                engine.seed_all(epoch_seed)
                engine.reseed_augment(dataset, epoch_seed)
            sampler.set_epoch(epoch)
            epoch_loader = loader
            if skip:
                epoch_loader = _make_loader(
                    cfg, family, train_records, dist, model, dataset=dataset,
                    sampler=engine.SkipSampler(sampler, skip * tc.batch_size))[0]

            def on_step(step: int, losses: dict[str, float], _epoch=epoch) -> None:
                if dist.is_main:
                    train_log.add_step({"step": step, "epoch": _epoch,
                                        "lr": optimizer.param_groups[0]["lr"], **losses})
                done_batches = skip + (step - first_step) * tc.grad_accum
                # at the epoch's last batch the end-of-epoch checkpoint follows at once
                if (tc.save_every_steps and step % tc.save_every_steps == 0 and dist.is_main
                        and done_batches < len(loader)):
                    save_checkpoint(resume_path, **checkpoint_state(_epoch, {}, done_batches))
                    train_log.write(plot=False)

            first_step = state.step
            stats = engine.train_one_epoch(
                net, family, epoch_loader, optimizer, scheduler, device=dist.device, epoch=epoch,
                state=state, scaler=scaler, amp=use_amp, grad_accum=tc.grad_accum,
                clip_norm=tc.clip_norm, ema=ema, skip_batches=skip, progress=progress,
                log_every=tc.log_every, on_step=on_step)
            stats = D.mean_over_ranks(stats, dist.device)
            finished_epoch = skip + int(round(stats.get("batches", 0))) >= len(loader)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "lr": stats["lr"],
                                   "seconds": round(stats["seconds"], 2),
                                   "images_per_s": round(stats["images"] * dist.world_size
                                                         / max(stats["seconds"], 1e-9), 3)}
            row.update({k: v for k, v in stats.items() if k not in _NOT_LOSSES})
            last_epoch = epoch + 1 >= tc.epochs or state.done
            metrics: dict[str, Any] = {}
            stop = False
            if dist.is_main:
                if val_records and ((epoch + 1) % tc.val_every == 0 or last_epoch):
                    eval_model = ema.module if ema is not None else model
                    metrics = engine.evaluate(eval_model, family, val_records, infer_cfg,
                                              device=dist.device, progress=progress)
                    row.update({f"val_{k}": v for k, v in metrics.items()
                                if k == "score" or k.startswith("score_")})
                    improved = metrics["score"] > best_score
                    if improved:
                        best_score, best_metrics, bad_vals = metrics["score"], metrics, 0
                    else:
                        bad_vals += 1
                    log(f"epoch {epoch + 1}: loss {stats.get('loss', float('nan')):.4f}, "
                        f"val score {metrics['score']:.4f} (best {best_score:.4f})")
                    stop = (tc.early_stop_patience is not None
                            and bad_vals >= tc.early_stop_patience)
                else:
                    improved = not val_records  # no validation: best.pt mirrors the latest weights
                    log(f"epoch {epoch + 1}: loss {stats.get('loss', float('nan')):.4f}")
                done_epoch = epoch + 1 if finished_epoch else epoch
                done_batches = 0 if finished_epoch else skip + int(stats.get("batches", 0))
                ck = checkpoint_state(done_epoch, metrics, done_batches)
                save_checkpoint(resume_path, **ck)
                if improved:
                    save_checkpoint(out / "best.pt", **ck)
                train_log.add_epoch(row)
                train_log.write()
                if stop:
                    log(f"early stop: no improvement in {bad_vals} validations")
            if D.broadcast_object(stop):
                break
        D.barrier()
        if dist.is_main:
            log(f"done in {time.perf_counter() - t_start:.1f} s: {state.step} steps; "
                f"best val score {best_score if best_score > -math.inf else 'n/a'}; "
                f"checkpoints in {out}")
        return 0
    finally:
        D.cleanup()


_NOT_LOSSES = ("lr", "images", "batches", "seconds")


def _make_loader(cfg: TrainConfig, family: Any, records: Sequence, dist: Any, model: Any, *,
                 dataset: Any = None, sampler: Any = None):
    """(DataLoader, epoch sampler, dataset) for the training records."""
    import torch

    from cellseg import engine
    from cellseg.data.datasets import InstanceDataset, build_loader

    if dataset is None:
        dataset = InstanceDataset(records, family, augment=cfg.data.augment,
                                  crop_size=cfg.data.crop_size, cache_dir=cfg.data.cache_dir,
                                  norm=getattr(model, "cellseg_norm", None),
                                  class_map=getattr(model, "cellseg_class_map", None))
    base = sampler
    if base is None:
        if dist.enabled:
            base = torch.utils.data.DistributedSampler(dataset, num_replicas=dist.world_size,
                                                       rank=dist.rank, shuffle=True,
                                                       seed=cfg.train.seed)
        else:
            base = engine.EpochPermutation(len(dataset), cfg.train.seed)
    loader = build_loader(dataset, cfg.train.batch_size, shuffle=False, workers=cfg.data.workers,
                          sampler=base, drop_last=False,
                          pin_memory=dist.device.type == "cuda")
    return loader, base, dataset


def run(args: argparse.Namespace) -> int:
    return main(args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
