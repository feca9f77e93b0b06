"""CI's one short end-to-end run: synthetic data -> train -> predict -> validate -> score -> report."""

from __future__ import annotations

import json
from pathlib import Path

from cellseg.cli import main


def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    for family in ("unet", "maskrcnn"):
        assert (out / "runs" / family / "best.pt").exists()
        report = json.loads((out / f"score_{family}.json").read_text())
        assert 0.0 <= report["score"] <= 1.0
    # the validator already ran inside the demo; check again from outside
    assert main(["validate", str(out / "submission.csv"),
                 "--images", str(out / "data" / "competition" / "test")]) == 0
    report_md = (out / "report.md").read_text()
    assert "hold-out competition score" in report_md
