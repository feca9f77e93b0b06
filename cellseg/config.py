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
from typing import Any, ClassVar, Iterable, Mapping

from cellseg.configlib import (ConfigError, Range, apply_overrides, blame, config_names, from_dict,
                               load_config, load_yaml, parse_value, read_config_source, replace,
                               save_yaml, to_dict)
from cellseg.infer.config import InferenceConfig

__all__ = ["ConfigError", "TrainConfig", "ModelConfig", "DataConfig", "OptimConfig",
           "ScheduleConfig", "TrainSection", "ValConfig", "load_train_config", "check_model_args",
           "apply_overrides", "config_names", "from_dict", "load_config", "load_yaml",
           "parse_value", "read_config_source", "replace", "save_yaml", "to_dict"]

_read_config_source = read_config_source  # old private name, still imported by some callers


# ----------------------------------------------------------------------------- training config


@dataclass(frozen=True)
class ModelConfig:
    """Which family to build and the explicit keyword arguments of its ``build``."""

    family: str = "unet"
    args: dict[str, Any] = field(default_factory=dict)


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
    ``samples_per_epoch`` (null: one sample per training image) and ``source_weights`` (one per
    source: the share of each source in an epoch) are explained in ``cellseg.data.sampling``.
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

    RANGES: ClassVar[dict[str, Range]] = {
        "fold": Range(0), "n_folds": Range(2), "fold_seed": Range(0), "crop_size": Range(8),
        "workers": Range(0), "min_cells": Range(0), "max_train_images": Range(1),
        "max_val_images": Range(0), "samples_per_epoch": Range(1), "source_weights": Range(0)}


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
    without bf16 units, hence opt-in) or ``float16`` (the CUDA path, GradScaler included: slow on
    CPU, there to test that path without a GPU). ``channels_last`` (null: on for dense
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
    amp_dtype: typing.Literal["auto", "float16", "bfloat16"] = "auto"
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
    thresholds) used to predict the validation images, checked when the config is loaded."""

    infer: InferenceConfig = field(default_factory=InferenceConfig)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValConfig = field(default_factory=ValConfig)


def load_train_config(name_or_path: str | os.PathLike, overrides: Iterable[str] = (), *,
                      check_model: bool = True) -> TrainConfig:
    """Load a shipped config by name (``unet_tiny``) or a YAML path, apply ``a.b=c`` overrides.

    With ``check_model`` the model arguments are checked against the family builder's signature
    (this imports the family module, hence torch).
    """
    overrides = list(overrides)
    cfg = load_config(TrainConfig, name_or_path, overrides)
    if check_model:
        try:
            check_model_args(cfg.model.family, cfg.model.args)
        except ConfigError as exc:
            where = blame(exc.key, overrides, str(name_or_path))
            raise ConfigError(exc.what, where=where, fix=exc.fix, key=exc.key) from None
    return cfg


def check_model_args(family: str, args: Mapping[str, Any]) -> None:
    """Reject ``model.args`` keys that the family's ``build`` does not take, listing valid ones."""
    import inspect

    from cellseg.models import get_family

    fam = get_family(family)
    params = inspect.signature(fam.build).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # a builder with **kwargs validates its own arguments
    valid = [n for n, p in params.items()
             if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
             and n != "self"]
    unknown = sorted(set(args) - set(valid))
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"did you mean model.args.{near[0]}? " if near else ""
        raise ConfigError(f"unknown model.args for family {family!r}: {', '.join(unknown)}",
                          where="config model.args", fix=f"{hint}valid: {', '.join(valid)}",
                          key=f"model.args.{unknown[0]}")
