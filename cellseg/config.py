"""Frozen dataclass configs loaded from YAML, with ``--set a.b=c`` overrides.

    from cellseg.config import load_train_config
    cfg = load_train_config("unet_tiny", ["optim.lr=1e-3", "train.epochs=2"])

Every training default lives in the dataclasses below, once. A YAML file only names what differs.
``from_dict`` builds (nested) frozen dataclasses from plain dicts and rejects unknown keys with the
list of valid ones, so a typo (``optim.lr_rate``) fails loudly instead of being ignored. Other modules
(``cellseg.infer.config``) reuse the generic helpers: ``from_dict``, ``to_dict``, ``apply_overrides``,
``load_yaml``, ``save_yaml``.

Bare config names (``unet_tiny``) resolve to YAML files shipped inside the package in
``cellseg/configs/<name>.yaml``; anything that looks like a path is read from disk.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key and the fix."""


# ----------------------------------------------------------------------------- generic helpers


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file gives ``{}``)."""
    import yaml  # lazy: keeps `import cellseg.config` cheap

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, "
                          f"got {type(data).__name__}")
    return data


def save_yaml(path: str | os.PathLike, data: Any) -> None:
    """Atomically write a dataclass or plain mapping as YAML."""
    import yaml

    from cellseg.io import atomic_open

    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    with atomic_open(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested containers of them) as plain YAML/JSON/pickle-safe types.

    Tuples become lists and paths become strings, so the result survives ``yaml.safe_dump``,
    ``json.dump`` and ``torch.load(weights_only=True)``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def parse_value(text: str) -> Any:
    """Type an override value the way YAML would: ``3`` -> int, ``1e-3`` -> float, ``null`` -> None,
    ``[1, 2]`` -> list, ``true`` -> bool, anything else -> str."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # YAML 1.1 (PyYAML) reads "5e-4" as a string: it wants a dot in floats. Nobody means that.
        try:
            return float(value) if _looks_float(value) else value
        except ValueError:
            return value
    return value


def _looks_float(text: str) -> bool:
    t = text.strip().lower()
    return any(c.isdigit() for c in t) and all(c in "0123456789.e+-" for c in t)


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``"a.b.c=value"`` overrides applied.

    Values are typed with ``parse_value``. Missing intermediate mappings are created; whether a key
    is valid is decided later by ``from_dict`` (which lists the valid keys).
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value "
                              f"(e.g. optim.lr=1e-3)")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is a value "
                                  f"({child!r}), not a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a plain mapping, recursing into nested dataclasses.

    Unknown keys raise ``ConfigError`` listing the valid ones; values are checked against the field
    types (ints are accepted for floats, lists for tuples, numeric strings such as ``"5e-4"`` for
    floats). ``where`` prefixes key paths in messages (e.g. the file name).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of "
                          f"{cls.__name__} fields, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {', '.join(prefix + str(k) for k in unknown)} in "
                          f"{cls.__name__}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path} must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{path}={value!r} matches none of {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}={value!r}; valid values: {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=path)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            # a single value where a list is expected: wrap it (``--set data.sources=path``)
            value = [value]
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        items = [_coerce(elem, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if value is None:
        raise ConfigError(f"{path} must not be null (expected {getattr(tp, '__name__', tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a fold name or path given as a bare number
        raise ConfigError(f"{path}={value!r} must be a string")
    return value


def replace(cfg: T, overrides: Iterable[str]) -> T:
    """A copy of dataclass ``cfg`` with ``a.b=c`` overrides applied (validated by ``from_dict``)."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), overrides))


# ----------------------------------------------------------------------------- training config


@dataclass(frozen=True)
class ModelConfig:
    """Which family to build and the explicit keyword arguments of its ``build``."""

    family: str = "unet"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Where training images come from and how they are cut, augmented and split.

    ``sources``: one or more paths accepted by ``cellseg.data.loaders.load_records`` (a competition
    folder, a train.csv, a LIVECell root, a COCO JSON). ``augment``: keyword arguments of
    ``cellseg.data.transforms.build_augment`` (``null``: no augmentation). Competition data is
    split into ``n_folds`` grouped folds and ``fold`` is held out for validation (``fold: null``
    trains on everything and validates on nothing). When ``val_split`` is set (LIVECell: ``val``)
    the validation records are instead loaded from the same sources with that split.
    """

    sources: tuple[str, ...] = ()
    split: str = "train"
    val_split: str | None = None
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


@dataclass(frozen=True)
class OptimConfig:
    name: typing.Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9


@dataclass(frozen=True)
class ScheduleConfig:
    """Per-step learning rate: linear warmup from ``warmup_factor * lr``, then cosine decay to
    ``min_lr_ratio * lr`` over the whole run (constant after warmup when ``cosine`` is false)."""

    warmup_steps: int = 0
    warmup_factor: float = 0.001
    cosine: bool = True
    min_lr_ratio: float = 0.01


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
    on CPU only with ``amp_dtype: bfloat16`` (no scaler; the resnet18 UNet step ran 1.9x faster
    on a CPU with avx512_bf16, and is slower without bf16 units, hence opt-in). ``channels_last`` (null: on for dense
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


@dataclass(frozen=True)
class ValConfig:
    """Validation: ``infer`` is passed to ``cellseg.infer.config.InferenceConfig`` via ``from_dict``."""

    infer: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValConfig = field(default_factory=ValConfig)


def config_names() -> list[str]:
    """Names of the configs shipped inside the package (``cellseg/configs/*.yaml``)."""
    from importlib import resources

    root = resources.files("cellseg") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_config_source(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    text = os.fspath(name_or_path)
    looks_like_path = (os.sep in text or "/" in text or text.endswith((".yaml", ".yml"))
                       or Path(text).exists())
    if looks_like_path:
        return load_yaml(text), text
    from importlib import resources

    res = resources.files("cellseg") / "configs" / f"{text}.yaml"
    if not res.is_file():
        raise ConfigError(f"no shipped config named {text!r}; shipped configs: "
                          f"{', '.join(config_names())} (or pass a path to a YAML file)")
    with resources.as_file(res) as p:
        return load_yaml(p), f"{text} ({p})"


read_config_source = _read_config_source  # public name: (data, origin) of a config name or path


def load_train_config(name_or_path: str | os.PathLike, overrides: Iterable[str] = (), *,
                      check_model: bool = True) -> TrainConfig:
    """Load a shipped config by name (``unet_tiny``) or a YAML path, apply ``a.b=c`` overrides.

    With ``check_model`` the model arguments are checked against the family builder's signature
    (this imports the family module, hence torch).
    """
    data, origin = _read_config_source(name_or_path)
    data = apply_overrides(data, overrides)
    try:
        cfg = from_dict(TrainConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if check_model:
        check_model_args(cfg.model.family, cfg.model.args)
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
        raise ConfigError(f"unknown model.args for family {family!r}: {', '.join(unknown)}; "
                          f"valid: {', '.join(valid)}")
