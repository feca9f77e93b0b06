"""Pretrained starting points by name (cellseg.models.pretrained), offline caches and prefetch.

Nothing here may touch the network: the ``no_network`` fixture makes every socket connection fail,
and the CLI subprocesses run with ``--offline``. The session fixture ``official_cache`` lays out a
cache the way torch.hub and huggingface_hub do, holding random tensors saved under the OFFICIAL file
names with the OFFICIAL shapes (taken from the real architectures built with weights=None); it lives
in conftest.py (the model-family tests build every shipped config from it too).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from cellseg.cli import main as cli  # noqa: E402
from cellseg.models import pretrained as P  # noqa: E402
from stand_in import random_like  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMP_R34 = P.unet_source("resnet34", "imagenet")
COCO_V1 = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
FAST = ["train.epochs=1", "train.max_steps=1", "train.batch_size=1", "data.crop_size=64",
        "data.workers=0", "data.max_val_images=1", "train.amp=false", "train.device=cpu",
        "train.log_every=1", "optim.lr=0.0", "schedule.warmup_steps=0"]


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails, as on a Kaggle notebook with internet off."""
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def env(monkeypatch):
    """Restore the cache/offline variables that the CLI flags set in this process."""
    for var in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "KAGGLE_USERNAME"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A competition folder of 3 synthetic 128x160 images (one sample group per cell type)."""
    from cellseg.core import rle
    from cellseg.data.record import ImageRecord
    from cellseg.data.sartorius import write_train_csv
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    root = tmp_path_factory.mktemp("small") / "competition"
    records = []
    for i, cell_type in enumerate(["shsy5y", "astro", "cort"]):
        image, masks = render(cell_type, seed=i, shape=(128, 160))
        image_id = f"{i:012x}"
        write_png(root / "train" / f"{image_id}.png", image)
        records.append(ImageRecord(image_id, root / "train" / f"{image_id}.png", 128, 160,
                                   cell_type=cell_type, sample_id=f"{cell_type}_s",
                                   rles=tuple(rle.encode(m) for m in masks)))
    write_train_csv(records, root / "train.csv")
    return root


# ----------------------------------------------------------------------------- names


def test_names_resolve_to_the_official_files():
    from segmentation_models_pytorch.encoders import encoders
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import (MaskRCNN_ResNet50_FPN_V2_Weights,
                                              MaskRCNN_ResNet50_FPN_Weights)

    v1, v2 = P.parse_spec("maskrcnn:coco"), P.parse_spec("maskrcnn:coco:v2")
    assert (v1.file, v1.url) == (COCO_V1, MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url)
    assert v2.url == MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url
    assert v2.file == "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth" and v1.hash_prefix() == "bf2d0c1e"
    bb = P.parse_spec("backbone:resnet50:imagenet")
    assert bb.url == ResNet50_Weights.IMAGENET1K_V1.url and bb.file == "resnet50-0676ba61.pth"
    assert P.backbone_source("resnet50", "IMAGENET1K_V2").url == ResNet50_Weights.IMAGENET1K_V2.url
    assert SMP_R34.repo_id == encoders["resnet34"]["pretrained_settings"]["imagenet"]["repo_id"]
    assert (SMP_R34.file, SMP_R34.companions) == ("model.safetensors", ("config.json",))
    tu = P.unet_source("tu-resnet34", "imagenet")  # timm's default tag, on the huggingface hub
    assert tu.repo_id.startswith("timm/resnet34.") and tu.file == "model.safetensors"
    for variant, name in [("vit_b", "sam_vit_b_01ec64.pth"), ("vit_l", "sam_vit_l_0b3195.pth"),
                          ("vit_h", "sam_vit_h_4b8939.pth")]:
        src = P.parse_spec(f"sam:{variant}")
        assert (src.file, src.url) == (name, "https://dl.fbaipublicfiles.com/segment_anything/" + name)
    for bad, match in [("sam:vit_x", "vit_b"), ("unet:resnet34:nope", "imagenet"),
                       ("unet:tu-resnet34:nope", "valid tags"), ("maskrcnn:lvis", "valid forms"),
                       ("backbone:resnet50:nope", "IMAGENET1K_V2")]:
        with pytest.raises(P.UserError, match=match):
            P.parse_spec(bad)
    assert P.is_name("imagenet") and P.is_name("vit_b") and not P.is_name("w/sam.pth")
    assert not P.is_name("sam.pth") and not P.is_name(None)


def test_sam_variants_are_segment_anythings_registry():
    """Our variant names are segment_anything's registry names, and the sizes we fill in build the
    same tensors as its builders (on the meta device: no memory, no time)."""
    from segment_anything import sam_model_registry

    from cellseg.models.promptseg_sam import SAM_VARIANTS, SamPromptDecoder, sam_sizes

    assert set(P.SAM_FILES) == set(SAM_VARIANTS) == set(sam_model_registry) - {"default"}
    for variant in SAM_VARIANTS:
        with torch.device("meta"):
            ref = sam_model_registry[variant]().state_dict()
            ours = SamPromptDecoder(**sam_sizes(variant, None)).sam.state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    assert sam_sizes("vit_l", {"embed_dim": 8})["embed_dim"] == 8  # explicit sizes win


# ----------------------------------------------------------------------------- offline errors


@pytest.mark.parametrize("config,expect", [
    ("unet_competition_finetune", "model.safetensors.*huggingface.co/smp-hub/resnet34.imagenet"),
    ("maskrcnn_competition_finetune", COCO_V1.replace(".", r"\.") + ".*download.pytorch.org"),
])
def test_empty_cache_offline_cli_stops_in_seconds_before_data(config, expect, tmp_path):
    """The real CLI in a fresh process: one line, exit 2, no traceback; the --data folder does not
    exist, so any data loading would fail differently."""
    import re

    empty = tmp_path / "empty_cache"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCH_HOME"))}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cellseg", "train", "--config", config,
                          "--data", str(tmp_path / "no_data_here"), "--out", str(tmp_path / "run"),
                          "--weights-cache", str(empty), "--offline"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert re.search(expect, lines[0]) and "offline" in lines[0] and str(empty) in lines[0]
    assert "--weights-cache" in lines[0]  # where to put it
    assert not (tmp_path / "run").exists()
    assert elapsed < 60, elapsed  # import time on a loaded 2-core machine; no data, no model


@pytest.mark.parametrize("config", ["maskrcnn_competition_finetune", "unet_competition_finetune"])
def test_no_network_without_offline_flag_is_the_same_one_line_error(config, env, no_network,
                                                                    tmp_path, capsys):
    env.setenv("TORCH_HOME", str(tmp_path / "torch"))
    env.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    rc = cli(["train", "--config", config, "--data", str(tmp_path / "none"),
              "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "download failed" in err[-1] and "prefetch" in err[-1], err
    assert time.perf_counter() - t0 < 60


def test_init_from_skips_the_pretrained_download(env, no_network, tmp_path):
    from cellseg.config import load_train_config

    env.setenv("TORCH_HOME", str(tmp_path))
    cfg = load_train_config("promptseg_competition_finetune", ["train.init_from=x.pt"])
    out = P.check_pretrained_available(cfg, offline=True, log=lambda m: None)
    assert out.model.args["sam_checkpoint"] is None and out.model.args["detector"]["weights"] is None
    assert cfg.model.args["sam_checkpoint"] == "vit_b"  # the input config is untouched
    with pytest.raises(P.MissingPretrained, match="sam_vit_b_01ec64.pth"):
        P.check_pretrained_available(load_train_config("promptseg_competition_finetune"),
                                     offline=True)


def test_recipes_name_their_pretrained_starts():
    from cellseg.config import load_train_config

    names = {}
    for cfg_name in ["unet_livecell_pretrain", "unet_competition_finetune",
                     "maskrcnn_livecell_pretrain", "maskrcnn_competition_finetune",
                     "promptseg_livecell_pretrain", "promptseg_competition_finetune",
                     "unet_tiny", "maskrcnn_tiny", "promptseg_tiny"]:
        cfg = load_train_config(cfg_name)
        names[cfg_name] = [s.name for s in P.required_sources(cfg.model.family, cfg.model.args)]
        if cfg.model.family in ("unet", "maskrcnn") and names[cfg_name]:
            assert cfg.model.args["norm"] == "imagenet"  # the normalisation the weights expect
    assert names["unet_livecell_pretrain"] == names["unet_competition_finetune"] == \
        ["unet:resnet34:imagenet"]
    assert names["maskrcnn_livecell_pretrain"] == names["maskrcnn_competition_finetune"] == \
        ["maskrcnn:coco:v1"]
    assert names["promptseg_livecell_pretrain"] == ["sam:vit_b"]  # + a trained detector checkpoint
    assert names["promptseg_competition_finetune"] == ["sam:vit_b", "maskrcnn:coco:v1"]
    assert names["unet_tiny"] == names["maskrcnn_tiny"] == names["promptseg_tiny"] == []


# ----------------------------------------------------------------------------- filled caches


def _state(path: Path) -> dict:
    return P.load_state_file(path)


def test_unet_prefetch_train_offline_then_predict_without_the_cache(official_cache, small, env,
                                                                    no_network, tmp_path):
    """prefetch copies from the user's caches into DIR laid out as the caches; training with
    --weights-cache DIR --offline loads exactly the file's tensors (lr 0 keeps them); with DIR
    deleted, predict still works from the checkpoint alone."""
    from huggingface_hub import try_to_load_from_cache

    env.setenv("TORCH_HOME", str(official_cache / "torch"))
    env.setenv("HF_HOME", str(official_cache / "huggingface"))
    env.setenv("KAGGLE_USERNAME", "someone")
    wc = tmp_path / "wcache"
    assert cli(["weights", "prefetch", "unet:resnet34:imagenet", "--out", str(wc)]) == 0
    meta = json.loads((wc / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/cellseg-pretrained-weights" and len(meta["title"]) >= 6
    found = try_to_load_from_cache(SMP_R34.repo_id, "model.safetensors",
                                   cache_dir=str(wc / "huggingface" / "hub"),
                                   revision=SMP_R34.revision)
    assert isinstance(found, str) and Path(found).is_file()  # huggingface_hub's own lookup
    assert (Path(found).parent / "config.json").is_file()

    env.setenv("TORCH_HOME", str(tmp_path / "nothing"))  # only DIR may serve the file now
    env.setenv("HF_HOME", str(tmp_path / "nothing"))
    run = tmp_path / "run"
    argv = ["train", "--config", "unet_competition_finetune", "--data", str(small), "--out", str(run),
            "--weights-cache", str(wc), "--offline", "--no-progress"]
    assert cli(argv + [x for kv in FAST + ["train.ema_decay=null"] for x in ("--set", kv)]) == 0
    from cellseg.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    file_state = _state(Path(found))
    params = {n for n, _ in torch.nn.Module.named_parameters(_unet_encoder_like())}
    for key, value in file_state.items():
        if key in params:
            assert torch.equal(ckpt["model"][f"encoder.{key}"], value), key
    origin = ckpt["model_args"]["pretrained_origin"]
    assert origin[0]["name"] == "unet:resnet34:imagenet" and origin[0]["file"] == "model.safetensors"
    assert ckpt["model_args"]["encoder_weights"] is None  # rebuilding needs no pretrained file
    assert ckpt["config"]["model"]["args"]["encoder_weights"] == "imagenet"

    shutil.rmtree(wc)  # a trained checkpoint is self-contained
    sub = tmp_path / "submission.csv"
    assert cli(["predict", "--weights", str(run / "best.pt"), "--images", str(small / "train"),
                "--out", str(sub), "--device", "cpu"]) == 0
    assert sub.read_text().startswith("id,predicted")


def _unet_encoder_like():
    from segmentation_models_pytorch.encoders import get_encoder

    return get_encoder("resnet34", weights=None)


def test_maskrcnn_coco_trains_one_step_offline(official_cache, small, env, no_network, tmp_path):
    """weights: coco from the cache: every tensor but the re-initialised heads equals the file's;
    the class predictors are sized for the kit's classes and the RPN outputs for its anchors."""
    run = tmp_path / "run"
    argv = ["train", "--config", "maskrcnn_competition_finetune", "--data", str(small),
            "--out", str(run), "--weights-cache", str(official_cache), "--offline", "--no-progress",
            "--set", "model.args.rpn_pre_nms_top_n_test=200",
            "--set", "model.args.rpn_post_nms_top_n_test=100"]
    assert cli(argv + [x for kv in FAST for x in ("--set", kv)]) == 0
    from cellseg.checkpoint import load_checkpoint
    from cellseg.models import load_model

    ckpt = load_checkpoint(run / "best.pt")
    coco = _state(official_cache / "torch" / "hub" / "checkpoints" / COCO_V1)
    origin = ckpt["model_args"]["pretrained_origin"][0]
    reinit = set(origin["reinitialised"])
    assert reinit == {f"{m}.{p}" for m in ("roi_heads.box_predictor.cls_score",
                                           "roi_heads.box_predictor.bbox_pred",
                                           "roi_heads.mask_predictor.conv5_mask",
                                           "roi_heads.mask_predictor.mask_fcn_logits",
                                           "rpn.head.cls_logits", "rpn.head.bbox_pred")
                      for p in ("weight", "bias")}
    loaded = [k for k in coco if k not in reinit]
    assert origin["tensors"] == len(loaded) and origin["file"] == COCO_V1
    for key in loaded:
        assert torch.equal(ckpt["model"][key], coco[key]), key
    model = ckpt["model"]
    assert model["roi_heads.box_predictor.cls_score.weight"].shape == (2, 1024)  # cell + background
    assert coco["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    assert model["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 2
    assert model["rpn.head.cls_logits.weight"].shape[0] == 10  # 2 sizes x 5 ratios per level
    assert ckpt["model_args"]["weights"] is None
    env.setenv("TORCH_HOME", str(tmp_path / "no_cache"))  # the checkpoint alone rebuilds it
    load_model(run / "best.pt")


def test_maskrcnn_v2_coco_layout_and_coco_anchors(env, tmp_path):
    """The v2 file's layout fits heads v2 (loaded in memory: no 180 MB file); with COCO's own
    anchors the whole RPN head loads; a gray first conv gets the RGB kernels summed."""
    import torchvision

    from cellseg.models import get_family
    from cellseg.models.maskrcnn import load_detection_weights

    fam = get_family("maskrcnn")
    torch.manual_seed(1)
    ref = random_like(torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None).state_dict())
    coco_anchors = dict(anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
                        aspect_ratios=(0.5, 1.0, 2.0))
    model = fam.build(heads="v2", in_channels=1, frozen_bn=True, **coco_anchors)
    loaded, reinit = load_detection_weights(model, ref, same_anchors=True)
    assert not any(k.startswith("rpn.") for k in reinit) and "rpn.head.cls_logits.weight" in loaded
    own = model.state_dict()
    assert torch.equal(own["backbone.body.conv1.weight"],
                       ref["backbone.body.conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(own["roi_heads.box_head.0.0.weight"], ref["roi_heads.box_head.0.0.weight"])
    with pytest.raises(ValueError, match="fpn_channels 256"):
        load_detection_weights(fam.build(heads="v2", fpn_channels=128), ref, same_anchors=False)
    with pytest.raises(ValueError, match="not in the file"):  # a v1 model cannot take the v2 file
        load_detection_weights(fam.build(heads="v1"), ref, same_anchors=False)
    with pytest.raises(ValueError, match="not both"):
        fam.build(weights="coco", backbone_weights="imagenet")


def test_backbone_imagenet_by_name(env, no_network, tmp_path):
    import torchvision

    from cellseg.models import get_family

    src = P.backbone_source("resnet18")
    assert src.file == "resnet18-f37072fd.pth"
    ref = random_like(torchvision.models.resnet18(weights=None).state_dict())
    env.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref, tmp_path / "hub" / "checkpoints" / src.file)
    model = get_family("maskrcnn").build(backbone="resnet18", backbone_weights="imagenet",
                                         fpn_channels=32, box_head_dim=64, mask_head_channels=16)
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, ref["layer3.0.conv1.weight"])
    origin = model.spec.args["pretrained_origin"]
    assert origin[0]["name"] == "backbone:resnet18:imagenet" and origin[0]["into"] == "backbone.body"


def test_sam_vit_b_by_name(official_cache, env, no_network):
    from cellseg.models import get_family

    env.setenv("TORCH_HOME", str(official_cache / "torch"))
    env.setenv("HF_HUB_OFFLINE", "1")
    model = get_family("promptseg").build(decoder="sam", sam_checkpoint="vit_b", crop_size=16)
    args = model.spec.args
    assert args["sam"]["embed_dim"] == 768 and args["sam"]["depth"] == 12  # ViT-B sizes filled in
    assert args["sam_checkpoint"] is None and args["pretrained_origin"][0]["name"] == "sam:vit_b"
    ref = _state(official_cache / "torch" / "hub" / "checkpoints" / "sam_vit_b_01ec64.pth")
    own = model.decoder.sam.state_dict()
    assert set(own) == set(ref)
    for key in ("image_encoder.pos_embed", "mask_decoder.iou_prediction_head.layers.2.weight",
                "prompt_encoder.point_embeddings.2.weight"):
        assert torch.equal(own[key], ref[key]), key


def test_prefetch_downloads_through_torch_hub_and_huggingface_hub(official_cache, env, no_network,
                                                                  tmp_path, monkeypatch):
    """With empty caches, prefetch calls torch.hub's downloader (URL, hash prefix, progress) and
    huggingface_hub (repo, file, smp's pinned commit); links become files, blobs are dropped."""
    import huggingface_hub
    import torch.hub

    env.setenv("TORCH_HOME", str(tmp_path / "empty"))
    env.setenv("HF_HOME", str(tmp_path / "empty"))
    calls = []

    def fake_torch(url, dst, hash_prefix=None, progress=True):
        calls.append(("torch", url, hash_prefix, progress))
        shutil.copyfile(official_cache / "torch" / "hub" / "checkpoints" / Path(url).name, dst)

    def fake_hf(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        calls.append(("hf", repo_id, filename, revision))
        repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        blob = repo / "blobs" / f"blob-{filename}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(official_cache / "huggingface" / "hub" / repo.name / "snapshots" / revision
                        / filename, blob)
        link = repo / "snapshots" / revision / filename
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
        return str(link)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_torch)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf)
    out = tmp_path / "wc"
    assert cli(["weights", "prefetch", "maskrcnn:coco", "sam:vit_b", "--config",
                "unet_competition_finetune", "--out", str(out), "--dataset-id", "me/cell-weights"]) == 0
    assert ("torch", P.parse_spec("maskrcnn:coco").url, "bf2d0c1e", True) in calls
    assert ("torch", P.parse_spec("sam:vit_b").url, None, True) in calls  # Meta gives no hash
    assert ("hf", SMP_R34.repo_id, "model.safetensors", SMP_R34.revision) in calls
    assert not [p for p in out.rglob("*") if p.is_symlink()] and not list(out.rglob("blobs"))
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "me/cell-weights"
    # the offline path reads this layout
    env.setenv("HF_HUB_OFFLINE", "1")
    P.use_weights_cache(out)
    for spec in ("maskrcnn:coco", "sam:vit_b", "unet:resnet34:imagenet"):
        assert P.fetch(P.parse_spec(spec), offline=True).is_file()
    with pytest.raises(P.UserError, match=">= 6"):
        P.prefetch(["sam:vit_b"], tmp_path / "x", dataset_id="me/cells")


def test_weights_cache_finds_a_nested_kaggle_mount(tmp_path):
    (tmp_path / "input" / "datasets" / "me" / "wc" / "torch").mkdir(parents=True)
    assert P.find_cache_root(tmp_path / "input") == tmp_path / "input" / "datasets" / "me" / "wc"
    assert P.find_cache_root(tmp_path / "nowhere") == tmp_path / "nowhere"
