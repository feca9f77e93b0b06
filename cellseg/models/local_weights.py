"""Loading LOCAL weight files into modules (the kit never downloads weights).

One reader for every family: encoder weights (UNet), backbone weights (Mask R-CNN) and SAM /
CellSAM checkpoints (promptseg) all go through ``load_state_file`` (safetensors or
``torch.load(weights_only=True)``, unwrapped from "state_dict"/"model").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def load_state_file(path: str | Path) -> dict[str, Any]:
    """A state dict from a local ``.safetensors`` or torch file (``weights_only=True``), unwrapped
    from a "state_dict" / "model" entry if present."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (weights are never downloaded: "
                                "pass a local .pth/.safetensors file, or None for random init)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_into(module: "torch.nn.Module", state: Mapping[str, Any], *, prefixes: Sequence[str] = (),  # noqa: F821
              what: str = "weights") -> None:
    """Load ``state`` into ``module`` after stripping the first matching prefix of each key.

    First-conv weights with 3 input channels are summed over channels when the module has 1 input
    channel (grayscale). Raises when fewer than half of the module's tensors would be filled, which
    catches a file meant for another architecture; otherwise unused/missing keys are tolerated
    (e.g. a classifier head in an ImageNet file).
    """
    own = module.state_dict()
    fixed: dict[str, Any] = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key not in own and f"model.{key}" in own:
            key = f"model.{key}"  # a plain timm state dict loaded into smp's "tu-" encoder wrapper
        if key not in own:
            continue
        if value.shape != own[key].shape:
            if value.ndim == 4 and own[key].ndim == 4 and own[key].shape[1] == 1 and value.shape[1] == 3 \
                    and value.shape[0] == own[key].shape[0]:
                value = value.sum(dim=1, keepdim=True)
            else:
                raise ValueError(f"{what}: tensor {key!r} has shape {tuple(value.shape)}, the model "
                                 f"expects {tuple(own[key].shape)}")
        fixed[key] = value
    if len(fixed) < len(own) / 2:
        raise ValueError(f"{what}: only {len(fixed)} of {len(own)} tensors match the model; wrong "
                         f"architecture? (first keys in file: {list(state)[:3]})")
    module.load_state_dict(fixed, strict=False)
