"""Shared fixtures. Tests that need the real samples in ../shared/data skip when it is absent
(a user's fresh clone has no ../shared), except where ``CELLSEG_STRICT=1`` (the project's CI,
`.ci/run`): there a missing sample fails the test, so CI never passes with real-data tests skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("CELLSEG_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or CELLSEG_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # the CI machine has 2 cores and pytest-xdist runs 2 workers
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        why = f"real sample data not found at {path} (needs ../shared/data beside the repo)"
        if os.environ.get("CELLSEG_STRICT") == "1":
            pytest.fail(f"{why}; CELLSEG_STRICT=1 forbids skipping it", pytrace=False)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session")
def shared_sartorius() -> Path:
    """../shared/data/sartorius: train.csv (1 image, 395 cells), train/, test/ (3 PNGs)."""
    return _shared("sartorius")


@pytest.fixture(scope="session")
def shared_sartorius_409() -> Path:
    """../shared/data/sartorius_409: 409 annotated Kaggle train images (metadata columns empty),
    109 unlabeled shsy5y in train_semi_supervised/."""
    return _shared("sartorius_409")


@pytest.fixture
def held_out_409(tmp_path: Path, shared_sartorius_409: Path) -> tuple[Path, list, list]:
    """8 real sartorius_409 images (the first 4 astro, the first 4 cort) written as a
    competition folder, as a ``cellseg cv`` fold's ``test_data``: (folder, those 8 records, all
    409 records)."""
    from cellseg.data.sources import load_sources
    from cellseg.export import write_competition_folder

    records = load_sources([str(shared_sartorius_409)], annotated=True)
    pick = [r for t in ("astro", "cort") for r in [x for x in records if x.cell_type == t][:4]]
    folder = tmp_path / "held"
    write_competition_folder(pick, folder)
    return folder, pick, records


@pytest.fixture(scope="session")
def shared_livecell() -> Path:
    """../shared/data/livecell: official layout, 5 annotated val images (1,243 cells)."""
    return _shared("livecell")


@pytest.fixture(scope="session")
def shared_unlabeled() -> Path:
    """../shared/data/unlabeled/shsy5y: 48 unlabeled LIVECell TIFFs."""
    return _shared("unlabeled/shsy5y")


@pytest.fixture
def tiny_unet_ckpt(tmp_path: Path) -> Path:
    """A small random-init UNet (resnet18, depth 3, 1 channel) saved as a real checkpoint."""
    import torch
    from cellseg.checkpoint import save_checkpoint
    from cellseg.models import get_family

    torch.manual_seed(0)
    model = get_family("unet").build(encoder_name="resnet18", encoder_depth=3,
                                     decoder_channels=(16, 8, 4), in_channels=1)
    ckpt = tmp_path / "unet.pt"
    save_checkpoint(ckpt, model=model.state_dict(), spec=model.spec)
    return ckpt


@pytest.fixture(scope="session")
def official_cache(tmp_path_factory) -> Path:
    """torch/hub/checkpoints/{maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth, sam_vit_b_01ec64.pth} and
    huggingface/hub/models--smp-hub--resnet34.imagenet/snapshots/<smp's commit>/{model.safetensors,
    config.json}, written by hand in the libraries' documented layouts."""
    import torch
    import segment_anything
    import torchvision
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import get_encoder

    from cellseg.models import pretrained as P
    from stand_in import random_like

    smp_r34 = P.unet_source("resnet34", "imagenet")
    root = tmp_path_factory.mktemp("official_cache")
    ckpts = root / "torch" / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.manual_seed(0)
    coco = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save(random_like(coco.state_dict()), ckpts / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    del coco
    sam = segment_anything.sam_model_registry["vit_b"]()
    torch.save(random_like(sam.state_dict()), ckpts / "sam_vit_b_01ec64.pth")
    del sam
    snap = (root / "huggingface" / "hub" / "models--smp-hub--resnet34.imagenet" / "snapshots"
            / smp_r34.revision)
    snap.mkdir(parents=True)
    enc = get_encoder("resnet34", weights=None)
    save_file({k: v.contiguous() for k, v in random_like(enc.state_dict()).items()},
              str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406],
                                                  "std": [0.229, 0.224, 0.225]}))
    return root


def write_synthetic_competition(root: Path, seed: int = 0) -> Path:
    """A competition folder of 6 synthetic 128x160 images (2 per cell type, one sample_id per
    type) at ``root``: small enough for tests that train in subprocesses on 2 cores."""
    from cellseg.core import rle
    from cellseg.data.record import ImageRecord
    from cellseg.data.sartorius import write_train_csv
    from cellseg.data.synthetic import render
    from cellseg.io import write_png

    records = []
    for i, cell_type in enumerate(["shsy5y", "shsy5y", "astro", "astro", "cort", "cort"]):
        image, masks = render(cell_type, seed=seed + i, shape=(128, 160))
        path = root / "train" / f"{i:012x}.png"
        write_png(path, image)
        records.append(ImageRecord(path.stem, path, 128, 160, cell_type=cell_type,
                                   sample_id=f"{cell_type}_s", rles=tuple(map(rle.encode, masks))))
    write_train_csv(records, root / "train.csv")
    return root
