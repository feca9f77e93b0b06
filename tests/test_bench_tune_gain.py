"""`python -m bench.tune_gain`: tuning on one grouped half of held-out images, scoring on the
other, per type; here on 8 real sartorius_409 images with a tiny checkpoint that carries a pixel
classifier (the run's figures are in docs/competition.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_tune_gain_on_real_images(tmp_path: Path, held_out_409: tuple, tiny_unet_ckpt: Path,
                                  capsys) -> None:
    from bench.tune_gain import main
    from cellseg.checkpoint import load_checkpoint, save_checkpoint
    from cellseg.data.typeclf import fit_on_records

    folder, _, records = held_out_409
    ckpt = load_checkpoint(tiny_unet_ckpt)
    ckpt["type_classifier"] = fit_on_records(records[:40] + records[-40:]).to_dict()
    weights = tmp_path / "typed.pt"
    save_checkpoint(weights, **ckpt)
    out = tmp_path / "gain.json"
    assert main(["--weights", str(weights), "--data", str(folder), "--per-type-decode",
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    assert set(table) == {"astro", "cort", "all"} and table["all"]["n"] == 8
    for row in table.values():
        assert 0.0 <= row["default"] <= 1.0 and 0.0 <= row["tuned_held_out"] <= 1.0
        # tuning never lowers the score of the images it was tuned on
        assert row["tuned_in_sample"] >= row["default"] - 1e-9
    printed = capsys.readouterr().out
    assert "| astro | 4 |" in printed and "type decided right for" in printed
