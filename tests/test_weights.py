"""weights/manifest.yaml: add (metadata copied from the checkpoint), list, verify, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cellseg.cli import main
from cellseg.weights import WeightEntry, add_weights, find_entry, load_manifest, verify_manifest

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, score: float = 0.31) -> Path:
    import torch

    from cellseg.checkpoint import save_checkpoint

    save_checkpoint(path, model={"w": torch.arange(6, dtype=torch.float32)}, family="unet",
                    model_args={"encoder": "resnet18", "classes": 3},
                    config={"model": {"family": "unet"}, "train": {"epochs": 2}},
                    metrics={"score": score, "ap50": 0.6}, data={"source": "sartorius", "fold": 0},
                    epoch=2, step=10)
    return path


def test_add_list_verify_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path / "runs" / "best.pt")
    manifest = tmp_path / "weights" / "manifest.yaml"
    assert main(["weights", "add", str(ckpt), "--name", "unet_f0", "--manifest", str(manifest)]) == 0
    entries = load_manifest(manifest)
    assert [e.name for e in entries] == ["unet_f0"]
    e = entries[0]
    from cellseg.checkpoint import sha256_file

    copy = manifest.parent / "unet_f0.pt"
    assert e.file == "unet_f0.pt" and copy.is_file()
    assert e.sha256 == sha256_file(ckpt) == sha256_file(copy)
    assert e.size == copy.stat().st_size
    # metadata comes from the checkpoint, not from arguments
    assert e.family == "unet"
    assert e.model_args == {"encoder": "resnet18", "classes": 3}
    assert e.config["train"] == {"epochs": 2}
    assert e.data == {"source": "sartorius", "fold": 0}
    assert e.score == pytest.approx(0.31) and e.metrics["ap50"] == pytest.approx(0.6)
    assert e.version.get("cellseg")
    # the manifest is plain YAML a human can read
    raw = yaml.safe_load(manifest.read_text())
    assert raw[0]["name"] == "unet_f0" and raw[0]["sha256"] == e.sha256

    capsys.readouterr()
    assert main(["weights", "list", "--manifest", str(manifest)]) == 0
    assert "unet_f0" in capsys.readouterr().out
    assert main(["weights", "verify", "--manifest", str(manifest)]) == 0

    # tampering is caught and named
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert main(["weights", "verify", "--manifest", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "unet_f0" in err and e.sha256 in err
    copy.unlink()
    problems = verify_manifest(manifest)
    assert len(problems) == 1 and "missing" in problems[0]


def test_add_second_entry_and_duplicates(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    add_weights(_checkpoint(tmp_path / "a.pt", 0.2), "a", manifest=manifest)
    add_weights(_checkpoint(tmp_path / "b.pt", 0.3), "b", manifest=manifest)
    assert [e.name for e in load_manifest(manifest)] == ["a", "b"]
    with pytest.raises(ValueError, match="already registered"):
        add_weights(tmp_path / "a.pt", "a", manifest=manifest)
    e = add_weights(_checkpoint(tmp_path / "a2.pt", 0.5), "a", manifest=manifest, overwrite=True)
    assert e.score == pytest.approx(0.5)
    assert [x.name for x in load_manifest(manifest)] == ["b", "a"]
    with pytest.raises(KeyError, match="known: \\['b', 'a'\\]"):
        find_entry(load_manifest(manifest), "zzz")
    with pytest.raises(ValueError, match="must be letters"):
        add_weights(tmp_path / "a.pt", "../evil", manifest=manifest)


def test_add_rejects_a_bare_state_dict(tmp_path: Path) -> None:
    import torch

    bare = tmp_path / "bare.pt"
    torch.save({"w": torch.zeros(2)}, bare)
    with pytest.raises(ValueError, match="not a cellseg checkpoint"):
        add_weights(bare, "bare", manifest=tmp_path / "manifest.yaml")
    assert not (tmp_path / "manifest.yaml").exists()


def test_load_manifest_errors(tmp_path: Path) -> None:
    m = tmp_path / "manifest.yaml"
    assert load_manifest(m) == []
    m.write_text("[]\n")
    assert load_manifest(m) == []
    m.write_text("- {name: a, file: a.pt}\n")
    with pytest.raises(ValueError, match="lacks \\['sha256'\\]"):
        load_manifest(m)
    m.write_text(f"- {{name: a, file: a.pt, sha256: {'a' * 64}, colour: red}}\n")
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        load_manifest(m)
    m.write_text(f"- {{name: a, file: a.pt, sha256: {'a' * 64}}}\n"
                 f"- {{name: a, file: b.pt, sha256: {'b' * 64}}}\n")
    with pytest.raises(ValueError, match="duplicate names \\['a'\\]"):
        load_manifest(m)
    m.write_text("name: a\n")
    with pytest.raises(ValueError, match="YAML list"):
        load_manifest(m)


def test_repository_manifest_parses() -> None:
    entries = load_manifest(ROOT / "weights" / "manifest.yaml")
    assert all(isinstance(e, WeightEntry) for e in entries)
