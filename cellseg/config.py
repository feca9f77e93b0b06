"""Training configuration: frozen dataclasses, every default once, loaded from YAML.

    from cellseg.config import load_train_config
    cfg = load_train_config("unet_tiny", ["optim.lr=1e-3", "train.epochs=2"])

Every training default lives in the dataclasses below, once. A YAML file only names what differs.
Loading goes through the one typed loader, ``cellseg.configlib.load_config`` (shared with
``cellseg.infer.config.InferenceConfig``): unknown keys are rejected with the nearest valid key, so
a typo (``optim.lrr``, ``val.infer.tta_flips``) fails at load time instead of being ignored or
surfacing after data and model are loaded. The generic helpers are re-exported here under their
old names (``from_dict``, ``to_dict``, ``apply_overrides``, ``load_yaml``, ``save_yaml``, ...).

Bare config names (``unet_tiny``) resolve to YAML files shipped inside the package in
``cellseg/configs/<name>.yaml``; anything that looks like a path is read from disk.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from cellseg.configlib import (ConfigError, Range, apply_overrides, blame, config_names, from_dict,
                               load_config, load_yaml, parse_value, read_config_source, replace,
                               save_yaml, to_dict)
from cellseg.infer.config import InferenceConfig

__all__ = ["ConfigError", "TrainConfig", "ModelConfig", "DataConfig", "OptimConfig",
           "ScheduleConfig", "TrainSection", "ValConfig", "load_train_config",
           "apply_overrides", "config_names", "from_dict", "load_config", "load_yaml",
           "parse_value", "read_config_source", "replace", "save_yaml", "to_dict"]



# ----------------------------------------------------------------------------- training config


@dataclass(frozen=True)
class ModelConfig:
    """Which family to build and the arguments of its ``build``.

    ``args`` is typed on construction with the family's args dataclass
    (``cellseg.models.args``: ``UNetArgs``, ``MaskRCNNArgs``, ``PromptSegArgs``): every default
    filled in, an unknown key rejected with the nearest valid one. It reads as a mapping too
    (``family.build(**cfg.model.args)``).
    """

    family: str = "unet"
    args: Any = field(default_factory=dict)

    def __post_init__(self) -> None:
        from cellseg.models.args import build_args_for

        try:
            typed = build_args_for(self.family, self.args)
        except ConfigError as exc:  # key relative to this section (from_dict adds "model.")
            key = exc.key if exc.key == "family" else f"args.{exc.key}" if exc.key else "args"
            fix = exc.fix.replace("did you mean ", "did you mean model.args.") if exc.fix else None
            what = f"unknown key model.{key}" if "unknown key" in exc.what else exc.what
            raise ConfigError(what, fix=fix, key=key) from None
        object.__setattr__(self, "args", typed)


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from and how they are cut, augmented, split and sampled.

    ``sources``: one or more paths accepted by ``cellseg.data.loaders.load_records`` (a competition
    folder, a train.csv, a LIVECell root, a COCO JSON). ``split`` / ``val_split``: one value for
    every source, or a list with one entry per source (``split: [val, train]`` trains on LIVECell's
    annotated val split and a competition folder's train.csv). ``augment``: keyword arguments of
    ``cellseg.data.transforms.build_augment`` (``null``: no augmentation). Sources without a
    ``val_split`` are split into ``n_folds`` grouped folds and ``fold`` is held out for validation
    (``fold: null`` trains on everything and validates on nothing); a source with a ``val_split``
    (LIVECell: ``val``) gives its validation records from that split instead.
    ``samples_per_epoch`` (null: one sample per training image), ``source_weights`` (one per
    source: the share of each source in an epoch) and ``type_balance`` (0: each cell type of a
    source drawn in proportion to its images, 1: every type equally often) are explained in
    ``cellseg.data.sampling``.
    Every source is checked (path, layout, annotation file, image files) before a model is built.
    """

    sources: tuple[str, ...] = ()
    split: str | tuple[str, ...] = "train"
    val_split: str | tuple[str | None, ...] | None = None
    fold: int | None = 0
    n_folds: int = 5
    fold_seed: int = 0
    crop_size: int | None = 256
    augment: dict[str, Any] | None = field(default_factory=dict)
    cache_dir: str | None = None
    workers: int = 2
    min_cells: int = 0
    max_train_images: int | None = None
    max_val_images: int | None = None
    cell_types: tuple[str, ...] | None = None
    samples_per_epoch: int | None = None
    source_weights: tuple[float, ...] | None = None
    type_balance: float = 0.0

    RANGES: ClassVar[dict[str, Range]] = {
        "fold": Range(0), "n_folds": Range(2), "fold_seed": Range(0), "crop_size": Range(8),
        "workers": Range(0), "min_cells": Range(0), "max_train_images": Range(1),
        "max_val_images": Range(0), "samples_per_epoch": Range(1), "source_weights": Range(0),
        "type_balance": Range(0, 1)}


@dataclass(frozen=True)
class OptimConfig:
    name: typing.Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9

    RANGES: ClassVar[dict[str, Range]] = {"lr": Range(0), "weight_decay": Range(0),
                                          "momentum": Range(0, 1, hi_open=True)}


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-step learning rate: linear warmup from ``warmup_factor * lr``, then cosine decay to
    ``min_lr_ratio * lr`` over the whole run (constant after warmup when ``cosine`` is false)."""

    warmup_steps: int = 0
    warmup_factor: float = 0.001
    cosine: bool = True
    min_lr_ratio: float = 0.01

    RANGES: ClassVar[dict[str, Range]] = {"warmup_steps": Range(0), "warmup_factor": Range(0, 1),
                                          "min_lr_ratio": Range(0, 1)}


@dataclass(frozen=True)
class TrainSection:
    """The loop and its cadence.

    Length: the run ends after ``epochs`` passes over the data or ``max_steps`` optimiser steps,
    whichever comes first, and the LR schedule spans exactly that many steps (so ``max_steps``
    sets the schedule's length). Cadence, in epochs and/or optimiser steps (0 turns either
    off): validation every ``val_every`` epochs / ``val_every_steps`` steps and at the end;
    ``last.pt`` (the resume point) every ``save_every`` epochs / ``save_every_steps`` steps, at the
    end and on Ctrl-C/SIGTERM; ``best.pt`` only when the validation score improves (without
    validation: the final weights, flagged as such). ``early_stop_patience`` counts validations
    without improvement (null: never stop early).

    Step hygiene: ``amp`` runs the forward pass under autocast, float16 + GradScaler on CUDA;
    on CPU only when ``amp_dtype`` names a dtype (``auto`` is fp32 there): ``bfloat16`` (no
    scaler; the resnet18 UNet step ran 1.9x faster on a CPU with avx512_bf16, and is slower
    without bf16 units, hence opt-in), ``bfloat16_if_native`` (bfloat16 where the device has it
    natively, a CPU with avx512_bf16/AMX or a bf16 GPU, else as ``auto``; the CPU recipes use it)
    or ``float16`` (the CUDA path, GradScaler included: slow on CPU, there to test that path
    without a GPU). ``channels_last`` (null: on for dense
    families, whose convolutions run faster in that layout) and ``compile`` (``torch.compile``,
    off by default) only change speed. ``prefetch`` batches per loader worker are kept ready
    (2 per worker already hides the loader behind the step; a Mask R-CNN batch holds full-size
    masks, so more only costs memory).
    """

    epochs: int = 12
    batch_size: int = 4
    grad_accum: int = 1
    clip_norm: float | None = 10.0
    amp: bool = True
    amp_dtype: typing.Literal["auto", "float16", "bfloat16", "bfloat16_if_native"] = "auto"
    channels_last: bool | None = None
    compile: bool = False
    prefetch: int = 2
    ema_decay: float | None = None
    seed: int = 0
    max_steps: int | None = None
    val_every: int = 1
    val_every_steps: int = 0
    early_stop_patience: int | None = None
    save_every: int = 1
    save_every_steps: int = 0
    out: str = "runs/train"
    init_from: str | None = None
    device: str | None = None
    log_every: int = 10

    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": Range(1), "batch_size": Range(1), "grad_accum": Range(1),
        "clip_norm": Range(0), "prefetch": Range(1),
        "ema_decay": Range(0, 1, hi_open=True), "seed": Range(0), "max_steps": Range(1),
        "val_every": Range(0), "val_every_steps": Range(0), "early_stop_patience": Range(1),
        "save_every": Range(0), "save_every_steps": Range(0), "log_every": Range(1)}


@dataclass(frozen=True)
class ValConfig:
    """Validation during training: ``infer`` is the typed inference config (tiling, TTA,
    thresholds) used to predict the validation images, checked when the config is loaded;
    ``matching`` the metric's rule where truth overlaps (``dsb`` or ``greedy``, docs/metric.md)."""

    infer: InferenceConfig = field(default_factory=InferenceConfig)
    matching: str = "dsb"


@dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValConfig = field(default_factory=ValConfig)


def load_train_config(name_or_path: str | os.PathLike,
                      overrides: Iterable[str] = ()) -> TrainConfig:
    """Load a shipped config by name (``unet_tiny``) or a YAML path, apply ``a.b=c`` overrides.

    ``model.args`` is typed with the family's args dataclass (``ModelConfig``), so a key the family
    does not take fails here, before any data or model.
    """
    overrides = list(overrides)
    cfg = load_config(TrainConfig, name_or_path, overrides)
    if cfg.val.matching not in ("dsb", "greedy"):  # cellseg.core.metrics.MATCHING_RULES
        raise ConfigError(f"val.matching {cfg.val.matching!r} is not a matching rule",
                          where=blame("val.matching", overrides, str(name_or_path)),
                          fix="use dsb or greedy", key="val.matching")
    return cfg


def native_bfloat16(device: Any) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with avx512_bf16 or AMX instructions (elsewhere oneDNN emulates bfloat16 and an autocast step
    is slower than a float32 one). torch's CPU probes are private: missing ones count as no."""
    import torch

    if torch.device(device).type == "cuda":  # UNTESTED here (no GPU; docs/status.md)
        return bool(torch.cuda.is_bf16_supported())
    probes = (getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(p()) for p in probes if p is not None)
