"""`python -m bench.celltype_decided`: the type predict decides, per checkpoint and ensemble, on
real sartorius_409 images (the fold-0 figures are in docs/validation.md)."""

from __future__ import annotations

from pathlib import Path

import torch  # noqa: F401  (a hard dependency: fail, never skip)


def test_accuracy_per_true_type() -> None:
    from bench.celltype_decided import accuracy

    got = accuracy(["astro", "cort", "cort", None], ["astro", "astro", "cort", "shsy5y"])
    assert got == {"all": 0.5, "astro": 0.5, "cort": 1.0, "shsy5y": 0.0}


def test_decided_types_per_checkpoint_and_ensemble(tmp_path: Path, shared_sartorius_409: Path,
                                                   tiny_unet_ckpt: Path, capsys) -> None:
    from bench.celltype_decided import main
    from cellseg.checkpoint import load_checkpoint, save_checkpoint
    from cellseg.data.sources import load_sources
    from cellseg.data.typeclf import fit_on_records
    from cellseg.export import write_competition_folder

    records = load_sources([str(shared_sartorius_409)], annotated=True)
    by_type = {t: [r for r in records if r.cell_type == t] for t in ("astro", "cort", "shsy5y")}
    held = [r for rs in by_type.values() for r in rs[:2]]
    write_competition_folder(held, tmp_path / "held")
    fit = [r for rs in by_type.values() for r in rs[2:14]]
    ckpt = load_checkpoint(tiny_unet_ckpt)
    ckpt["type_classifier"] = fit_on_records(fit).to_dict()
    typed = tmp_path / "typed.pt"
    save_checkpoint(typed, **ckpt)
    assert main(["--weights", str(typed), str(tiny_unet_ckpt), "--data",
                 str(tmp_path / "held")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| checkpoint(s) | accuracy | astro (2) | cort (2) | shsy5y (2) |")
    assert "no pixel classifier" in rows[2]
    # the ensemble decides with the one classifier it has: the same figures as that checkpoint
    assert rows[1].split("|")[2:] == rows[3].split("|")[2:]
    assert float(rows[1].split("|")[2]) >= 0.5
