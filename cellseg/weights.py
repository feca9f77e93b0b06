"""The manifest of released weights: ``weights/manifest.yaml``.

    cellseg weights add runs/unet/best.pt --name unet_r34_fold0
    cellseg weights list
    cellseg weights verify

The manifest is a YAML list; each entry describes one checkpoint file kept beside it in ``weights/``
(binaries are not committed, only the manifest and README are):

    name       unique name used by ``cellseg kaggle build-kernel --weights NAME``
    file       file name, relative to the manifest's folder
    sha256     hex digest of the file (the Kaggle kernel checks it before predicting)
    size       bytes
    family     model family ("unet", "maskrcnn", "promptseg")
    model_args keyword arguments that rebuild the network (the architecture)
    config     the training config that built it (plain dict)
    data       description of the training data
    metrics    validation metrics recorded in the checkpoint
    score      the validation competition score (``metrics["score"]``) or null
    version    code versions recorded in the checkpoint
    added      UTC time of registration

Everything except name/file/sha256/size is copied from the checkpoint itself
(``cellseg.checkpoint.load_checkpoint``), so the manifest cannot disagree with the file.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

DEFAULT_MANIFEST = Path("weights") / "manifest.yaml"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightEntry:
    """One released checkpoint (see the module docstring for the meaning of each field)."""

    name: str
    file: str
    sha256: str
    size: int = 0
    family: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    metrics: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    version: dict[str, Any] = field(default_factory=dict)
    added: str | None = None

    def path(self, manifest: str | os.PathLike) -> Path:
        """The weight file's location: ``file`` resolved against the manifest's folder."""
        return Path(manifest).resolve().parent / self.file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> list[WeightEntry]:
    """Read the manifest; a missing or empty file is an empty list.

    Raises ValueError naming the file and the entry when an entry is malformed.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        return []
    data = yaml.safe_load(path.read_text()) or []
    if not isinstance(data, list):
        raise ValueError(f"{path}: the manifest must be a YAML list of entries, got "
                         f"{type(data).__name__}")
    valid = set(WeightEntry.__dataclass_fields__)
    entries: list[WeightEntry] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: entry {i} is {type(item).__name__}, expected a mapping")
        missing = [k for k in ("name", "file", "sha256") if not item.get(k)]
        if missing:
            raise ValueError(f"{path}: entry {i} ({item.get('name', '?')}) lacks {missing}; "
                             "register weights with `cellseg weights add`")
        unknown = sorted(set(item) - valid)
        if unknown:
            raise ValueError(f"{path}: entry {i} ({item['name']}) has unknown keys {unknown}; "
                             f"valid keys: {sorted(valid)}")
        entries.append(WeightEntry(**item))
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate names {dupes}; names must be unique")
    return entries


def save_manifest(path: str | os.PathLike, entries: Iterable[WeightEntry]) -> None:
    """Atomically write the manifest (a YAML list, entries in the given order)."""
    import yaml

    from cellseg.io import atomic_open

    header = ("# Released weights: written by `cellseg weights add`; binaries live beside this file\n"
              "# and are not committed. See weights/README.md.\n")
    body = [e.to_dict() for e in entries]
    with atomic_open(path, "w") as fh:
        fh.write(header)
        fh.write(yaml.safe_dump(body, sort_keys=False, default_flow_style=False) if body else "[]\n")


def find_entry(entries: Iterable[WeightEntry], name: str) -> WeightEntry:
    """The entry called ``name``; KeyError lists the known names."""
    entries = list(entries)
    for e in entries:
        if e.name == name:
            return e
    raise KeyError(f"no weights named {name!r} in the manifest; known: "
                   f"{[e.name for e in entries] or 'none (run `cellseg weights add`)'}")


def _plain(obj: Any) -> Any:
    """Checkpoint metadata as YAML-safe plain types (tensors/tuples/numpy scalars converted)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def add_weights(checkpoint: str | os.PathLike, name: str, *,
                manifest: str | os.PathLike = DEFAULT_MANIFEST, overwrite: bool = False) -> WeightEntry:
    """Register ``checkpoint`` as ``name``: copy it into the manifest's folder and add an entry.

    The file is loaded with ``cellseg.checkpoint.load_checkpoint`` (so only real cellseg checkpoints
    are accepted) and its family, model_args, config, data, metrics and version are copied into
    the entry. The copy is named ``<name><suffix>``. Raises ValueError when ``name`` exists and
    ``overwrite`` is False, or when the name is not a safe file name.
    """
    from cellseg.checkpoint import load_checkpoint, sha256_file
    from cellseg.io import atomic_path

    checkpoint, manifest = Path(checkpoint), Path(manifest)
    if not _NAME_RE.match(name):
        raise ValueError(f"weights name {name!r} must be letters, digits, '_', '-', '.' "
                         "(it becomes a file name and a Kaggle dataset file)")
    entries = load_manifest(manifest)
    if any(e.name == name for e in entries) and not overwrite:
        raise ValueError(f"{manifest}: weights {name!r} already registered; pick another --name "
                         "or pass --overwrite")
    ckpt = load_checkpoint(checkpoint)
    metrics = _plain(ckpt.get("metrics") or {})
    score = metrics.get("score") if isinstance(metrics, dict) else None
    dest = manifest.resolve().parent / f"{name}{checkpoint.suffix or '.pt'}"
    if dest.resolve() != checkpoint.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(checkpoint, tmp)
    entry = WeightEntry(
        name=name,
        file=dest.name,
        sha256=sha256_file(dest),
        size=dest.stat().st_size,
        family=ckpt.get("family"),
        model_args=_plain(ckpt.get("model_args") or {}),
        config=_plain(ckpt.get("config") or {}),
        data=_plain(ckpt.get("data")),
        metrics=metrics if isinstance(metrics, dict) else {"value": metrics},
        score=float(score) if isinstance(score, (int, float)) else None,
        version=_plain(ckpt.get("version") or {}),
        added=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    entries = [e for e in entries if e.name != name] + [entry]
    save_manifest(manifest, entries)
    return entry


def verify_entry(entry: WeightEntry, manifest: str | os.PathLike) -> str | None:
    """None when the entry's file exists and matches its sha256, else a one-line problem."""
    from cellseg.checkpoint import sha256_file

    path = entry.path(manifest)
    if not _SHA_RE.match(entry.sha256 or ""):
        return f"{entry.name}: sha256 {entry.sha256!r} is not a 64-character hex digest"
    if not path.is_file():
        return (f"{entry.name}: file {path} is missing (binaries are not committed: copy it there "
                "or download the weights dataset)")
    actual = sha256_file(path)
    if actual != entry.sha256:
        return f"{entry.name}: {path} has sha256 {actual}, manifest expects {entry.sha256}"
    return None


def verify_manifest(manifest: str | os.PathLike = DEFAULT_MANIFEST,
                    names: Iterable[str] | None = None) -> list[str]:
    """Problems (one line each) of the selected entries (all when ``names`` is None); [] = good."""
    entries = load_manifest(manifest)
    selected = entries if names is None else [find_entry(entries, n) for n in names]
    return [p for p in (verify_entry(e, manifest) for e in selected) if p]
