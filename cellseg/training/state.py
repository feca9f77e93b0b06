"""The train state: everything a resumed run needs, behind ``state_dict()``/``load_state_dict()``.

    state = TrainState.create(model, family, cfg, total_steps, device=device)
    state.load_state_dict(load_checkpoint("runs/x/last.pt"))     # resume
    save_checkpoint("runs/x/last.pt", **state.state_dict(), family=..., ...)

A ``TrainState`` holds the network (``model``: the bare module whose weights are saved; ``net``:
what the step calls, the DDP / ``torch.compile`` wrapper when there is one), the optimiser, the
per-step LR schedule, the AMP GradScaler (CUDA float16 only), the EMA, the progress counters
(``epoch`` = finished epochs, ``step`` = optimiser steps, ``batch_in_epoch`` = batches of the
current epoch already trained on), the validation record (best score, latest metrics,
validations without improvement) and the RNG states. ``state_dict()`` is made of plain types
only, so ``torch.load(weights_only=True)`` reads it back; the RNG states it loads are applied by
``restore_rng`` when the resumed epoch starts, so a CPU run with 0 workers resumes
bit-identically.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cellseg.config import TrainConfig
from cellseg.training.engine import ModelEMA, StepOptions, build_optimizer, build_scheduler


@dataclass
class TrainState:
    """Model, optimiser, schedule, scaler, EMA, counters and validation record of one run."""

    model: nn.Module
    family: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: "torch.amp.GradScaler | None" = None
    ema: ModelEMA | None = None
    net: nn.Module | None = None
    dataset: Any = None  # its augmentation RNG is part of the state
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best_score: float = -math.inf
    best_metrics: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    bad_vals: int = 0
    resume_rng: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @classmethod
    def create(cls, model: nn.Module, family: Any, cfg: TrainConfig, total_steps: int,
               opts: StepOptions, dataset: Any = None, wrap: Any = None) -> "TrainState":
        """Optimiser, schedule over ``total_steps``, scaler (float16 autocast only) and EMA for
        ``model``; ``wrap(model) -> module`` gives the module the step calls (DDP)."""
        optimizer = build_optimizer(model, cfg.optim)
        scaler = (torch.amp.GradScaler(opts.device.type) if opts.amp_dtype == torch.float16
                  else None)
        net = model
        if cfg.train.compile:
            net = torch.compile(net)
        if wrap is not None:
            net = wrap(net)
        return cls(model=model, family=family, optimizer=optimizer,
                   scheduler=build_scheduler(optimizer, total_steps, cfg.schedule), scaler=scaler,
                   ema=ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay else None,
                   net=net, dataset=dataset)

    @property
    def eval_model(self) -> nn.Module:
        """The weights to validate and to ship: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def record_validation(self, metrics: dict[str, Any]) -> bool:
        """Keep ``metrics`` as the latest; return True when its score beats the best so far."""
        self.metrics = dict(metrics)
        improved = metrics["score"] > self.best_score
        if improved:
            self.best_score, self.best_metrics, self.bad_vals = metrics["score"], dict(metrics), 0
        else:
            self.bad_vals += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed resume state (the checkpoint keys of ``cellseg.checkpoint``)."""
        return dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    ema=self.ema.state_dict() if self.ema is not None else None,
                    ema_updates=self.ema.updates if self.ema is not None else 0,
                    epoch=self.epoch, step=self.step, batch_in_epoch=self.batch_in_epoch,
                    best_score=self.best_score, best_metrics=self.best_metrics,
                    metrics=self.metrics, bad_vals=self.bad_vals,
                    rng={**rng_state(), "augment": augment_rng_state(self.dataset)})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore everything ``state_dict`` saved (a checkpoint dict is accepted as is)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], state.get("ema_updates", 0))
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.best_score = float(state.get("best_score", -math.inf))
        self.best_metrics = dict(state.get("best_metrics") or {})
        self.metrics = dict(state.get("metrics") or {})
        self.bad_vals = int(state.get("bad_vals", 0))
        self.resume_rng = state.get("rng") or {}

    def start_epoch(self, seed: int, rank: int = 0) -> None:
        """Seed the epoch's RNGs: from (seed, epoch, rank) for a fresh epoch, from the checkpoint
        when resuming inside one."""
        if self.batch_in_epoch and self.resume_rng is not None:
            set_rng_state(self.resume_rng)
            set_augment_rng_state(self.dataset, self.resume_rng.get("augment"))
        else:
            epoch_seed = seed * 1_000_003 + self.epoch * 1_009 + rank
            seed_all(epoch_seed)
            reseed_augment(self.dataset, epoch_seed)
        self.resume_rng = None

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0


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
        # UNTESTED here (no GPU; docs/status.md): CUDA RNG states in the resume point
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
