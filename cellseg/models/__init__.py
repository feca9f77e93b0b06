"""Model families, resolved lazily by name.

    from cellseg.models import get_family
    family = get_family("unet")            # or "maskrcnn", "promptseg"
    model = family.build(encoder_name="resnet18")

``FAMILIES`` maps a family name to ``"module:attribute"``; the module is imported only when the
family is asked for, so ``import cellseg.models`` never imports torch. The contract every family
object fulfils is written once in ``cellseg.models.base``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
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


__all__ = ["FAMILIES", "get_family"]
