"""Shared fixtures. Tests that need the real samples in ../shared/data skip when it is absent
(a user's fresh clone has no ../shared), except where ``CELLSEG_REQUIRE_DATA=1`` (the project's CI,
`.ci/run`): there a missing sample fails the test, so CI never passes with real-data tests skipped."""

from __future__ import annotations

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
        if os.environ.get("CELLSEG_REQUIRE_DATA") == "1":
            pytest.fail(f"{why}; CELLSEG_REQUIRE_DATA=1 forbids skipping it", pytrace=False)
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
