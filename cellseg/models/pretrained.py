"""Pretrained starting points by NAME or local FILE, for every family, through the libraries' caches.

    cellseg train --config maskrcnn_competition_finetune --data /data/sartorius --out runs/m  # online
    cellseg weights prefetch unet:resnet34:imagenet maskrcnn:coco sam:vit_b --out wcache       # online
    cellseg train --config unet_competition_finetune ... --weights-cache wcache --offline      # offline

Names (config value -> where the file comes from -> the file in the cache):

    UNet      encoder_weights: imagenet | <tag>
              smp encoders: smp's own table (smp 0.6: huggingface repo smp-hub/<encoder>.<tag> at
              the commit smp pins) -> model.safetensors (+ config.json, which smp also reads);
              ``tu-<timm model>``: timm's pretrained config ("imagenet" = timm's default tag) ->
              huggingface repo timm/<model>.<tag>, model.safetensors
    Mask R-CNN weights: coco -> torchvision MaskRCNN_ResNet50_FPN_Weights.COCO_V1
              (maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth) for heads v1,
              MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 (maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth) for v2
    Mask R-CNN backbone_weights: imagenet | IMAGENET1K_V2 ... -> torchvision ResNet<N>_Weights member
              (imagenet = IMAGENET1K_V1, e.g. resnet50-0676ba61.pth)
    promptseg sam_checkpoint: vit_b | vit_l | vit_h -> Meta's sam_vit_b_01ec64.pth,
              sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth (https://dl.fbaipublicfiles.com/segment_anything/)

A value with a path separator or a weights suffix (.pth/.pt/.bin/.ckpt/.safetensors), or an
existing file, is a LOCAL file (safetensors or ``torch.load(weights_only=True)``) as before.

Caches: torch.hub's (``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``) for
torchvision and SAM files, huggingface_hub's (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) for smp/timm.
Downloads go through ``torch.hub.download_url_to_file`` with the sha256 prefix of the file name
(exactly what ``load_state_dict_from_url(check_hash=True)`` checks; Meta publishes no hash for SAM)
and ``huggingface_hub.hf_hub_download``; both show progress bars. ``--weights-cache DIR`` means
``TORCH_HOME=DIR/torch`` and ``HF_HOME=DIR/huggingface``.

Offline (``--offline``, ``HF_HUB_OFFLINE=1``, or no network): a missing file raises
``MissingPretrained``, one line naming the file, its URL and where to put it. Training checks this
before any data is loaded (``check_pretrained_available``).

A model built from a name or file records it in ``model.spec.args["pretrained_origin"]`` (name,
url, file, sha256, layers re-initialised), so checkpoints say where their weights came from, while
the weight keys themselves are recorded as None: a checkpoint rebuilds without any pretrained file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cellseg.errors import UserError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth",
             "vit_h": "sam_vit_h_4b8939.pth"}
_TRUE = {"1", "ON", "YES", "TRUE"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class MissingPretrained(UserError):
    """A pretrained file is neither cached nor downloadable (offline or no network)."""


# ----------------------------------------------------------------------------- caches


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (read at call time: huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def torch_dir(root: str | os.PathLike | None = None) -> Path:
    """torch.hub's checkpoint folder: ``root/torch/hub/checkpoints``, or the current one."""
    if root is not None:
        return Path(root) / "torch" / "hub" / "checkpoints"
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_dir(root: str | os.PathLike | None = None) -> Path:
    """huggingface_hub's cache: ``root/huggingface/hub``, or $HF_HUB_CACHE / $HF_HOME/hub now."""
    if root is not None:
        return Path(root) / "huggingface" / "hub"
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def find_cache_root(path: str | os.PathLike) -> Path:
    """The folder holding ``torch/`` or ``huggingface/``: ``path`` itself or a folder up to three
    levels below it (Kaggle mounts datasets at paths that changed over time)."""
    path = Path(path)
    for depth in range(4):
        for cand in sorted(path.glob("/".join(["*"] * depth))) if depth else [path]:
            if (cand / "torch").is_dir() or (cand / "huggingface").is_dir():
                return cand
    return path


def use_weights_cache(root: str | os.PathLike | None = None, *, offline: bool = False) -> None:
    """Point torch.hub and huggingface_hub at ``root`` (``--weights-cache``) and/or go offline
    (``--offline``), through their own environment variables so data-loader workers and DDP ranks
    see the same. Meant for the CLI process, which owns its environment."""
    if root is not None:
        root = find_cache_root(root).resolve()
        os.environ["TORCH_HOME"] = str(root / "torch")
        os.environ["HF_HOME"] = str(root / "huggingface")
        os.environ["HF_HUB_CACHE"] = str(hf_dir(root))
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """One pretrained file: its name, URL and the library cache that keeps it.

    hub "torch": ``torch_dir()/file``; hub "hf": ``hf_dir()/models--<org>--<repo>/snapshots/
    <commit>/file`` (``revision`` a commit, or a branch resolved through ``refs/<revision>``).
    ``companions``: other files of the same repo that the library also fetches (smp: config.json).
    """

    name: str
    url: str
    file: str
    hub: str = "torch"
    repo_id: str = ""
    revision: str | None = None
    companions: tuple[str, ...] = ()

    def hash_prefix(self) -> str | None:
        """The sha256 prefix torch.hub checks (``-<hex>.`` in the file name), if any."""
        import torch.hub

        m = torch.hub.HASH_REGEX.search(self.file) if self.hub == "torch" else None
        return m.group(1) if m else None

    def expected_path(self, root: str | os.PathLike | None = None) -> Path:
        """Where the cache keeps (or would keep) the file."""
        if self.hub == "torch":
            return torch_dir(root) / self.file
        repo = hf_dir(root) / ("models--" + self.repo_id.replace("/", "--"))
        return repo / "snapshots" / (self.revision or "main") / self.file

    def locate(self, root: str | os.PathLike | None = None, file: str | None = None) -> Path | None:
        """The cached file (or companion ``file``), or None; never touches the network."""
        if self.hub == "torch":
            path = self.expected_path(root)
            return path if path.is_file() else None
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, file or self.file, cache_dir=str(hf_dir(root)),
                                       revision=self.revision)
        return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def unet_source(encoder_name: str, tag: str) -> Source:
    """The encoder weights smp (or timm, for ``tu-`` encoders) publishes as ``tag``."""
    if encoder_name.startswith("tu-"):
        import timm

        model, _, own_tag = encoder_name[3:].partition(".")
        full = f"{model}.{own_tag}" if own_tag and tag == "imagenet" else (
            model if tag == "imagenet" else f"{model}.{tag}")
        try:
            cfg = timm.models.get_pretrained_cfg(full)
        except RuntimeError:  # timm: "Invalid pretrained tag"
            cfg = None
        if cfg is None or not cfg.hf_hub_id:
            tags = [n.split(".", 1)[-1] for n in timm.list_pretrained(f"{model}.*")]
            raise UserError(f"encoder {encoder_name}: timm publishes no weights tagged {tag!r} on "
                            f"the huggingface hub; valid tags: {tags or 'none'}")
        repo, _, rev = cfg.hf_hub_id.partition("@")
        filename = "model.safetensors"
        return Source(f"unet:{encoder_name}:{tag}",
                      f"https://huggingface.co/{repo}/resolve/{rev or 'main'}/{filename}",
                      filename, "hf", repo, rev or None)
    from segmentation_models_pytorch.encoders import encoders

    if encoder_name not in encoders:
        raise UserError(f"unknown smp encoder {encoder_name!r}; valid: {sorted(encoders)[:12]}... "
                        "or tu-<timm model>")
    settings = encoders[encoder_name]["pretrained_settings"]
    if tag not in settings:
        raise UserError(f"encoder {encoder_name} has no weights tagged {tag!r}; smp publishes "
                        f"{sorted(settings) or 'none'}")
    repo, rev = settings[tag]["repo_id"], settings[tag].get("revision")
    return Source(f"unet:{encoder_name}:{tag}",
                  f"https://huggingface.co/{repo}/resolve/{rev or 'main'}/model.safetensors",
                  "model.safetensors", "hf", repo, rev, companions=("config.json",))


def maskrcnn_source(heads: str = "v1") -> Source:
    """torchvision's COCO Mask R-CNN R50-FPN for ``heads`` "v1" or "v2"."""
    from torchvision.models.detection import (MaskRCNN_ResNet50_FPN_V2_Weights,
                                              MaskRCNN_ResNet50_FPN_Weights)

    enum = {"v1": MaskRCNN_ResNet50_FPN_Weights, "v2": MaskRCNN_ResNet50_FPN_V2_Weights}.get(heads)
    if enum is None:
        raise UserError(f"heads must be 'v1' or 'v2' for weights: coco, got {heads!r}")
    url = enum.COCO_V1.url
    return Source(f"maskrcnn:coco:{heads}", url, url.rsplit("/", 1)[1])


def backbone_source(backbone: str, tag: str = "imagenet") -> Source:
    """torchvision's ImageNet weights of a ResNet (``imagenet`` = ``IMAGENET1K_V1``)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError):
        raise UserError(f"backbone {backbone!r} has no torchvision weights") from None
    member = "IMAGENET1K_V1" if tag == "imagenet" else tag
    if member not in enum.__members__:
        raise UserError(f"backbone {backbone} has no weights {tag!r}; valid: imagenet, "
                        f"{', '.join(enum.__members__)}")
    url = enum[member].url
    return Source(f"backbone:{backbone}:{tag}", url, url.rsplit("/", 1)[1])


def sam_source(variant: str) -> Source:
    """Meta's official SAM checkpoint of ``variant`` (vit_b, vit_l, vit_h)."""
    if variant not in SAM_FILES:
        raise UserError(f"unknown SAM checkpoint {variant!r}; valid: {', '.join(SAM_FILES)} or a "
                        "local .pth file")
    return Source(f"sam:{variant}", SAM_URL + SAM_FILES[variant], SAM_FILES[variant])


SPEC_HELP = ("unet:<encoder>:<tag> (unet:resnet34:imagenet), maskrcnn:coco[:v1|v2], "
             "backbone:<resnet>:imagenet, sam:vit_b|vit_l|vit_h")


def parse_spec(spec: str) -> Source:
    """A ``cellseg weights prefetch`` name -> its Source (formats: ``SPEC_HELP``)."""
    parts = spec.split(":")
    if parts[0] == "unet" and len(parts) == 3:
        return unet_source(parts[1], parts[2])
    if parts[0] == "maskrcnn" and len(parts) in (2, 3) and parts[1] == "coco":
        return maskrcnn_source(parts[2] if len(parts) == 3 else "v1")
    if parts[0] == "backbone" and len(parts) == 3:
        return backbone_source(parts[1], parts[2])
    if parts[0] == "sam" and len(parts) == 2:
        return sam_source(parts[1])
    raise UserError(f"pretrained name {spec!r} not understood; valid forms: {SPEC_HELP}")


def is_name(value: Any) -> bool:
    """True for a pretrained NAME, False for None or a local file path."""
    if value is None or not isinstance(value, str) or not value:
        return False
    return not ("/" in value or os.sep in value or value.endswith(WEIGHT_SUFFIXES)
                or os.path.exists(value))


def required_sources(family: str, args: Mapping[str, Any]) -> list[Source]:
    """The pretrained names a model config asks for (local files and None are not listed)."""
    out: list[Source] = []
    if family == "unet" and is_name(args.get("encoder_weights")):
        out.append(unet_source(args.get("encoder_name", "resnet34"), args["encoder_weights"]))
    elif family == "maskrcnn":
        if is_name(args.get("weights")):
            out.append(coco_source(args["weights"], args.get("heads", "v1")))
        elif is_name(args.get("backbone_weights")):
            out.append(backbone_source(args.get("backbone", "resnet50"), args["backbone_weights"]))
    elif family == "promptseg":
        if args.get("decoder", "crop") == "sam" and is_name(args.get("sam_checkpoint")):
            out.append(sam_source(args["sam_checkpoint"]))
        if args.get("detector") and not args.get("detector_checkpoint"):
            out += required_sources(args.get("detector_family", "maskrcnn"), args["detector"])
    return out


def coco_source(name: str, heads: str) -> Source:
    if name != "coco":
        raise UserError(f"Mask R-CNN weights {name!r}: the only name is 'coco' (torchvision's COCO "
                        "Mask R-CNN); otherwise pass a local file")
    return maskrcnn_source(heads)


def strip_pretrained(family: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` with every pretrained name replaced by None (``--init-from`` supplies weights)."""
    args = dict(args)
    keys = {"unet": ("encoder_weights",), "maskrcnn": ("weights", "backbone_weights"),
            "promptseg": ("sam_checkpoint",)}.get(family, ())
    for key in keys:
        if is_name(args.get(key)):
            args[key] = None
    if family == "promptseg" and isinstance(args.get("detector"), Mapping):
        args["detector"] = strip_pretrained(args.get("detector_family", "maskrcnn"), args["detector"])
    return args


# ----------------------------------------------------------------------------- fetch / load


def missing_message(src: Source, why: str) -> str:
    """One line: which file, from which URL, where to put it."""
    where = src.expected_path()
    if src.hub == "hf" and not _COMMIT.match(src.revision or ""):
        where = (f"{where.parent.parent}/<commit>/{src.file} with the commit in "
                 f"{where.parent.parent.parent}/refs/{src.revision or 'main'}")
    return (f"pretrained file {src.file} for {src.name} is not in the cache ({why}); download "
            f"{src.url} to {where}, or run `cellseg weights prefetch {src.name} "
            f"--out DIR` on a machine with internet and pass --weights-cache DIR")


def fetch(src: Source, *, offline: bool | None = None) -> Path:
    """The local path of ``src``: from the cache, else downloaded into it (unless offline)."""
    found = src.locate()
    if found is not None:
        return found
    if offline or (offline is None and is_offline()):
        raise MissingPretrained(missing_message(src, "offline"))
    try:
        _download(src, None)
    except Exception as exc:  # no network, refused, bad hash: one line, the cause included
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MissingPretrained(missing_message(
            src, f"download failed: {type(exc).__name__}: {reason}"[:300])) from None
    found = src.locate()
    if found is None:
        raise MissingPretrained(missing_message(src, "the download left no file"))
    return found


def _download(src: Source, root: str | os.PathLike | None) -> None:
    """Download ``src`` into the cache at ``root`` (None: the current one) with the library."""
    if src.hub == "torch":
        import torch.hub

        dest = src.expected_path(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the same call and hash rule as torch.hub.load_state_dict_from_url(check_hash=True)
        torch.hub.download_url_to_file(src.url, str(dest), src.hash_prefix(), progress=True)
        return
    import huggingface_hub

    for name in (src.file,) + src.companions:
        huggingface_hub.hf_hub_download(src.repo_id, name, revision=src.revision,
                                        cache_dir=str(hf_dir(root)))


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from a local ``.safetensors`` or torch file (``weights_only=True``), unwrapped
    from a "state_dict" / "model" entry if present."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found (a path is read as a local file and "
                                f"never downloaded); pass an existing .pth/.safetensors file, a "
                                f"pretrained name ({SPEC_HELP}), or null for random init")
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


def resolve(value: str, source: Callable[[str], Source]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, origin record) of a pretrained name (via ``source(name)``) or a local file."""
    from cellseg.checkpoint import sha256_file

    if is_name(value):
        src = source(value)
        path = fetch(src)
        origin = {"name": src.name, "url": src.url, "file": src.file}
    else:
        path = Path(value)
        origin = {"name": None, "url": None, "file": str(path)}
    state = load_state_file(path)
    origin["sha256"] = sha256_file(path)
    return state, origin


def load_into(module: "torch.nn.Module", state: Mapping[str, Any], *, prefixes: Sequence[str] = (),  # noqa: F821
              what: str = "weights") -> int:
    """Load ``state`` into ``module`` after stripping the first matching prefix of each key;
    returns the number of tensors loaded.

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
        fixed[key] = fit_tensor(key, value, own[key], what)
    if len(fixed) < len(own) / 2:
        raise ValueError(f"{what}: only {len(fixed)} of {len(own)} tensors match the model; wrong "
                         f"architecture? (first keys in file: {list(state)[:3]})")
    module.load_state_dict(fixed, strict=False)
    return len(fixed)


def fit_tensor(key: str, value: "torch.Tensor", own: "torch.Tensor", what: str) -> "torch.Tensor":  # noqa: F821
    """``value`` shaped like ``own``: equal shapes pass; an RGB first conv (O, 3, k, k) is summed
    to a gray one (O, 1, k, k); anything else raises ValueError naming the tensor."""
    if value.shape == own.shape:
        return value
    if value.ndim == 4 and own.ndim == 4 and own.shape[1] == 1 and value.shape[1] == 3 \
            and value.shape[0] == own.shape[0]:
        return value.sum(dim=1, keepdim=True)
    raise ValueError(f"{what}: tensor {key!r} has shape {tuple(value.shape)}, the model expects "
                     f"{tuple(own.shape)}")


# ----------------------------------------------------------------------------- training / prefetch


def check_pretrained_available(cfg: Any, *, offline: bool = False,
                               weights_cache: str | os.PathLike | None = None,
                               log: Callable[[str], None] | None = None) -> Any:
    """Training's first step, before any data is read: make sure every pretrained name of
    ``cfg.model`` is in the cache (downloading it when online) and return the config to train.

    With ``cfg.train.init_from`` the names are dropped from the returned config (the checkpoint
    supplies the weights, nothing is downloaded). Raises ``MissingPretrained`` (one line).
    """
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    use_weights_cache(weights_cache, offline=offline)
    family, args = cfg.model.family, cfg.model.args
    if getattr(cfg.train, "init_from", None):
        stripped = strip_pretrained(family, args)
        if stripped != dict(args):
            log(f"--init-from {cfg.train.init_from}: pretrained names in model.args are not loaded")
            return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, args=stripped))
        return cfg
    for src in required_sources(family, args):
        path = fetch(src, offline=offline or None)
        log(f"pretrained {src.name}: {path}")
    return cfg


def prefetch(specs: Iterable[str | Source], out: str | os.PathLike, *,
             dataset_id: str | None = None, title: str | None = None) -> list[Path]:
    """Write ``out`` laid out as the caches (``out/torch/hub/checkpoints``,
    ``out/huggingface/hub``) with every named file, plus ``dataset-metadata.json`` for
    ``kaggle datasets create -p out --dir-mode zip``. A file already in the current caches is
    copied, anything else downloaded. Returns the files written. Links are replaced by the files
    they point to (a Kaggle dataset keeps no symlinks)."""
    from cellseg.io import write_json

    out = Path(out)
    sources = [s if isinstance(s, Source) else parse_spec(s) for s in specs]
    if not sources:
        raise UserError(f"nothing to prefetch: name pretrained files ({SPEC_HELP}) or --config")
    dataset_id = dataset_id or f"{os.environ.get('KAGGLE_USERNAME') or 'INSERT_OWNER'}/cellseg-pretrained-weights"
    title = title or dataset_id.split("/")[-1].replace("-", " ")
    if len(dataset_id.split("/")[-1]) < 6 or len(title) < 6:
        raise UserError(f"Kaggle needs dataset slugs and titles of >= 6 characters: {dataset_id!r}, "
                        f"{title!r}; pass a longer --dataset-id/--title")
    written: list[Path] = []
    for src in sources:
        for name in (src.file,) + src.companions:
            have = src.locate(out, name)
            if have is None:
                cached = src.locate(None, name)
                if cached is not None:
                    have = _copy_into(src, name, cached, out)
                else:
                    _download(src, out)
                    have = src.locate(out, name)
                    if have is None:
                        raise MissingPretrained(missing_message(src, "the download left no file"))
            written.append(have)
    _dereference(out)
    write_json(out / "dataset-metadata.json", {"title": title, "id": dataset_id,
                                                "licenses": [{"name": "other"}]})
    return written


def _copy_into(src: Source, name: str, cached: Path, root: Path) -> Path:
    """Copy a cached file into the cache laid out at ``root`` (hf: snapshot + ref)."""
    from cellseg.io import atomic_path

    if src.hub == "torch":
        dest = src.expected_path(root)
    else:
        commit = cached.parent.name
        repo = hf_dir(root) / ("models--" + src.repo_id.replace("/", "--"))
        dest = repo / "snapshots" / commit / name
        if src.revision != commit:  # a branch: huggingface_hub resolves it through refs/<branch>
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / (src.revision or "main")).write_text(commit)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copyfile(cached, tmp)
    return dest


def _dereference(root: Path) -> None:
    """Replace symlinks under ``root`` by the files they point to; drop huggingface's blobs/locks."""
    for link in sorted(p for p in root.rglob("*") if p.is_symlink()):
        target = link.resolve()
        link.unlink()
        shutil.copyfile(target, link)
    hub = hf_dir(root)
    for junk in list(hub.glob("models--*/blobs")) + [hub / ".locks"]:
        shutil.rmtree(junk, ignore_errors=True)
