"""Stand-in pretrained weights for tests (no network): random tensors of the official shapes.

    from stand_in import random_like
    torch.save(random_like(torchvision_model.state_dict()), cache / "<official file name>")
"""

from __future__ import annotations


def random_like(state: dict) -> dict:
    """A state dict of the same names and shapes with fresh random values: the module's own random
    init plus noise (so no tensor equals a freshly built model's), variances kept positive. The
    noise scales with each tensor's spread, so activations keep their scale through a deep
    network and a model started from the file still predicts something. The released files use
    FrozenBatchNorm, so they carry no num_batches_tracked."""
    import torch

    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 0.75 + 0.5 * torch.rand(v.shape)
        else:
            spread = float(v.std()) if v.numel() > 1 else 0.0
            out[k] = v + 0.05 * (spread if spread > 0 else 1.0) * torch.randn(v.shape)
    return out
