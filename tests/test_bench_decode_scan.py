"""`python -m bench.decode_scan`: one decode setting scanned on held-out images, per type; here
on 8 real sartorius_409 images with a tiny checkpoint (the run's figures are in
docs/competition.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_decode_scan_on_real_images(tmp_path: Path, held_out_409: tuple, tiny_unet_ckpt: Path,
                                    capsys) -> None:
    from bench.decode_scan import main

    folder, pick, _ = held_out_409
    out = tmp_path / "scan.json"
    assert main(["--weights", str(tiny_unet_ckpt), "--data", str(folder), "--key",
                 "merge_thresh", "--values", "0", "1.01", "--set", "decode.seed_thresh=0.3",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["value"] for r in rows] == [0.0, 1.01]
    off, merge_all = rows
    for row in rows:
        assert set(row["means"]) == {"astro", "cort", "all"}
        assert all(0.0 <= v <= 1.0 for v in row["means"].values())
        assert row["counts"]["astro"][1] == sum(len(r.rles) for r in pick[:4])
    # merging every touching pair (no border value reaches 1.01) leaves fewer cells
    assert merge_all["counts"]["all"][0] < off["counts"]["all"][0]
    printed = capsys.readouterr().out
    assert "| merge_thresh | astro | cort | all |" in printed
