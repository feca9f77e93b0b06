"""Image normalisation and joint image + instance-mask augmentation.

    from cellseg.data.transforms import build_augment, apply_augment, normalise
    aug = build_augment(crop_size=256)                      # albumentations.Compose
    image, masks, labels = apply_augment(aug, image, masks, labels)   # (H, W) uint8, (N, H, W) bool
    x = normalise(image, {"mean": [128.0], "std": [11.58], "in_channels": 1})   # (1, H, W) float32

Normalisation lives here once: datasets (``normalise``, numpy, in workers) and every family's
``preprocess`` (``normalise_batch``, torch, at inference) use the same ``norm`` dict that the model
carries as ``model.spec.norm`` ({"mean", "std" on the 0-255 scale, one value per input channel,
"in_channels"}). A grayscale image is repeated over the input channels.

Augmentation moves image and instances together (flips, 90-degree rotations, random scale, crop
to ``crop_size``, brightness/contrast, optional blur and noise). Instances travel through the warp
as a few uint16 label layers (one per overlap depth, ``cellseg.data.targets``), not as N masks:
520x704 with 400 cells costs 1-4 planes instead of 400 (``augment_layers``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# ImageNet statistics on the 0-255 scale (what pretrained encoders expect) and the LIVECell
# training statistics (FACTS section 4: mean 128, std 11.58).
NORM_PRESETS: dict[str, dict[str, list[float]]] = {
    "imagenet": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
    "dataset": {"mean": [128.0, 128.0, 128.0], "std": [11.58, 11.58, 11.58]},
}


def resolve_norm(norm: str | Mapping[str, Any], in_channels: int) -> dict[str, Any]:
    """A preset name ("imagenet", "dataset") or a dict with mean/std -> the stored norm dict
    ``{"mean": [C floats], "std": [C floats], "in_channels": C}``."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if isinstance(norm, str):
        if norm not in NORM_PRESETS:
            raise ValueError(f"unknown normalisation {norm!r}; valid: {sorted(NORM_PRESETS)} "
                             "or a dict with 'mean' and 'std' on the 0-255 scale")
        preset = NORM_PRESETS[norm]
        mean, std = list(preset["mean"]), list(preset["std"])
        if in_channels != 3:  # grayscale input: the average of the per-channel statistics
            mean = [float(np.mean(mean))] * in_channels
            std = [float(np.mean(std))] * in_channels
    else:
        mean = [float(v) for v in np.broadcast_to(np.asarray(norm["mean"], float), (in_channels,))]
        std = [float(v) for v in np.broadcast_to(np.asarray(norm["std"], float), (in_channels,))]
    if min(std) <= 0:
        raise ValueError(f"normalisation std must be positive, got {std}")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "in_channels": int(in_channels)}


def normalise(image: np.ndarray, norm: Mapping[str, Any]) -> np.ndarray:
    """(H, W) uint8 grayscale -> (C, H, W) float32, channel c = (image - mean[c]) / std[c].

    uint8 input goes through a 256-entry table per channel (one gather per channel, the same
    float32 values as the arithmetic form); channels with equal statistics are copied."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"normalise expects an (H, W) grayscale image, got shape {image.shape}")
    mean = np.asarray(norm["mean"], np.float32)
    std = np.asarray(norm["std"], np.float32)
    if image.dtype != np.uint8:
        return ((image.astype(np.float32)[None] - mean[:, None, None])
                / std[:, None, None]).astype(np.float32)
    out = np.empty((len(mean), *image.shape), np.float32)
    levels = np.arange(256, dtype=np.float32)
    for c in range(len(mean)):
        if c and mean[c] == mean[c - 1] and std[c] == std[c - 1]:
            out[c] = out[c - 1]
        else:
            np.take((levels - mean[c]) / std[c], image, out=out[c])
    return out


def normalise_batch(images: Any, norm: Mapping[str, Any], device: Any = None) -> "torch.Tensor":  # noqa: F821
    """(B, H, W) or (H, W) uint8 (numpy or torch) -> (B, C, H, W) float32 tensor on ``device``.

    The conversion happens on ``device`` (uint8 travels, 4x less than float)."""
    import torch

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"preprocess expects (B, H, W) grayscale images, got shape {tuple(x.shape)}")
    x = x.to(device=device).float()
    mean = torch.tensor(norm["mean"], dtype=torch.float32, device=x.device)[None, :, None, None]
    std = torch.tensor(norm["std"], dtype=torch.float32, device=x.device)[None, :, None, None]
    return (x[:, None] - mean) / std


def build_augment(*, crop_size: int | Sequence[int] | None = None, flip: bool = True,
                  rotate90: bool = True, scale: tuple[float, float] | None = (0.75, 1.33),
                  brightness: float = 0.2, contrast: float = 0.2, blur: float = 0.0,
                  noise: float = 0.0, p_color: float = 0.5) -> "Any":
    """Joint image + masks augmentation (``albumentations.Compose``).

    crop_size: random crop (H, W) (an int means square); images smaller than it are padded with
        0 (masks with 0). None = no crop.
    scale: random isotropic rescale range (factor lo..hi, with probability 0.5) applied before
        the crop (None = off).
    brightness/contrast: limits of ``RandomBrightnessContrast`` (applied with ``p_color``).
    blur, noise: probabilities of a light Gaussian blur / Gaussian noise.
    """
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import
    import albumentations as A
    import cv2

    ops: list[Any] = []
    if flip:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if rotate90:
        ops.append(A.RandomRotate90(p=0.5))
    if scale is not None:
        # RandomScale resizes the whole image (no border filling, unlike an affine zoom-out whose
        # reflected borders would duplicate cells); masks use centre-aligned nearest-neighbour
        # (plain INTER_NEAREST is shifted half a pixel against INTER_LINEAR)
        ops.append(A.RandomScale(scale_limit=(float(scale[0]) - 1.0, float(scale[1]) - 1.0),
                                 interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST_EXACT, p=0.5))
    if crop_size is not None:
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        ops.append(A.PadIfNeeded(min_height=ch, min_width=cw, border_mode=cv2.BORDER_CONSTANT,
                                 fill=0, fill_mask=0))
        ops.append(A.RandomCrop(height=ch, width=cw))
    if brightness or contrast:
        ops.append(A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast,
                                              p=p_color))
    if blur:
        ops.append(A.GaussianBlur(blur_limit=(3, 5), p=blur))
    if noise:
        ops.append(A.GaussNoise(std_range=(0.01, 0.04), p=noise))
    return A.Compose(ops)


def precrop_size(crop_size: int | Sequence[int], scale: tuple[float, float] | None) -> tuple[int, int]:
    """The window (H, W) a data set may cut out BEFORE augmenting so that a crop of
    ``crop_size`` after rescaling by any factor >= ``scale[0]`` still sees only real pixels:
    cheaper than warping a whole 520x704 image with 400 masks."""
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    lo = min(1.0, float(scale[0])) if scale is not None else 1.0
    return int(np.ceil(ch / lo)) + 2, int(np.ceil(cw / lo)) + 2


def augment_layers(augment: Any, image: np.ndarray, layers: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Warp (H, W) uint8 image and (K, H, W) uint16 label layers together with ``augment``.

    Layers travel as one K-channel mask (``augment`` must move masks with nearest-neighbour
    geometry, as ``build_augment`` does), so every instance moves intact, overlaps kept, at the
    cost of K planes. With K == 0 the transform sees the image alone. Returns (image (H', W')
    uint8, layers (K, H', W') uint16)."""
    image = np.asarray(image)
    if len(layers):
        out = augment(image=image, mask=np.ascontiguousarray(np.moveaxis(layers, 0, -1)))
        moved = np.asarray(out["mask"])
        if moved.ndim == 2:
            moved = moved[..., None]
        return np.asarray(out["image"]), np.ascontiguousarray(np.moveaxis(moved, -1, 0))
    out = augment(image=image)
    img = np.asarray(out["image"])
    return img, np.zeros((0, *img.shape[:2]), np.uint16)


def apply_augment(augment: Any, image: np.ndarray, masks: np.ndarray,
                  labels: np.ndarray | None = None, *, min_visible: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``augment`` jointly; returns (image (H', W') uint8, masks (M, H', W') bool, labels (M,)).

    Convenience form of ``augment_layers`` for (N, H, W) bool masks: instances travel as a few
    uint16 label layers, overlaps kept. Masks with fewer than ``min_visible`` pixels afterwards
    are dropped with their labels.
    """
    from cellseg.data.targets import layers_from_masks, masks_from_layers

    masks = np.asarray(masks, dtype=bool)
    labels = np.zeros(len(masks), np.int64) if labels is None else np.asarray(labels, np.int64)
    if len(labels) != len(masks):
        raise ValueError(f"{len(masks)} instances but {len(labels)} labels")
    img, layers = augment_layers(augment, image, layers_from_masks(masks))
    new = masks_from_layers(layers, len(masks))
    keep = new.sum(axis=(1, 2)) >= max(int(min_visible), 1)
    return img, np.ascontiguousarray(new[keep]), labels[keep]
