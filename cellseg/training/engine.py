"""The training step and validation, model-family agnostic.

    opts = StepOptions(device=torch.device("cuda"), grad_accum=2, clip_norm=10.0,
                       amp_dtype=torch.float16, max_steps=10_000)
    stats = train_one_epoch(state, loader, opts, after_step=bookkeeper.after_step)
    metrics = evaluate(state.eval_model, family, val_records, infer_cfg, device=device)

``train_one_epoch`` runs ``family.loss`` on each batch, accumulates gradients over ``grad_accum``
batches, clips, steps the optimiser and the per-step LR schedule (linear warmup + cosine,
``lr_factor``) and updates the EMA. Mixed precision is one code path: ``torch.autocast`` with
``opts.amp_dtype`` (float16 on CUDA, or on CPU when asked for, with ``state.scaler`` a
GradScaler: scaled backward, unscale before clipping, a step with inf/NaN gradients skipped and
the scale lowered; bfloat16 without a scaler).
Loss values stay on the device between log points, so a GPU is synchronised once per step
(the non-finite check) and not once per loss term. A non-finite loss stops the run with every
loss term in the message. ``evaluate`` scores held-out images with the competition metric through
the same code path as inference (``cellseg.infer.predict.predict_records`` then
``cellseg.core.metrics.score_instances``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from cellseg.config import OptimConfig, ScheduleConfig

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.training.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message holds every loss term and where it happened."""


@dataclass(frozen=True)
class StepOptions:
    """How ``train_one_epoch`` steps (everything that is not state).

    amp_dtype: None (fp32) or the autocast dtype; max_steps: stop once ``state.step`` reaches it;
    log_every: optimiser steps between loss reports to ``after_step`` (and the progress bar).
    """

    device: torch.device = torch.device("cpu")
    grad_accum: int = 1
    clip_norm: float | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    max_steps: int | None = None
    log_every: int = 10
    progress: bool = False


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
    """The bare network inside DistributedDataParallel / DataParallel / ``torch.compile``."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move tensors inside nested lists/tuples/dicts to ``device`` (non-blocking: the copy from
    pinned memory overlaps the step). With ``channels_last`` 4-D tensors change layout too."""
    if isinstance(obj, torch.Tensor):
        # non_blocking only overlaps anything for pinned host memory -> CUDA: UNTESTED here
        # (no GPU; docs/status.md); on CPU it is a plain copy
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.ndim == 4:
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, channels_last) for v in obj)
    return obj


# ----------------------------------------------------------------------------- training

AfterStep = Callable[["TrainState", "dict[str, float] | None"], bool]


def train_one_epoch(state: "TrainState", loader: Iterable, opts: StepOptions,
                    after_step: AfterStep | None = None) -> dict[str, float]:
    """Train one pass over ``loader`` (the rest of the epoch when resuming mid-epoch); return mean
    losses plus ``lr``, ``images``, ``batches`` and ``seconds``.

    ``loader`` yields ``family.collate`` batches ``(images, targets)``. One optimiser step is taken
    every ``grad_accum`` batches and at the loader's last batch. ``state.step`` and
    ``state.batch_in_epoch`` advance as it goes. After every optimiser step
    ``after_step(state, losses)`` runs (``losses``: the mean loss terms since the previous report,
    every ``log_every`` steps, else None); it returns True to stop the epoch (Ctrl-C, early stop).
    The epoch also stops once ``opts.max_steps`` is reached.
    """
    from tqdm import tqdm

    net, family = state.net, state.family
    net.train()
    n_local = None
    with contextlib.suppress(TypeError):
        n_local = len(loader)  # type: ignore[arg-type]
    bar = tqdm(loader, total=None if n_local is None else n_local + state.batch_in_epoch,
               initial=state.batch_in_epoch, desc=f"epoch {state.epoch}", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True, leave=False)
    sums: dict[str, torch.Tensor] = {}    # on the device: summed without a sync per term
    window: dict[str, torch.Tensor] = {}  # since the last report
    n_window = n_batches = n_images = pending = 0
    t0 = time.perf_counter()
    state.optimizer.zero_grad(set_to_none=True)
    for images, targets in bar:
        # dense targets in the logits' layout too: a loss over mixed layouts runs ~1.5x slower
        images = to_device(images, opts.device, opts.channels_last)
        targets = to_device(targets, opts.device, opts.channels_last)
        # step after grad_accum micro-batches, and on the loader's last batch: under DDP every
        # step must follow a synchronised backward or the ranks' weights drift apart
        sync = pending + 1 >= opts.grad_accum or (n_local is not None and n_batches + 1 == n_local)
        # DDP: skip the gradient all-reduce on micro-batches that do not step
        ctx = net.no_sync() if (not sync and hasattr(net, "no_sync")) else contextlib.nullcontext()
        with ctx:
            with torch.autocast(opts.device.type, dtype=opts.amp_dtype or torch.float32,
                                enabled=opts.amp_dtype is not None):
                losses = family.loss(net, images, targets)
            loss = losses["loss"]
            if not math.isfinite(float(loss.detach())):  # the step's one host sync
                _non_finite(losses, state)
            scaled = loss / opts.grad_accum
            (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
        pending += 1
        n_batches += 1
        state.batch_in_epoch += 1
        n_images += _batch_size(images)
        for k, v in losses.items():
            v = v.detach().float()
            sums[k] = sums[k] + v if k in sums else v
            window[k] = window[k] + v if k in window else v
        n_window += 1
        if not sync:
            continue
        _optimizer_step(state, opts.clip_norm)
        pending = 0
        state.step += 1
        report = None
        if state.step % max(1, opts.log_every) == 0:
            report = {k: float(v) / n_window for k, v in window.items()}
            window, n_window = {}, 0
            if opts.progress:
                bar.set_postfix(loss=f"{report['loss']:.4f}",
                                lr=f"{state.optimizer.param_groups[0]['lr']:.2e}")
        stop = after_step(state, report) if after_step is not None else False
        if stop or (opts.max_steps is not None and state.step >= opts.max_steps):
            break
    if pending:  # a trailing partial group of a loader without len() still counts as a step
        _optimizer_step(state, opts.clip_norm)
        state.step += 1
    bar.close()
    out = {k: float(v) / max(1, n_batches) for k, v in sums.items()}
    out.update(lr=state.optimizer.param_groups[0]["lr"], images=float(n_images),
               batches=float(n_batches), seconds=time.perf_counter() - t0)
    return out


def _non_finite(losses: Mapping[str, torch.Tensor], state: "TrainState") -> None:
    detail = {k: float(v.detach()) for k, v in losses.items()}
    print(f"non-finite loss at epoch {state.epoch}, step {state.step}: {detail}",
          file=sys.stderr, flush=True)
    raise NonFiniteLossError(
        f"loss is {detail['loss']} at epoch {state.epoch}, optimiser step {state.step} "
        f"(losses: {detail}); lower optim.lr, raise schedule.warmup_steps or set "
        "train.clip_norm, and check the batch's targets")


def _optimizer_step(state: "TrainState", clip_norm: float | None) -> None:
    optimizer, scaler = state.optimizer, state.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model)


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
             device: torch.device | str = "cpu", progress: bool = True,
             matching: str = "dsb") -> dict[str, Any]:
    """Competition metric of ``model`` on held-out ``records`` (``ImageRecord`` with RLEs),
    under the matching rule ``matching`` (``cellseg.core.metrics.MATCHING_RULES``).

    Predicts through ``cellseg.infer.predict.predict_records``, the loop behind ``cellseg
    predict``: same chunks of ``infer_cfg.batch_size`` images, tiling, decode, cell-type decision
    (``cellseg.infer.celltype``: the records' true types are NOT used, as predict cannot know
    them) and postprocessing; so the score equals ``cellseg score`` of ``cellseg predict`` with
    the same checkpoint and config. Scores with ``cellseg.core.metrics.score_instances``.
    Returns ``{"score": float, "n_images": int, "n_pred": int, "n_true": int,
    "score_<cell_type>": float, ...}``.
    """
    from tqdm import tqdm

    from cellseg.infer.predict import predict_records
    from cellseg.core.metrics import score_instances

    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = torch.device(device)
    try:
        stream = predict_records([(net, family, 1.0)], records, infer_cfg, device=device)
        preds = [inst for _, _, inst in tqdm(stream, total=len(records), desc="validate",
                                             file=sys.stderr, disable=not progress,
                                             leave=False, dynamic_ncols=True)]
    finally:
        net.train(was_training)
    report = score_instances(records, preds, matching=matching)
    out: dict[str, Any] = {"score": float(report.score), "n_images": len(records),
                           "n_pred": int(sum(len(p) for p in preds)),
                           "n_true": int(sum(r.n_instances for r in records))}
    per_type = getattr(report, "per_cell_type", None) or {}
    for cell_type, value in dict(per_type).items():
        value = getattr(value, "score", value)
        if isinstance(value, (int, float)):
            out[f"score_{cell_type}"] = float(value)
    return out
