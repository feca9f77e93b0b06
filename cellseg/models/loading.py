"""Rebuild a network from a checkpoint file alone.

    from cellseg.models.loading import load_model
    model, family, ckpt = load_model("runs/unet/best.pt", device="cuda")

The checkpoint's ``spec`` (``cellseg.models.base.ModelSpec``) names the family and its build
arguments; the family's ``args_type`` types them, ``build`` makes the network and the weights are
loaded into it. Checkpoints written before ``spec`` existed carry ``family`` / ``model_args``
instead, and load from those. The file itself is read by ``cellseg.checkpoint`` (weights_only).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cellseg.checkpoint import load_checkpoint
from cellseg.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cellseg.models.base import ModelFamily


def checkpoint_build_args(ckpt: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family name, plain build arguments) of a checkpoint dict: from its ``spec``, or from
    ``family`` / ``model_args`` in checkpoints written before the spec existed."""
    spec = ckpt.get("spec")
    if spec:
        from cellseg.models.base import ModelSpec

        spec = ModelSpec.from_dict(spec)
        return spec.family, dict(spec.args)
    return str(ckpt["family"]), dict(ckpt.get("model_args") or {})


def load_model(path: str | os.PathLike, device: Any = "cpu", *, ema: bool = True,
               verify: bool = False) -> tuple["torch.nn.Module", "ModelFamily", dict[str, Any]]:
    """Rebuild the network from the checkpoint alone and load its weights.

    Returns ``(model in eval mode on device, family, checkpoint dict)``; ``model.spec`` is the one
    the training run had. With ``ema`` the EMA weights are used when the checkpoint has them,
    with ``verify`` the file is checked against its ``.sha256`` first. A checkpoint that does not
    fit this version of the kit is an ``InputError`` naming the file.
    """
    from cellseg.models import get_family

    ckpt = load_checkpoint(path, map_location="cpu", verify=verify)
    try:
        name, args = checkpoint_build_args(ckpt)
        family = get_family(name)
        typed = family.args_type.parse(args)
    except (KeyError, ValueError) as exc:  # another cellseg version: unknown family or argument
        raise InputError(f"cannot read the model spec ({str(exc).strip(chr(39))})",
                         where=str(path), fix="re-train it with this cellseg version") from exc
    model = family.build(typed)
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise InputError(f"weights do not fit family {name!r} built with "
                         f"{args} ({first})", where=str(path),
                         fix="the checkpoint is corrupt or from another cellseg version; "
                         "re-train it") from exc
    model.to(device).eval()
    return model, family, ckpt
