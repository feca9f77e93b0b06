"""The UNet oracle on real images: the kit's own training targets of real annotated images,
decoded and postprocessed with the default inference config, must score close to 1 with the
competition metric. A target or decode change that loses cells (a border too wide for small
dense cells, a seed threshold, a minimum area, a sigmoid/softmax mismatch ...) fails here before
anyone spends an hour training.

Measured (issue 13, 6 real images: 1 Sartorius shsy5y + 5 LIVECell val, 1,638 cells): perfect
maps 0.965 with decode_unet's seed_thresh 0.3 and 0.949 with infer_default's 0.7 (per image
0.90-0.99; the plain-UNet reference's own targets + decode score 0.961); maps blurred with a
Gaussian of sigma 1 px (a stand-in for a network's soft output) 0.928 / 0.915. Border width 3
would score 0.921 and fail. The bounds leave a margin of about 0.02-0.035 under those figures.
"""

from __future__ import annotations

import numpy as np
import pytest

UNET_CONFIGS = ["unet_small_real", "unet_competition_cpu", "unet_competition_finetune",
                "unet_livecell_pretrain", "unet_tiny"]


@pytest.fixture(scope="module")
def real_records(shared_sartorius, shared_livecell):
    from cellseg.data.sources import load_sources

    recs = load_sources([str(shared_sartorius), f"{shared_livecell}:val"], annotated=True)
    assert len(recs) == 6, [r.image_id for r in recs]
    return recs


def _oracle(records, config: str, blur: float = 0.0, overrides: tuple[str, ...] = ()):
    from scipy.ndimage import gaussian_filter

    from cellseg.config import load_train_config
    from cellseg.core.metrics import score_instances
    from cellseg.data.targets import layers_from_masks, unet_maps_from_layers
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.postprocess import postprocess
    from cellseg.models import get_family

    cfg = load_train_config(config, list(overrides))
    family = get_family(cfg.model.family)
    spec = family.target_spec(**cfg.model.args)
    icfg = load_inference_config("infer_default")
    preds = []
    for r in records:
        maps = unet_maps_from_layers(layers_from_masks(r.masks()), spec.channels,
                                     spec.border_width, centre=spec.centre)
        if blur:
            maps = np.stack([gaussian_filter(m, blur) for m in maps])
        raw = family.decode(maps, **dict(icfg.decode))
        preds.append(postprocess(raw, icfg, cell_type=r.cell_type))
    return score_instances(records, preds), preds


@pytest.mark.parametrize("config", UNET_CONFIGS)
def test_perfect_targets_of_real_images_decode_to_the_truth(real_records, config):
    report, preds = _oracle(real_records, config)
    per_image = report.per_image
    assert report.score >= 0.93, per_image
    assert min(per_image.values()) >= 0.85, per_image
    n_pred = sum(len(p) for p in preds)
    n_true = sum(r.n_instances for r in real_records)
    assert abs(n_pred - n_true) <= 0.03 * n_true, (n_pred, n_true)


# Measured 2026-12-07 on the 6 real images: distance 0.915, peak 0.861 (MCF7_G4, 711 small dense
# cells: 0.83 -> 0.71). A 1 px blur lowers a small cell's narrow Gaussian (width 1 px) below the
# seed threshold where the distance ridge survives it; trained networks still score higher with
# peak on those images (docs/recipes.md), so the floor is per target, not one for both.
BLUR_FLOOR = {"distance": 0.88, "peak": 0.84}


@pytest.mark.parametrize("centre", sorted(BLUR_FLOOR))
def test_slightly_blurred_targets_still_separate_touching_real_cells(real_records, centre):
    """A network's maps are smooth: a 1 px blur must not merge or lose the dense real cells."""
    report, preds = _oracle(real_records, "unet_small_real", blur=1.0,
                            overrides=(f"model.args.centre={centre}",))
    assert report.score >= BLUR_FLOOR[centre], report.per_image
    n_pred = sum(len(p) for p in preds)
    n_true = sum(r.n_instances for r in real_records)
    assert n_pred >= 0.95 * n_true, (n_pred, n_true)


@pytest.mark.parametrize("config", UNET_CONFIGS)
def test_training_and_prediction_normalise_alike(config):
    """The data pipeline normalises with the TargetSpec's norm, predict with model.spec.norm:
    they come from the same config arguments and must be equal."""
    from cellseg.config import load_train_config
    from cellseg.models import get_family

    cfg = load_train_config(config)
    family = get_family(cfg.model.family)
    args = {**cfg.model.args, "encoder_weights": None}  # never download in a test
    spec = family.target_spec(**args)
    model = family.build(**args)
    assert spec.norm["mean"] == model.spec.norm["mean"]
    assert spec.norm["std"] == model.spec.norm["std"]
    assert spec.norm["in_channels"] == model.spec.norm["in_channels"]


def test_small_real_recipe_trains_on_the_real_samples(tmp_path, shared_sartorius, shared_livecell,
                                                      capsys) -> None:
    """The documented recipe, as the README types it, for 2 steps: both sources, all 6 images,
    no validation (said out loud), a checkpoint; its full budget is 2,000 steps."""
    from cellseg.checkpoint import load_checkpoint
    from cellseg.cli import main
    from cellseg.config import load_train_config

    cfg = load_train_config("unet_small_real")
    assert cfg.data.samples_per_epoch * cfg.train.epochs // cfg.train.batch_size == 2000
    out = tmp_path / "run"
    assert main(["train", "--config", "unet_small_real", "--data", str(shared_sartorius),
                 "--data", f"{shared_livecell}:val", "--out", str(out), "--no-progress",
                 "--set", "train.max_steps=2"]) == 0
    err = capsys.readouterr().err
    assert "6 training images" in err and "no validation images" in err
    # one seed per cell: the checkpoint records it, so predict decodes what was learned
    assert load_checkpoint(out / "best.pt")["spec"]["args"]["centre"] == "peak"


def test_competition_cpu_recipe_trains_on_the_competition_images(tmp_path, shared_sartorius_409,
                                                                 capsys) -> None:
    """The competition CPU recipe as its config types it, for 2 steps on sartorius_409: all 409
    images, every type drawn equally often, bfloat16 where the CPU has it natively, a checkpoint
    holding the type classifier; its full budget is 2,000 steps (docs/competition.md)."""
    from cellseg.checkpoint import load_checkpoint
    from cellseg.cli import main
    from cellseg.config import load_train_config
    from cellseg.config import native_bfloat16

    cfg = load_train_config("unet_competition_cpu")
    assert cfg.data.samples_per_epoch * cfg.train.epochs // cfg.train.batch_size == 2000
    assert cfg.data.type_balance == 1.0 and cfg.train.amp_dtype == "bfloat16_if_native"
    # one seed per cell and the encoder, from its base
    assert cfg.model.args["centre"] == "peak" and cfg.model.args["encoder_name"] == "resnet18"
    precision = "bfloat16 autocast" if native_bfloat16("cpu") else "float32 ("
    out = tmp_path / "run"
    assert main(["train", "--config", "unet_competition_cpu", "--data", str(shared_sartorius_409),
                 "--out", str(out), "--no-progress", "--set", "train.max_steps=2"]) == 0
    err = capsys.readouterr().err
    assert "409 training images" in err and "astro 107, cort 280, shsy5y 22" in err
    mix = err.split("sampling: an epoch draws 200 samples: ")[1].split(" (data.type_balance")[0]
    drawn = dict(part.split(" ") for part in mix.split(", "))
    assert set(drawn) == {"astro", "cort", "shsy5y"}
    assert sorted(map(int, drawn.values())) == [66, 67, 67]
    assert f"precision: {precision}" in err

    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["config"]["data"]["type_balance"] == 1.0
    assert ckpt["type_classifier"]
    assert ckpt["spec"]["args"]["centre"] == "peak" and ckpt["spec"]["args"]["in_channels"] == 1
