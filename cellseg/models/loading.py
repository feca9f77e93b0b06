"""Rebuild a network from a checkpoint dict: its spec gives the build arguments, then the weights.

    from cellseg.models import load_model               # by path; the family from the registry
    model, family, ckpt = load_model("runs/unet/best.pt", device="cuda")
    model = rebuild(family, load_checkpoint(path))      # a known family (promptseg's detector)

The checkpoint's ``spec`` (``cellseg.models.base.ModelSpec``) holds the family name and its build
arguments; the family's ``args_type`` types them, ``build`` makes the network and the weights are
loaded into it. Checkpoints written before ``spec`` existed carry ``family`` / ``model_args``
instead, and load from those. Reading the file is ``cellseg.checkpoint`` (weights_only). This
module does not use the family registry, so a family may rebuild another one from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def rebuild(family: "ModelFamily", ckpt: dict[str, Any], *, ema: bool = True,
            where: str = "checkpoint") -> "torch.nn.Module":
    """The network of checkpoint dict ``ckpt`` built by ``family`` with its weights loaded (the EMA
    weights with ``ema`` when present), in train mode on the CPU. A checkpoint that does not fit
    this version of the kit is an ``InputError`` naming ``where`` (its path)."""
    name, args = checkpoint_build_args(ckpt)
    if name != family.name:
        raise InputError(f"the checkpoint holds family {name!r}, not {family.name!r}",
                         where=where, fix=f"pass a checkpoint of a {family.name} model")
    try:
        typed = family.args_type.parse(args)
    except ValueError as exc:  # another cellseg version: a renamed or removed argument
        raise InputError(f"cannot read the model spec ({str(exc).strip(chr(39))})",
                         where=where, fix="re-train it with this cellseg version") from exc
    model = family.build(typed)
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise InputError(f"weights do not fit family {name!r} built with "
                         f"{args} ({first})", where=where,
                         fix="the checkpoint is corrupt or from another cellseg version; "
                         "re-train it") from exc
    return model
