"""UNet family (``kind = "dense"``): an smp UNet predicting cell / border / centre maps.

    from cellseg.models import get_family
    family = get_family("unet")
    model = family.build(encoder_name="resnet34")              # random init, never downloads
    x = family.preprocess(model, images)                       # (B, H, W) uint8 -> (B, 3, H, W)
    maps = family.predict_dense(model, x)                      # (B, 3, H, W) in [0, 1]
    inst = family.decode(maps[0].cpu().numpy())                # Instances (cellseg.models.unet_decode)

Targets and their definitions: ``cellseg.data.targets``. Loss: BCE (all maps; the centre map is a
soft target) + soft Dice per channel, summed with ``bce_weight`` / ``dice_weight``.

Encoder weights: a NAME that smp (or timm, for ``tu-`` encoders) publishes for the encoder
(``encoder_weights="imagenet"``; resolved, cached and checked by ``cellseg.models.pretrained``
through huggingface_hub exactly where smp keeps them), or a LOCAL file (``.pth``/``.safetensors``,
a state dict of the encoder, optionally prefixed ``encoder.`` or wrapped in "state_dict"/"model";
a plain timm state dict fits a ``tu-`` encoder). A 3-channel first conv is summed to fit 1-channel
input. Pair ImageNet weights with ``norm="imagenet"``. The arguments that rebuild the network
without the weight file are kept in ``model.spec.args`` (``cellseg.models.base.ModelSpec``, saved in
checkpoints; ``pretrained_origin`` records the name/file and sha256 the encoder started from), the
normalisation in ``model.spec.norm``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from cellseg.data.targets import UNET_CHANNELS, TargetSpec
from cellseg.core.instances import Instances
from cellseg.models.args import UNetArgs
from cellseg.models.base import ModelSpec, attach_spec
from cellseg.models.pretrained import load_into

STRIDE = 32  # smp UNet with depth 5 needs H and W divisible by 2**5


def pad_to_multiple(x: "torch.Tensor", multiple: int = STRIDE) -> tuple["torch.Tensor", int, int]:  # noqa: F821
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple`` (reflect where the image
    is big enough, else replicate); returns (padded, H, W)."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, h, w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), h, w


def _soft_dice(prob: "torch.Tensor", target: "torch.Tensor", eps: float = 1.0) -> "torch.Tensor":  # noqa: F821
    """(B, K, H, W) -> (K,) soft Dice loss per channel, pooled over the batch."""
    dims = (0, 2, 3)
    inter = (prob * target).sum(dims)
    return 1.0 - (2.0 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)


@dataclasses.dataclass(frozen=True)
class UNetFamily:
    """The UNet family. Target options are fields (``dataclasses.replace(FAMILY, border_width=2)``);
    network options are ``UNetArgs`` (``build``'s argument)."""

    channels: tuple[str, ...] = UNET_CHANNELS
    border_width: int = 1
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    name: str = "unet"
    kind: Literal["dense", "instances"] = "dense"

    args_type: ClassVar[type[UNetArgs]] = UNetArgs

    # ----------------------------------------------------------------------------- network
    def build(self, args: UNetArgs | Mapping[str, Any] | None = None, /,
              **kwargs: Any) -> "torch.nn.Module":  # noqa: F821
        """smp.Unet with ``len(self.channels)`` output maps (logits), from ``UNetArgs`` (or a
        mapping / keyword arguments of its fields; ``cellseg.models.args``).

        ``encoder_weights`` (a published tag or a LOCAL file) is loaded into the encoder; the
        spec records it in ``pretrained_origin`` and stores None, so the checkpoint alone rebuilds
        the network.
        """
        import segmentation_models_pytorch as smp

        from cellseg.data.transforms import resolve_norm

        a = UNetArgs.parse(args, **kwargs)
        model = smp.Unet(encoder_name=a.encoder_name, encoder_depth=a.encoder_depth,
                         encoder_weights=None, decoder_channels=list(a.decoder_channels),
                         decoder_attention_type=a.decoder_attention_type,
                         in_channels=a.in_channels, classes=len(self.channels))
        origin = [dict(o) for o in a.pretrained_origin]
        if a.encoder_weights is not None:
            from cellseg.models.pretrained import resolve, unet_source

            state, record = resolve(a.encoder_weights, lambda tag: unet_source(a.encoder_name, tag))
            n = load_into(model.encoder, state, prefixes=("encoder.",),
                          what=f"encoder weights {a.encoder_weights}")
            origin.append({**record, "into": "encoder", "tensors": n})
        norm = resolve_norm(a.norm, a.in_channels)
        spec_args = dataclasses.replace(a.without_weights(origin), norm=norm)
        return attach_spec(model, ModelSpec(self.name, spec_args.to_dict(), norm,
                                            outputs=self.channels))

    def preprocess(self, model: "torch.nn.Module", images: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(B, H, W) uint8 -> (B, C, H, W) float32 on the model's device, normalised."""
        from cellseg.data.transforms import normalise_batch

        return normalise_batch(images, model.spec.norm, _device(model))

    # ----------------------------------------------------------------------------- training
    def target_spec(self, args: UNetArgs | Mapping[str, Any] | None = None, /,
                    **kwargs: Any) -> TargetSpec:
        """What the data pipeline builds for this family (maps of ``self.channels``), from the
        build arguments."""
        from cellseg.data.transforms import resolve_norm

        a = UNetArgs.parse(args, **kwargs)
        return TargetSpec.with_norm(resolve_norm(a.norm, a.in_channels), kind="maps",
                                    channels=tuple(self.channels), border_width=self.border_width,
                                    centre=a.centre)

    def collate(self, samples: Sequence[tuple["torch.Tensor", dict]]) -> tuple[Any, Any]:  # noqa: F821
        """Stack samples of one size -> ((B, C, H, W) images, {"maps": (B, K, H, W)}), plus
        "weight": (B, 1, H, W) float32 (0 on ignored pixels) when a sample has "ignore"."""
        import torch

        if not samples:
            raise ValueError("collate got an empty batch")
        shapes = {tuple(img.shape) for img, _ in samples}
        if len(shapes) > 1:
            raise ValueError(f"UNet batches need images of one size, got {sorted(shapes)}; "
                             "set crop_size in the dataset")
        images = torch.stack([torch.as_tensor(img) for img, _ in samples])
        maps = torch.stack([torch.as_tensor(t["maps"]) for _, t in samples])
        if not any("ignore" in t for _, t in samples):
            return images, {"maps": maps}
        keep = torch.stack([1 - torch.as_tensor(t["ignore"]).float() if "ignore" in t
                            else torch.ones(maps.shape[-2:]) for _, t in samples])
        return images, {"maps": maps, "weight": keep[:, None]}

    def loss(self, model: "torch.nn.Module", images: Any, targets: Any) -> dict[str, "torch.Tensor"]:  # noqa: F821
        """BCE + Dice on the maps; keys "loss", "bce", "dice" and "dice_<channel>". Pixels of
        weight 0 (``targets["weight"]``, ignored regions) count in neither term."""
        import torch.nn.functional as F

        device = _device(model)
        images = images.to(device, non_blocking=True)
        maps = targets["maps"].to(device, non_blocking=True)
        logits = _forward_padded(model, images)
        weight = targets.get("weight")
        if weight is None:
            bce = F.binary_cross_entropy_with_logits(logits.float(), maps)
            dice_per = _soft_dice(logits.float().sigmoid(), maps)
        else:  # the mean over the pixels that count, and Dice as if the rest were not there
            weight = weight.to(device, non_blocking=True).expand_as(maps)
            bce = (F.binary_cross_entropy_with_logits(logits.float(), maps, reduction="none")
                   * weight).sum() / weight.sum().clamp(min=1.0)
            dice_per = _soft_dice(logits.float().sigmoid() * weight, maps * weight)
        dice = dice_per.mean()
        out = {"loss": self.bce_weight * bce + self.dice_weight * dice, "bce": bce.detach(),
               "dice": dice.detach()}
        for name, value in zip(self.channels, dice_per):
            out[f"dice_{name}"] = value.detach()
        return out

    # ----------------------------------------------------------------------------- inference
    def predict_dense(self, model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """(B, C, H, W) preprocessed -> (B, K, H, W) float32 sigmoid maps (any H, W: padded to 32)."""
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = _forward_padded(model, images.to(_device(model))).float().sigmoid()
        finally:
            model.train(was_training)
        return out

    def decode(self, dense: np.ndarray, **params: Any) -> Instances:
        """(K, H, W) stitched maps -> Instances (``cellseg.models.unet_decode.decode_unet``)."""
        from cellseg.models.unet_decode import decode_unet

        return decode_unet(dense, channels=self.channels, **params)


def _device(model: "torch.nn.Module") -> "torch.device":  # noqa: F821
    return next(model.parameters()).device


def _forward_padded(model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    x, h, w = pad_to_multiple(images, STRIDE)
    return model(x)[..., :h, :w]


FAMILY = UNetFamily()
