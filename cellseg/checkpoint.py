"""Self-describing checkpoint files: the weights plus everything needed to rebuild and trust them.

    from cellseg.checkpoint import save_checkpoint, load_checkpoint
    save_checkpoint("runs/unet/best.pt", model=model.state_dict(), spec=model.spec, config=...)
    ckpt = load_checkpoint("runs/unet/best.pt")        # the plain dict below
    model, family, ckpt = load_model("runs/unet/best.pt")   # cellseg.models.load_model

This module reads and writes the files and knows nothing about model families; rebuilding the
network from ``spec`` is ``cellseg.models.load_model``.

A checkpoint is a plain dict saved with ``torch.save``:

    model        state_dict of the network (EMA weights live apart, under "ema")
    spec         ``model.spec.to_dict()`` (``cellseg.models.base.ModelSpec``: family, build
                 arguments, norm, class map): what the network is rebuilt from
    family       "unet" | "maskrcnn" | "promptseg" (copied from ``spec``)
    model_args   keyword arguments of ``family.build`` (copied from ``spec``; checkpoints written
                 before ``spec`` existed have only ``family`` / ``model_args``, and load from them)
    config       the full training config as a plain dict (``cellseg.config.to_dict``)
    epoch, step  progress counters (epoch = number of finished epochs)
    metrics      validation metrics, e.g. {"score": 0.31, ...}
    data         description of the training data (sources, fold, counts)
    version      {"cellseg": ..., "git": ..., "torch": ...}
    optimizer, scheduler, scaler, ema, rng   resume state (optional)

Only plain types are allowed (dict, list, tuple, str, int, float, bool, None, tensors), checked before
writing, so ``torch.load(..., weights_only=True)`` always works and loading a checkpoint never
executes code. Files are written atomically (fsynced, then renamed); the sha256 of the file goes
to ``<file>.sha256``, which every load checks (``load_checkpoint(verify=True)``, the default).
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from cellseg.errors import InputError
from cellseg.io import atomic_open, atomic_path

FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the cellseg source tree, or None outside a checkout / without git."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def code_version() -> dict[str, str | None]:
    """Versions recorded in every checkpoint."""
    import torch

    from cellseg import __version__

    return {"cellseg": __version__, "git": git_commit(), "torch": str(torch.__version__)}


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the key path of the first value weights_only loading would reject."""
    import torch

    import collections

    # exact types: subclasses (torch's TorchVersion is a str, namedtuples are tuples) are refused
    # by the weights_only unpickler
    if obj is None or type(obj) in (bool, int, float, str, bytes) or isinstance(
            obj, (torch.Tensor, torch.Size, torch.dtype, torch.device)):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if k is not None and type(k) not in (str, int, float, bool):
                raise TypeError(f"checkpoint key {where}[{k!r}] has type {type(k).__name__}; "
                                "use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint value {where} has type {type(obj).__module__}."
                    f"{type(obj).__name__}, which torch.load(weights_only=True) refuses; "
                    "convert it to plain types (numpy arrays: torch.from_numpy or .tolist())")


def save_checkpoint(path: str | os.PathLike, **state: Any) -> str:
    """Atomically write ``state`` (see module docstring) to ``path``; return the file's sha256.

    Pass ``spec=model.spec`` (a ``ModelSpec`` or its ``to_dict()``): ``family`` and
    ``model_args`` are filled in from it. ``version`` and ``format`` are filled in when absent.
    Also writes ``<path>.sha256`` (``"<hex>  <name>\\n"``, the ``sha256sum`` format).
    """
    import torch

    spec = state.get("spec")
    if spec is not None:
        spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        state["spec"] = spec
        if state.setdefault("family", spec["family"]) != spec["family"]:
            raise ValueError(f"save_checkpoint: family={state['family']!r} but the spec is of "
                             f"family {spec['family']!r}; pass only spec=")
        state.setdefault("model_args", spec["args"])
    if "model" not in state or "family" not in state:
        raise ValueError("save_checkpoint needs at least model=<state_dict> and spec=model.spec")
    state.setdefault("model_args", {})
    state.setdefault("version", code_version())
    state.setdefault("format", FORMAT_VERSION)
    _check_plain(state, "checkpoint")
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    previous = _sidecar_digests(side)[:1] if path.exists() else []
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb+") as fh:  # on disk before the rename (a power cut keeps either file)
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        # two-phase sidecar, so a kill between the two renames leaves a pair that verifies:
        # first both digests (the file still holds the old one), then only the new one
        if previous and previous[0] != digest:
            _write_sidecar(side, path.name, [digest] + previous)
    _write_sidecar(side, path.name, [digest])
    return digest


def _write_sidecar(side: Path, name: str, digests: list[str]) -> None:
    with atomic_open(side, "w") as fh:
        fh.writelines(f"{d}  {name}\n" for d in digests)


def _sidecar_digests(side: Path) -> list[str]:
    """The hex digests listed in a ``sha256sum``-format sidecar (empty when none/unreadable)."""
    try:
        lines = side.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln.split()[0].strip().lower() for ln in lines if ln.split()]


def verify_checkpoint(path: str | os.PathLike) -> bool | None:
    """True when ``path`` matches its ``.sha256`` sidecar, False when not, None without sidecar.

    The sidecar holds one digest, or two for the instant ``save_checkpoint`` replaces the file
    (new and previous: a run killed between the two renames still verifies)."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    if not side.exists():
        return None
    digests = _sidecar_digests(side)
    return bool(digests) and sha256_file(path) in digests


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` (never runs pickled code).

    With ``verify`` (the default) a file that has a ``.sha256`` sidecar is checked against it
    first (``InputError`` naming the file on mismatch); a file without sidecar loads unchecked.
    Every reader (predict, tune, ``--resume``, ``--init-from``, the kernel's ``cellseg predict``)
    goes through here, so a truncated or replaced file is one line naming it, never a traceback.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if verify and verify_checkpoint(path) is False:
        raise InputError(f"checkpoint does not match its sidecar {path.name}.sha256 (corrupt, "
                         "truncated or replaced)", where=str(path),
                         fix="re-download or re-train it (or delete the .sha256 file if you "
                         "replaced the checkpoint on purpose)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError subclasses
        first = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot load checkpoint ({type(exc).__name__}: {first})",
                         where=str(path), fix="re-download or re-train it (the file is corrupt, "
                         "truncated or not a torch checkpoint)") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "family" not in ckpt:
        raise InputError("not a cellseg checkpoint (expected a dict with 'model' and 'family')",
                         where=str(path), fix="pass a checkpoint written by `cellseg train` "
                         "(bare state_dicts are not self-describing)")
    return ckpt
