"""Model families, resolved lazily by name, and networks rebuilt from checkpoints.

    from cellseg.models import get_family, load_model
    family = get_family("unet")            # or "maskrcnn", "promptseg"
    model = family.build(encoder_name="resnet18")         # or family.build(UNetArgs(...))
    model, family, ckpt = load_model("runs/unet/best.pt")  # from the checkpoint alone

``FAMILIES`` maps a family name to ``"module:attribute"``; the module is imported only when the
family is asked for, so ``import cellseg.models`` never imports torch. The contract every family
object fulfils is written once in ``cellseg.models.base``.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from cellseg.models.base import ModelFamily

FAMILIES: dict[str, str] = {
    "unet": "cellseg.models.unet:FAMILY",
    "maskrcnn": "cellseg.models.maskrcnn:FAMILY",
    "promptseg": "cellseg.models.promptseg:FAMILY",
}


def get_family(name: str) -> "ModelFamily":
    """The family object registered under ``name``; KeyError lists the valid names."""
    try:
        target = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; valid families: "
                       f"{', '.join(sorted(FAMILIES))}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def load_model(path: str | os.PathLike, device: Any = "cpu", *, ema: bool = True,
               verify: bool = True) -> tuple["torch.nn.Module", "ModelFamily", dict[str, Any]]:
    """Rebuild the network from the checkpoint at ``path`` alone and load its weights.

    Returns ``(model in eval mode on device, family, checkpoint dict)``; ``model.spec`` is the one
    the training run had. With ``ema`` the EMA weights are used when the checkpoint has them, with
    ``verify`` (the default) the file is first checked against its ``.sha256`` (``cellseg.checkpoint``). A
    checkpoint that does not fit this version of the kit is an ``InputError`` naming the file.
    """
    from cellseg.checkpoint import load_checkpoint
    from cellseg.errors import InputError
    from cellseg.models.loading import checkpoint_build_args, rebuild

    ckpt = load_checkpoint(path, map_location="cpu", verify=verify)
    try:
        family = get_family(checkpoint_build_args(ckpt)[0])
    except (KeyError, ValueError) as exc:  # a family of another cellseg version
        raise InputError(f"cannot read the model spec ({str(exc).strip(chr(39))})",
                         where=str(path), fix="re-train it with this cellseg version") from exc
    model = rebuild(family, ckpt, ema=ema, where=str(path))
    model.to(device).eval()
    return model, family, ckpt


__all__ = ["FAMILIES", "get_family", "load_model"]
