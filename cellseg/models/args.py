"""Build arguments of every model family, declared once: one frozen dataclass per family.

    from cellseg.models.args import UNetArgs, build_args_for
    args = UNetArgs(encoder_name="resnet18", in_channels=1)        # typed, defaults filled in
    args = build_args_for("maskrcnn", {"backbone": "resnet18"})    # a config's model.args
    model = get_family("unet").build(args)                         # or .build(**args)

The same class serves three readers: ``family.build(args)`` builds from it, the config loader types
``model.args`` with it (``cellseg.config.ModelConfig``: an unknown key is a ``ConfigError`` naming the
nearest valid key and listing all of them), and a checkpoint stores ``to_dict(args)`` with the
weight files set to None (``model.spec.args``; ``cellseg.models.load_model`` rebuilds from
it). An args object also reads as a mapping (``args["norm"]``, ``**args``), so code written for the
plain dicts of older checkpoints and configs keeps working.

Cross-field rules live in ``__post_init__`` and raise ``ConfigError`` with the key to blame, so a
bad config fails when it is loaded, before data or a model. This module imports only the config
layer (no torch), so typing a config stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Iterator, Literal, TypeVar

from cellseg.configlib import from_dict, to_dict
from cellseg.errors import ConfigError

A = TypeVar("A", bound="BuildArgs")

# LIVECell's anchors (4, 9, 17, 31, 64, 127 px) with two sizes per FPN level, in original pixels
DEFAULT_ANCHORS: tuple[tuple[float, ...], ...] = ((4.0, 6.0), (9.0, 13.0), (17.0, 24.0),
                                                  (31.0, 45.0), (64.0, 127.0))


class BuildArgs(Mapping):
    """Base of the per-family args dataclasses: the mapping view and the conversions.

    ``WEIGHTS``: the fields that name pretrained weights or files; a model's spec stores them as
    None (its state_dict holds the weights) and records their origin in ``pretrained_origin``.
    """

    WEIGHTS: ClassVar[tuple[str, ...]] = ()

    # -- mapping view (read-only): args["norm"], **args, dict(args)
    def __getitem__(self, key: str) -> Any:
        if key not in self.names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The argument names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def parse(cls: type[A], args: Mapping[str, Any] | None = None, **overrides: Any) -> A:
        """Typed args from a mapping (a config's ``model.args``, a checkpoint's ``spec.args``, an
        args object) plus keyword overrides; missing keys take the defaults.

        Raises ``ConfigError`` for an unknown key (listing the valid ones) or a value of the wrong
        type; ints are accepted for floats and lists for tuples, as in YAML.
        """
        if isinstance(args, cls) and not overrides:
            return args
        data = dict(to_dict(args) if isinstance(args, BuildArgs) else (args or {}))
        data.update(overrides)
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, dicts, str, numbers, None): YAML-, JSON- and checkpoint-safe."""
        return to_dict(self)

    def without_weights(self: A, origin: list[dict[str, Any]]) -> A:
        """These args with every weight name/file set to None and ``pretrained_origin`` =
        ``origin``: what rebuilds the architecture with no file at hand."""
        return dataclasses.replace(self, pretrained_origin=tuple(origin),  # type: ignore[call-arg]
                                   **{k: None for k in self.WEIGHTS})


def _fail(key: str, what: str, fix: str | None = None) -> ConfigError:
    return ConfigError(what, fix=fix, key=key)


@dataclasses.dataclass(frozen=True)
class UNetArgs(BuildArgs):
    """``unet`` (smp.Unet): see ``cellseg.models.unet.UNetFamily.build``.

    encoder_name: any smp encoder ("resnet34", "efficientnet-b0", "tu-<timm name>", ...).
    encoder_weights: a published tag ("imagenet"), a LOCAL weights file of the encoder, or None.
    decoder_channels: one per encoder stage (``encoder_depth`` entries).
    norm: "imagenet" / "dataset" (LIVECell mean 128, std 11.58) or {"mean", "std"} (0-255).
    centre: what the "centre" output learns: "distance" (each cell's inner distance, scaled to
        peak at 1) or "peak" (a Gaussian at each cell's deepest pixel: one seed per cell, however
        long and thin); ``cellseg.data.targets``. A target choice, kept here so that the
        checkpoint records it with the network it trained.
    pretrained_origin: where the weights came from (filled in by ``build``); informational.
    """

    WEIGHTS: ClassVar[tuple[str, ...]] = ("encoder_weights",)

    encoder_name: str = "resnet34"
    encoder_weights: str | None = None
    in_channels: int = 3
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    decoder_attention_type: str | None = None
    norm: str | dict[str, Any] = "imagenet"
    centre: Literal["distance", "peak"] = "distance"  # = cellseg.data.targets.CENTRES
    pretrained_origin: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if len(self.decoder_channels) != self.encoder_depth:
            raise _fail("decoder_channels", f"decoder_channels needs {self.encoder_depth} entries "
                        f"(one per encoder stage), got {list(self.decoder_channels)}",
                        fix="give one channel count per encoder stage or change encoder_depth")


@dataclasses.dataclass(frozen=True)
class MaskRCNNArgs(BuildArgs):
    """``maskrcnn`` (torchvision Mask R-CNN on a ResNet-FPN): see
    ``cellseg.models.maskrcnn.MaskRCNNFamily.build`` for what each group does.

    weights: "coco" or a LOCAL torchvision Mask R-CNN file; backbone_weights: "imagenet" (or a
        torchvision member name such as "IMAGENET1K_V2") or a LOCAL ResNet file; not both.
    trainable_backbone_layers (0-5) / frozen_bn: None = 3 / True with pretrained weights, else
        5 / False (``resolved``).
    num_classes: cell classes (background is added inside); with ``class_per_cell_type`` it is
        ``len(cell_types)`` and class i is ``cell_types[i]``.
    anchor_sizes: 5 FPN levels, the same count each, in ORIGINAL image pixels.
    input_scale: fixed upscale factor; None = torchvision's min_size/max_size resizing.
    """

    WEIGHTS: ClassVar[tuple[str, ...]] = ("weights", "backbone_weights")

    backbone: str = "resnet50"
    heads: Literal["v1", "v2"] = "v1"
    weights: str | None = None
    backbone_weights: str | None = None
    trainable_backbone_layers: int | None = None
    frozen_bn: bool | None = None
    in_channels: int = 3
    num_classes: int = 1
    class_per_cell_type: bool = False
    cell_types: tuple[str, ...] = ("shsy5y", "astro", "cort")
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    anchor_sizes: tuple[tuple[float, ...], ...] = DEFAULT_ANCHORS
    aspect_ratios: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    input_scale: float | None = 1.0
    min_size: int = 800
    max_size: int = 1333
    detections_per_img: int = 2000
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    rpn_pre_nms_top_n_train: int = 4000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 3000
    rpn_batch_size_per_image: int = 256
    rpn_nms_thresh: float = 0.7
    norm: str | dict[str, Any] = "imagenet"
    pretrained_origin: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # normalise number types given in code (ints for floats)
        set_(self, "anchor_sizes", tuple(tuple(float(s) for s in lv) for lv in self.anchor_sizes))
        set_(self, "aspect_ratios", tuple(float(r) for r in self.aspect_ratios))
        set_(self, "cell_types", tuple(str(t) for t in self.cell_types))
        if self.heads not in ("v1", "v2"):
            raise _fail("heads", f"heads must be 'v1' or 'v2', got {self.heads!r}")
        if self.class_per_cell_type and (not self.cell_types or len(
                {t.lower() for t in self.cell_types}) != len(self.cell_types)):
            raise _fail("cell_types", f"cell_types must be distinct names, got {list(self.cell_types)}")
        if not self.class_per_cell_type and self.num_classes < 1:
            raise _fail("num_classes", "num_classes counts cell classes and must be >= 1, got "
                        f"{self.num_classes}")
        if len(self.anchor_sizes) != 5 or len({len(lv) for lv in self.anchor_sizes}) != 1:
            raise _fail("anchor_sizes", "anchor_sizes needs 5 levels (FPN P2-P6) with the same "
                        f"number of sizes each, got {[list(lv) for lv in self.anchor_sizes]}")
        if self.input_scale is not None and self.input_scale <= 0:
            raise _fail("input_scale", f"input_scale must be positive, got {self.input_scale}")
        if self.weights is not None and self.backbone_weights is not None:
            raise _fail("backbone_weights", "set Mask R-CNN weights (whole model, e.g. coco) OR "
                        "backbone_weights (ResNet body only), not both: got "
                        f"{self.weights!r} and {self.backbone_weights!r}")

    def resolved(self) -> "MaskRCNNArgs":
        """The "auto" settings made explicit: trainable layers / frozen BN from whether weights
        are loaded, ``num_classes`` from ``cell_types`` with a per-cell-type head."""
        pretrained = self.weights is not None or self.backbone_weights is not None
        return dataclasses.replace(
            self,
            trainable_backbone_layers=(self.trainable_backbone_layers
                                       if self.trainable_backbone_layers is not None
                                       else 3 if pretrained else 5),
            frozen_bn=self.frozen_bn if self.frozen_bn is not None else pretrained,
            num_classes=len(self.cell_types) if self.class_per_cell_type else self.num_classes)

    @property
    def class_map(self) -> dict[str, int] | None:
        """cell type -> class index of the per-cell-type head; None when class-agnostic."""
        return ({t: i for i, t in enumerate(self.cell_types)} if self.class_per_cell_type
                else None)


@dataclasses.dataclass(frozen=True)
class PromptSegArgs(BuildArgs):
    """``promptseg`` (box-prompted mask decoder + frozen detector): see
    ``cellseg.models.promptseg.PromptSegFamily.build``.

    decoder: "crop" (``base_channels``, ``levels``, ``neighbours``) or "sam" (``sam``: size
        kwargs of ``SamPromptDecoder``; ``sam_checkpoint``: "vit_b" | "vit_l" | "vit_h" or a LOCAL
        SAM/CellSAM file).
    detector: build args of the Mask R-CNN that makes the box prompts (typed as
        ``MaskRCNNArgs``), or ``detector_checkpoint``: a cellseg ``maskrcnn`` checkpoint.
    """

    WEIGHTS: ClassVar[tuple[str, ...]] = ("sam_checkpoint", "detector_checkpoint")

    decoder: Literal["crop", "sam"] = "crop"
    in_channels: int = 1
    mean: float = 128.0
    std: float = 13.0
    crop_size: int = 128
    margin: float = 0.25
    min_region: float = 8.0
    neighbours: bool = True
    base_channels: int = 32
    levels: int = 3
    sam: dict[str, Any] | None = None
    sam_checkpoint: str | None = None
    detector: dict[str, Any] | None = None
    detector_checkpoint: str | None = None
    detector_family: Literal["maskrcnn"] = "maskrcnn"  # the one detector family, kept in specs
    jitter: float = 0.1
    max_train_instances: int = 64
    mask_threshold: float = 0.5
    stability_offset: float = 1.0
    iou_weight: float = 1.0
    neighbour_weight: float = 0.5
    decode_chunk: int | None = 256
    pretrained_origin: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.decoder not in ("crop", "sam"):
            raise _fail("decoder", f"promptseg decoder={self.decoder!r}",
                        fix="valid: 'crop', 'sam'")
        if self.detector_family != "maskrcnn":
            raise _fail("detector_family", f"detector_family={self.detector_family!r}",
                        fix="the detector is a Mask R-CNN: 'maskrcnn'")
        if self.detector is not None and not isinstance(self.detector, MaskRCNNArgs):
            try:
                typed = MaskRCNNArgs.parse(self.detector)
            except ConfigError as exc:  # name the nested key: detector.<key>
                key = f"detector.{exc.key}" if exc.key else "detector_family"
                fix = exc.fix.replace("did you mean ", "did you mean detector.") if exc.fix else None
                raise _fail(key, f"detector: {exc.what}", fix) from None
            object.__setattr__(self, "detector", typed)


FAMILY_ARGS: dict[str, type[BuildArgs]] = {"unet": UNetArgs, "maskrcnn": MaskRCNNArgs,
                                           "promptseg": PromptSegArgs}


def build_args_for(family: str, args: Mapping[str, Any] | None = None) -> BuildArgs:
    """``args`` typed with the args class of ``family`` (``ConfigError`` on an unknown family or
    key, listing the valid ones)."""
    try:
        cls = FAMILY_ARGS[family]
    except KeyError:
        raise _fail("family", f"unknown model family {family!r}",
                    fix=f"valid families: {', '.join(sorted(FAMILY_ARGS))}") from None
    if isinstance(args, BuildArgs) and not isinstance(args, cls):
        raise _fail("family", f"model family {family!r} got {type(args).__name__}",
                    fix=f"pass {cls.__name__} or a mapping of its keys")
    return cls.parse(args)


__all__ = ["BuildArgs", "UNetArgs", "MaskRCNNArgs", "PromptSegArgs", "FAMILY_ARGS",
           "DEFAULT_ANCHORS", "build_args_for"]
