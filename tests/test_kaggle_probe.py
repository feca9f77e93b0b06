"""The kernel's probe: the tolerance on hand-made instances, and a real tiny model whose probe is
reproduced as is and fails once one weight tensor is zeroed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from cellseg.core import rle
from cellseg.kaggle.probe import compare, main as probe_main

SHAPE = (64, 64)


def _squares(n: int, size: int = 8, shift: int = 0) -> list[str]:
    """n disjoint size x size squares on SHAPE, shifted right by ``shift`` pixels."""
    out = []
    for i in range(n):
        m = np.zeros(SHAPE, bool)
        y, x = (i // 6) * 10 + 1, (i % 6) * 10 + 1 + shift
        m[y:y + size, x:x + size] = True
        out.append(rle.encode(m))
    return out


def test_identical_instances_pass_and_both_empty_pass() -> None:
    r = compare(_squares(20), _squares(20), SHAPE)
    assert r["ok"] and r["mean_iou"] == 1.0 and r["matched"] == 20
    assert compare([], [], SHAPE)["ok"]


def test_boundary_drift_passes_but_shifted_cells_fail() -> None:
    # one pixel column more on every cell (fp16 vs fp32 moves boundaries): IoU 64/72 ~ 0.89 per
    # cell would fail, so use 9x9 vs 9x10: IoU 0.9 exactly passes
    a = []
    b = []
    for i in range(10):
        m = np.zeros(SHAPE, bool)
        y, x = (i // 5) * 12 + 1, (i % 5) * 12 + 1
        m[y:y + 9, x:x + 9] = True
        a.append(rle.encode(m))
        m[y:y + 9, x + 9] = True
        b.append(rle.encode(m))
    r = compare(a, b, SHAPE)
    assert r["ok"] and r["mean_iou"] == pytest.approx(0.9)
    shifted = compare(_squares(20), _squares(20, shift=3), SHAPE)  # IoU 40/88 per cell
    assert not shifted["ok"] and "FAILED" in shifted["message"]


def test_count_tolerance_is_5_percent_with_one_instance_of_slack() -> None:
    assert compare(_squares(20), _squares(19), SHAPE)["ok"]  # 1 of 20 missing: within 5%
    r = compare(_squares(20), _squares(18), SHAPE)
    assert not r["ok"] and "18 instances (expected 20, allowed +-1)" in r["message"]
    assert compare(_squares(3), _squares(2), SHAPE)["count_slack"] == 1
    # an extra cell lowers the mean IoU too (unmatched counts 0 over the larger count)
    assert compare(_squares(10), _squares(11), SHAPE)["mean_iou"] == pytest.approx(10 / 11, abs=1e-4)


@pytest.fixture(scope="module")
def sharp_unet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A random tiny UNet whose head is sharpened (cell on, border off, centre x20) so that its
    watershed finds ~100 instances on the synthetic probe image: an untrained or briefly trained
    tiny model finds none, and a probe of nothing could not tell two models apart."""
    import torch
    from cellseg.checkpoint import save_checkpoint
    from cellseg.models import get_family

    torch.manual_seed(0)
    model = get_family("unet").build(encoder_name="resnet18", encoder_depth=3,
                                     decoder_channels=(16, 8, 4), in_channels=1)
    sd = model.state_dict()
    with torch.no_grad():
        sd["segmentation_head.0.weight"].mul_(20.0)
        sd["segmentation_head.0.bias"][0] = 4.0  # cell
        sd["segmentation_head.0.bias"][1] = -4.0  # border
    path = tmp_path_factory.mktemp("sharp") / "sharp.pt"
    save_checkpoint(path, model=sd, spec=model.spec)
    return path, sd


def test_probe_of_a_real_model_is_reproduced_and_an_altered_model_fails(
        sharp_unet, tmp_path: Path, capsys) -> None:
    from cellseg.checkpoint import save_checkpoint
    from cellseg.kaggle.probe import build_probe, run_predict
    from cellseg.models import get_family

    path, sd = sharp_unet
    probe = build_probe([path], config_yaml=None)
    assert probe["count"] >= 20 and probe["count"] == len(probe["rles"])
    assert probe["shape"] == [260, 352] and "cpu, torch" in probe["computed_on"]
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(probe))
    png = base64.b64decode(probe["png_base64"])

    def rows_csv(weights: Path, name: str) -> Path:
        rows = run_predict([weights], png, config_yaml=None)
        csv = tmp_path / name
        csv.write_text("id,predicted\n" + "".join(f"{probe['id']},{r}\n" for r in rows))
        return csv

    same = rows_csv(path, "same.csv")
    assert probe_main(["check", str(expected), str(same), "--out", str(tmp_path / "r.json")]) == 0
    assert "probe passed" in capsys.readouterr().out
    # the same model with one weight tensor zeroed (the first convolution)
    altered = {k: v.clone() for k, v in sd.items()}
    altered["encoder.conv1.weight"].zero_()
    model = get_family("unet").build(encoder_name="resnet18", encoder_depth=3,
                                     decoder_channels=(16, 8, 4), in_channels=1)
    bad_path = tmp_path / "altered.pt"
    save_checkpoint(bad_path, model=altered, spec=model.spec)
    bad = rows_csv(bad_path, "altered.csv")
    assert probe_main(["check", str(expected), str(bad), "--out", str(tmp_path / "r.json")]) == 1
    msg = capsys.readouterr().out
    assert "probe FAILED" in msg and f"expected {probe['count']}" in msg
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["expected"]["rles"] == probe["rles"] and result["actual"]["count"] != probe["count"]


def test_build_kernel_embeds_the_probe_and_warns_when_it_checks_little(
        tiny_unet_ckpt: Path, tmp_path: Path, capsys) -> None:
    """An untrained model finds nothing but the empty-image placeholder on the probe image: the
    build still embeds that result, and says it is too little to tell environments apart."""
    from cellseg.cli import main
    from cellseg.kaggle.kernel_template import embedded_of
    from cellseg.weights import add_weights

    manifest = tmp_path / "weights" / "manifest.yaml"
    add_weights(tiny_unet_ckpt, "tiny", manifest=manifest)
    assert main(["kaggle", "build-kernel", "--weights", "tiny", "--manifest", str(manifest),
                 "--kernel-id", "me/cellseg-infer", "--out", str(tmp_path / "k")]) == 0
    emb = embedded_of((tmp_path / "k" / "cellseg_infer.py").read_text())
    assert emb["probe"]["count"] == len(emb["probe"]["rles"]) <= 1
    assert base64.b64decode(emb["probe"]["png_base64"]).startswith(b"\x89PNG")
    assert emb["probe"]["min_mean_iou"] == 0.9 and emb["probe"]["count_tolerance"] == 0.05
    assert "too few to tell a changed environment apart" in capsys.readouterr().err
