"""The one typed config loader: frozen dataclasses from YAML, with ``--set a.b=c`` overrides.

    from cellseg.configlib import load_config
    cfg = load_config(TrainConfig, "unet_tiny", ["optim.lr=1e-3"])           # cellseg.config
    inf = load_config(InferenceConfig, "tuned.yaml", ["tta=[h]"], section="infer")

Serves both ``cellseg.config.TrainConfig`` and ``cellseg.infer.config.InferenceConfig`` (their
``load_train_config`` / ``load_inference_config`` are thin wrappers). ``from_dict`` builds nested
frozen dataclasses from plain dicts, checks every value against the field's type hint and rejects an
unknown key with the nearest valid one (``optim.lrr``: did you mean ``optim.lr``?), so a typo fails
when the config is loaded, before any data or model. Errors are ``cellseg.errors.ConfigError``
(a ``UserError``): the CLI prints them on one line.

Bare config names (``unet_tiny``) resolve to YAML files shipped inside the package in
``cellseg/configs/<name>.yaml``; anything that looks like a path is read from disk.

This module imports only the standard library at import time (PyYAML lazily), and no other
cellseg module but ``cellseg.errors``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

from cellseg.errors import ConfigError

T = TypeVar("T")

__all__ = ["ConfigError", "Range", "load_config", "blame", "from_dict", "to_dict", "apply_overrides",
           "parse_value", "replace", "load_yaml", "save_yaml", "config_names", "read_config_source"]


# ----------------------------------------------------------------------------- YAML files


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path`` (an empty file gives ``{}``)."""
    import yaml  # lazy: keeps `import cellseg.config` cheap

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file does not exist", where=str(path),
                          fix="check the path or pass a shipped config name") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file cannot be read ({type(exc).__name__})", where=str(path),
                          fix="pass a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise ConfigError(f"config file is not valid YAML ({first})", where=str(path),
                          fix="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file holds a {type(data).__name__}, not a mapping",
                          where=str(path), fix="write `key: value` lines at top level")
    return data


def save_yaml(path: str | os.PathLike, data: Any) -> None:
    """Atomically write a dataclass or plain mapping as YAML."""
    import yaml

    from cellseg.io import atomic_open

    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    with atomic_open(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def config_names() -> list[str]:
    """Names of the configs shipped inside the package (``cellseg/configs/*.yaml``)."""
    from importlib import resources

    root = resources.files("cellseg") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_config_source(name_or_path: str | os.PathLike, _seen: tuple[str, ...] = ()
                       ) -> tuple[dict[str, Any], str]:
    """``(mapping, origin)`` of a shipped config name or a YAML path; origin names it in errors.

    A config may start from another: ``base: unet_small_real`` (a shipped name or a YAML path)
    loads that one first, then this file's keys replace its keys, section by section
    (``data: {type_balance: 1.0}`` changes that key and keeps the base's other ``data`` keys).
    """
    data, origin = _read_one(name_or_path)
    base = data.pop("base", None)
    if base is None:
        return data, origin
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base={base!r} is not a config name", where=origin,
                          fix="give a shipped config name or a YAML path", key="base")
    here = os.fspath(name_or_path)
    if _looks_like_path(base) and not os.path.isabs(base) and _looks_like_path(here):
        base = os.path.normpath(os.path.join(os.path.dirname(here), base))  # beside its file
    seen = _seen or (os.path.normpath(here) if _looks_like_path(here) else here,)
    if base in seen:
        raise ConfigError(f"config bases loop: {' -> '.join((*seen, base))}", where=origin,
                          fix="remove one of the base: keys", key="base")
    parent, _ = read_config_source(base, (*seen, base))
    return _deep_merge(parent, data), origin


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _looks_like_path(text: str) -> bool:
    return (os.sep in text or "/" in text or text.endswith((".yaml", ".yml"))
            or Path(text).exists())


def _read_one(name_or_path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    text = os.fspath(name_or_path)
    if _looks_like_path(text):
        return load_yaml(text), text
    from importlib import resources

    res = resources.files("cellseg") / "configs" / f"{text}.yaml"
    if not res.is_file():
        names = config_names()
        near = difflib.get_close_matches(text, names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"no config named {text!r}", where="--config",
                          fix=f"{hint}shipped configs: {', '.join(names)} (or pass a path to a "
                              f"YAML file)")
    with resources.as_file(res) as p:
        return load_yaml(p), f"{text} ({p})"


# ----------------------------------------------------------------------------- numeric ranges


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field: ``lo``/``hi`` bounds (None: unbounded),
    inclusive unless ``lo_open``/``hi_open``.

    A config dataclass lists its numeric fields in a class-level ``RANGES: ClassVar[dict[str,
    Range]]``; ``from_dict`` checks every given value (each element of a list field) against it
    when the config is loaded, so ``train.batch_size=0`` is one line naming the key, the value
    and the range, not a PyTorch traceback later. None (a field's "off") is never range-checked.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True  # not a number: the type check decides
        if value != value:  # NaN is in no range
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True

    def __str__(self) -> str:
        lo = None if self.lo is None else f"{_num(self.lo)} {'<' if self.lo_open else '<='} "
        hi = None if self.hi is None else f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
        if lo and hi:
            return f"{lo}x{hi}"
        if lo:
            return f"x {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if hi:
            return f"x{hi}"
        return "any number"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _check_ranges(cls: type, kwargs: Mapping[str, Any], where: str) -> None:
    ranges: Mapping[str, Range] = getattr(cls, "RANGES", {}) or {}
    for name, value in kwargs.items():
        rng = ranges.get(name)
        if rng is None or value is None:
            continue
        path = f"{where}.{name}" if where else name
        items = (list(enumerate(value)) if isinstance(value, (list, tuple))
                 else [(None, value)])
        for i, v in items:
            if v not in rng:
                shown = path if i is None else f"{path}[{i}]"
                raise _key_error(f"{shown}={v!r} is out of range", path,
                                 fix=f"valid: {str(rng).replace('x', name, 1)}")


# ----------------------------------------------------------------------------- dicts <-> dataclasses


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
    is valid is decided later by ``from_dict`` (which names the nearest valid key).
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE", where="--set",
                              fix="write it like section.key=value (e.g. optim.lr=1e-3)")
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is a value "
                                  f"({child!r}), not a section", where="--set",
                                  fix=f"set {'.'.join(parts[:i + 1])}=VALUE itself")
            node = child
        node[parts[-1]] = parse_value(raw)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from a plain mapping, recursing into nested dataclasses.

    Unknown keys raise ``ConfigError`` naming the nearest valid key and listing the valid ones;
    values are checked against the field types (ints are accepted for floats, lists for tuples,
    numeric strings such as ``"5e-4"`` for floats). ``where`` is the key path of ``data`` in
    the whole config (prefixes key paths in messages). The error's ``key`` is the bad key path.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    data = {} if data is None else data
    if isinstance(data, cls):
        return data  # already typed (a default, or a config built in code)
    if not isinstance(data, Mapping):
        raise _key_error(f"{where or cls.__name__} must be a mapping of {cls.__name__} fields, "
                         f"not {type(data).__name__} {data!r}", where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        bad = unknown[0]
        near = difflib.get_close_matches(bad, list(fields), n=1)
        hint = f"did you mean {prefix}{near[0]}? " if near else ""
        names = ", ".join(prefix + k for k in unknown)
        raise _key_error(f"unknown key{'s' if len(unknown) > 1 else ''} {names}",
                         prefix + bad, fix=f"{hint}valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, path)
    _check_ranges(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # __post_init__ checks (cross-field rules): prefix the key path
        if not where:
            raise
        key = f"{where}.{exc.key}" if exc.key else where
        raise _key_error(f"{where}: {exc.what}", key, fix=exc.fix) from None


def _key_error(what: str, key: str | None, fix: str | None = None) -> ConfigError:
    return ConfigError(what, fix=fix, key=key or None)


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
            raise _key_error(f"{path} must not be null", path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _key_error(f"{path}={value!r} matches none of {tp}", path)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise _key_error(f"{path}={value!r} is not allowed", path,
                             fix=f"valid values: {', '.join(map(repr, allowed))}")
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
            raise _key_error(f"{path} must be a mapping, got {value!r}", path)
        args = typing.get_args(tp)
        if len(args) == 2:  # dict[str, SomeType]: type every value (e.g. per-cell-type thresholds)
            return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    if value is None:
        raise _key_error(f"{path} must not be null (expected {getattr(tp, '__name__', tp)})", path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _key_error(f"{path}={value!r} must be true or false", path)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _key_error(f"{path}={value!r} must be an integer", path)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _key_error(f"{path}={value!r} must be a number", path)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a fold name or path given as a bare number
        raise _key_error(f"{path}={value!r} must be a string", path)
    return value


def replace(cfg: T, overrides: Iterable[str]) -> T:
    """A copy of dataclass ``cfg`` with ``a.b=c`` overrides applied (validated by ``from_dict``)."""
    return from_dict(type(cfg), apply_overrides(to_dict(cfg), overrides))


# ----------------------------------------------------------------------------- the loader


def load_config(cls: type[T], source: str | os.PathLike | Mapping[str, Any] | None = None,
                overrides: Iterable[str] = (), *, section: str | None = None) -> T:
    """Load the config dataclass ``cls`` from a shipped name, a YAML path, a mapping or None (the
    dataclass defaults), then apply ``a.b=c`` overrides.

    ``section``: a file whose only top-level key is ``section`` is read from inside it (a tuned
    inference file written as ``infer: {...}``). Errors name where the bad key came from: the
    ``--set`` override that introduced it, else the file.
    """
    overrides = list(overrides)
    if source is None:
        data, origin = {}, "the defaults"
    elif isinstance(source, Mapping):
        data, origin = dict(source), "the given mapping"
    else:
        data, origin = read_config_source(source)
    if section and set(data) == {section} and isinstance(data[section], Mapping):
        data = dict(data[section])
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(exc.what, where=blame(exc.key, overrides, origin), fix=exc.fix,
                          key=exc.key) from None


def blame(key: str | None, overrides: Iterable[str], origin: str) -> str:
    """Where a bad ``key`` came from: the last ``--set`` override that wrote it, else the file."""
    if key is not None:
        hits = [o for o in overrides if o.partition("=")[0].strip() == key
                or o.partition("=")[0].strip().startswith(key + ".")]
        if hits:
            return f"--set {hits[-1]}"
    return f"config {origin}"
