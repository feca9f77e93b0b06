"""The training loop and validation, model-family agnostic.

    stats = train_one_epoch(model, family, loader, optimizer, scheduler, device=device, epoch=e,
                            state=state, scaler=scaler, amp=True, grad_accum=2, clip_norm=10.0, ema=ema)
    metrics = evaluate(ema.module if ema else model, family, val_records, infer_cfg, device=device)

``train_one_epoch`` runs ``family.loss`` on each batch (AMP via ``torch.autocast`` + ``GradScaler`` on
CUDA; plain fp32 on CPU), accumulates gradients over ``grad_accum`` batches, clips, steps the
optimiser and the per-step LR schedule (linear warmup + cosine, ``lr_factor``) and updates the EMA.
A non-finite loss stops the run with every loss term in the message. ``evaluate`` scores held-out
images with the competition metric through the same code path as inference
(``cellseg.infer.predict.predict_image`` then ``cellseg.metrics.score_instances``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from cellseg.config import OptimConfig, ScheduleConfig


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message holds every loss term and where it happened."""


@dataclass
class LoopState:
    """Counters that survive across epochs (and are saved in checkpoints)."""

    step: int = 0                 # optimiser steps taken so far
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)

    @property
    def done(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps


# ----------------------------------------------------------------------------- optimiser, LR, EMA


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD; biases and normalisation weights (1-D tensors) get no weight decay,
    as decaying them only shrinks scales the following layers then have to undo."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    raise ValueError(f"unknown optimiser {cfg.name!r}; valid: adam, adamw, sgd")


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` at ``total_steps`` (or constant 1 when ``cosine`` is false).
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        return cfg.warmup_factor * (1 - alpha) + alpha
    if not cfg.cosine:
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    cfg: ScheduleConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR around ``lr_factor`` (a closure, so its state_dict stays plain)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))


class ModelEMA:
    """Exponential moving average of a model's weights (buffers are copied, not averaged).

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` so the average is not
    dominated by the random initialisation during the first updates.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = unwrap(model).state_dict()
        for name, v in self.module.state_dict().items():
            s = src[name].detach()
            if v.is_floating_point():
                v.lerp_(s.to(v.dtype), 1 - d)
            else:
                v.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, weights: Mapping[str, Any], updates: int) -> None:
        self.module.load_state_dict(weights)
        self.updates = updates


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside DistributedDataParallel / DataParallel."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel,
                                              nn.DataParallel)) else model


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside nested lists/tuples/dicts to ``device`` (non-blocking from pinned memory)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# ----------------------------------------------------------------------------- training


def train_one_epoch(model: nn.Module, family: Any, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, device: torch.device,
                    epoch: int, state: LoopState, scaler: "torch.amp.GradScaler | None" = None,
                    amp: bool = False, grad_accum: int = 1, clip_norm: float | None = None,
                    ema: ModelEMA | None = None, skip_batches: int = 0, progress: bool = True,
                    log_every: int = 10,
                    on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train one pass over ``loader``; return mean losses plus ``lr``, ``images``, ``seconds``.

    ``loader`` yields ``family.collate`` batches ``(images, targets)``. One optimiser step is taken
    every ``grad_accum`` batches (and once for a trailing partial group). Stops early when
    ``state.done`` (``max_steps`` reached). ``skip_batches`` only offsets the progress counter (the
    sampler already skipped them when resuming mid-epoch). ``on_step(step, losses)`` is called
    after every ``log_every``-th optimiser step with the mean losses since its previous call
    (logging, mid-epoch checkpoints).
    """
    from tqdm import tqdm

    model.train()
    use_amp = amp and device.type == "cuda"
    sums: dict[str, float] = {}
    window: dict[str, float] = {}  # since the last on_step call
    n_window = 0
    n_batches = n_images = 0
    t0 = time.perf_counter()
    total = None
    try:
        total = len(loader) + skip_batches  # type: ignore[arg-type]
    except TypeError:
        pass
    bar = tqdm(loader, total=total, initial=skip_batches, desc=f"epoch {epoch}", file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=False)
    optimizer.zero_grad(set_to_none=True)
    pending = 0  # micro-batches whose gradients are accumulated but not yet applied
    n_local = None if total is None else total - skip_batches
    for images, targets in bar:
        images, targets = to_device(images, device), to_device(targets, device)
        # step after grad_accum micro-batches, and on the loader's last batch: under DDP every
        # step must follow a synchronised backward or the ranks' weights drift apart
        sync = pending + 1 >= grad_accum or (n_local is not None and n_batches + 1 == n_local)
        # DDP: skip the gradient all-reduce on micro-batches that do not step
        ctx = (model.no_sync() if (not sync and hasattr(model, "no_sync"))
               else contextlib.nullcontext())
        with ctx:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                losses = family.loss(model, images, targets)
            loss = losses["loss"]
            if not torch.isfinite(loss).all():
                detail = {k: float(v.detach()) for k, v in losses.items()}
                print(f"non-finite loss at epoch {epoch}, step {state.step}: {detail}",
                      file=sys.stderr, flush=True)
                raise NonFiniteLossError(
                    f"loss is {float(loss.detach())} at epoch {epoch}, optimiser step {state.step} "
                    f"(losses: {detail}); lower optim.lr, raise schedule.warmup_steps or set "
                    "train.clip_norm, and check the batch's targets")
            scaled = loss / grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        pending += 1
        n_batches += 1
        n_images += _batch_size(images)
        for k, v in losses.items():
            value = float(v.detach())
            sums[k] = sums.get(k, 0.0) + value
            window[k] = window.get(k, 0.0) + value
        n_window += 1
        if sync:
            _optimizer_step(model, optimizer, scheduler, scaler, clip_norm, ema)
            pending = 0
            state.step += 1
            if progress and state.step % max(1, log_every) == 0:
                bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if on_step is not None and state.step % max(1, log_every) == 0:
                on_step(state.step, {k: v / n_window for k, v in window.items()})
                window, n_window = {}, 0
            if state.done:
                break
    if pending:  # a trailing partial group of a loader without len() still counts as a step
        _optimizer_step(model, optimizer, scheduler, scaler, clip_norm, ema)
        state.step += 1
    bar.close()
    out = {k: v / max(1, n_batches) for k, v in sums.items()}
    out.update(lr=optimizer.param_groups[0]["lr"], images=float(n_images), batches=float(n_batches),
               seconds=time.perf_counter() - t0)
    return out


def _optimizer_step(model, optimizer, scheduler, scaler, clip_norm, ema) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if ema is not None:
        ema.update(model)


def _batch_size(images: Any) -> int:
    if isinstance(images, torch.Tensor):
        return int(images.shape[0])
    try:
        return len(images)
    except TypeError:
        return 1


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def evaluate(model: nn.Module, family: Any, records: Sequence[Any], infer_cfg: Any, *,
             device: torch.device | str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Competition metric of ``model`` on held-out ``records`` (``ImageRecord`` with RLEs).

    Predicts each image with ``cellseg.infer.predict.predict_image`` (tiling, postprocessing and
    overlap removal exactly as at submission time) and scores with
    ``cellseg.metrics.score_instances``. Returns ``{"score": float, "n_images": int,
    "n_pred": int, "n_true": int, "score_<cell_type>": float, ...}``.
    """
    from tqdm import tqdm

    from cellseg.infer.predict import predict_image
    from cellseg.metrics import score_instances

    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    preds = []
    try:
        for rec in tqdm(records, desc="validate", file=sys.stderr, disable=not progress,
                        leave=False, dynamic_ncols=True):
            preds.append(predict_image([(net, family, 1.0)], rec.read_image(), infer_cfg,
                                       cell_type=rec.cell_type, device=device))
    finally:
        net.train(was_training)
    report = score_instances(records, preds)
    out: dict[str, Any] = {"score": float(report.score), "n_images": len(records),
                           "n_pred": int(sum(len(p) for p in preds)),
                           "n_true": int(sum(r.n_instances for r in records))}
    per_type = getattr(report, "per_cell_type", None) or {}
    for cell_type, value in dict(per_type).items():
        value = getattr(value, "score", value)
        if isinstance(value, (int, float)):
            out[f"score_{cell_type}"] = float(value)
    return out


# ----------------------------------------------------------------------------- reproducibility


def seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reseed_augment(dataset: Any, seed: int) -> None:
    """albumentations' Compose keeps its own RNG, untouched by global seeds: reseed it too."""
    import numpy as np

    aug = getattr(dataset, "augment", None)
    if aug is not None and hasattr(aug, "set_random_state"):
        # one generator pair shared by every transform (``set_random_seed`` would give each
        # transform its own identically seeded copy), so that one state captures them all
        aug.set_random_state(np.random.default_rng(seed % 2**32), random.Random(seed))
    elif aug is not None and hasattr(aug, "set_random_seed"):
        aug.set_random_seed(seed % 2**32)


class SkipSampler:
    """Yield the indices of ``base`` after dropping the first ``skip`` (mid-epoch resume)."""

    def __init__(self, base: Any, skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self):
        for i, idx in enumerate(self.base):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class EpochPermutation:
    """A seeded shuffle of ``range(n)`` that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def augment_rng_state(dataset: Any) -> dict[str, Any] | None:
    """The albumentations Compose RNG of the main process (exact mid-epoch resume with 0 workers;
    worker processes keep their own streams, which no checkpoint can capture)."""
    aug = getattr(dataset, "augment", None)
    gen, py = getattr(aug, "random_generator", None), getattr(aug, "py_random", None)
    if gen is None or py is None:
        return None
    v, internal, g = py.getstate()
    return {"numpy": dict(gen.bit_generator.state), "python": [v, list(internal), g]}


def set_augment_rng_state(dataset: Any, state: dict[str, Any] | None) -> None:
    aug = getattr(dataset, "augment", None)
    if not state or aug is None or getattr(aug, "random_generator", None) is None:
        return
    import numpy as np

    gen = np.random.default_rng()
    gen.bit_generator.state = state["numpy"]
    py = random.Random()
    v, internal, g = state["python"]
    py.setstate((v, tuple(internal), g))
    aug.set_random_state(gen, py)  # one shared pair, as ``reseed_augment`` installs


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                        int(pos), int(has_gauss), float(gauss)],
             "python": [py[0], list(py[1]), py[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    if not state:
        return
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    v, internal, g = state["python"]
    random.setstate((v, tuple(internal), g))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
