"""CI's one short end-to-end run: synthetic data -> train -> predict -> validate -> score -> report,
through the real CLI in a subprocess, with a RELATIVE --out typed from another working directory
(the way `make demo` and a user run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cellseg.cli import main


def test_demo_quick_end_to_end_with_a_relative_out(tmp_path: Path) -> None:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "cellseg", "demo", "--out", "demo_rel", "--quick",
                           "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "demo_rel"
    for family in ("unet", "maskrcnn"):
        assert (out / "runs" / family / "best.pt").exists()
        report = json.loads((out / f"score_{family}.json").read_text())
        assert 0.0 <= report["score"] <= 1.0
    # the validator already ran inside the demo; check again from outside
    assert main(["validate", str(out / "submission.csv"),
                 "--images", str(out / "data" / "competition" / "test")]) == 0
    report_md = (out / "report.md").read_text()
    assert "hold-out competition score" in report_md
    # it ends by pointing at the results pages: the hold-out run, and unet vs maskrcnn
    assert "Open the results page in a browser: demo_rel/report/index.html" in proc.stdout
    from test_viewer import page_data

    assert page_data(out / "report" / "index.html")["runs"][0]["info"]["weights"]
    assert [r["name"] for r in page_data(out / "report_compare" / "index.html")["runs"]] == [
        "holdout_pred_unet.csv", "holdout_pred_maskrcnn.csv"]
    assert not (Path.cwd() / "demo_rel").exists()  # nothing landed beside the caller
