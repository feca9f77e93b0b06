"""scripts/upload_weights.py: dry run (no network, no kaggle import), sha256 gate, credentials
message without secrets, and the create-or-version upload against a fake API."""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("upload_weights", ROOT / "scripts" / "upload_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    import torch

    from cellseg.checkpoint import save_checkpoint
    from cellseg.weights import add_weights

    m = tmp_path / "weights" / "manifest.yaml"
    for name in ("unet_a", "unet_b"):
        ckpt = tmp_path / f"{name}.pt"
        save_checkpoint(ckpt, model={"w": torch.rand(3)}, family="unet", model_args={}, config={},
                        metrics={"score": 0.2})
        add_weights(ckpt, name, manifest=m)
    return m


class _NoKaggle(importlib.abc.MetaPathFinder):
    """Fails the test if anything imports the kaggle package."""

    def find_spec(self, name, path=None, target=None):
        if name == "kaggle" or name.startswith("kaggle."):
            raise AssertionError(f"{name} imported during a dry run")
        return None


def test_docstring_opens_with_the_commands() -> None:
    doc = _script().__doc__.split("\n\n")
    assert doc[1].strip().startswith("python scripts/upload_weights.py --dataset-id")


def test_dry_run_prints_files_and_metadata(manifest: Path, monkeypatch, capsys) -> None:
    from cellseg.weights import load_manifest

    for mod in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_NoKaggle(), *sys.meta_path])
    rc = _script().main(["--manifest", str(manifest), "--dataset-id", "me/cellseg-weights",
                         "--names", "unet_b", "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    entry = {e.name: e for e in load_manifest(manifest)}["unet_b"]
    assert f"unet_b.pt\t{entry.size} bytes\tsha256 {entry.sha256}" in out
    assert "unet_a.pt" not in out
    meta = json.loads(out[out.index("{"):])
    assert meta == {"title": "cellseg weights", "id": "me/cellseg-weights",
                    "licenses": [{"name": "other"}]}


def test_bad_sha_refuses_before_any_network(manifest: Path, capsys) -> None:
    f = manifest.parent / "unet_a.pt"
    f.write_bytes(f.read_bytes() + b"x")
    api = SimpleNamespace()  # any attribute access would raise AttributeError
    rc = _script().main(["--manifest", str(manifest), "--dataset-id", "me/cellseg-weights"], api=api)
    assert rc == 2
    err = capsys.readouterr().err
    assert "sha256 check failed" in err and "unet_a" in err


@pytest.mark.parametrize("args,expected", [
    (["--dataset-id", "me/wts"], "slug of 6-50 characters"),
    (["--dataset-id", "me/cellseg-weights", "--title", "wts"], "dataset title 'wts'"),
])
def test_kaggle_name_rules_refuse_before_any_network(manifest: Path, capsys, args, expected) -> None:
    api = SimpleNamespace()  # any attribute access would raise AttributeError
    rc = _script().main(["--manifest", str(manifest), *args], api=api)
    assert rc == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_missing_credentials_one_line_no_secret(manifest: Path, monkeypatch, tmp_path: Path,
                                                 capsys) -> None:
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key == "XDG_CONFIG_HOME":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")  # no key: not usable
    monkeypatch.setenv("KAGGLE_API_TOKEN", "")
    rc = _script().main(["--manifest", str(manifest)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "KAGGLE_USERNAME/KAGGLE_KEY env" in err and "~/.kaggle/kaggle.json" in err
    assert "KAGGLE_API_TOKEN env" in err and "~/.config/kaggle/kaggle.json" in err


class FakeDatasets:
    def __init__(self, exists: bool):
        self.exists, self.calls, self.statuses = exists, [], ["pending", "ready"]

    def dataset_status(self, dataset):
        self.calls.append(("dataset_status", dataset))
        if not self.exists:
            raise RuntimeError("404 Not Found")
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def _snapshot(self, folder):
        return sorted(p.name for p in Path(folder).iterdir())

    def dataset_create_new(self, folder, public=False, quiet=False, convert_to_csv=True,
                           dir_mode="skip"):
        self.calls.append(("dataset_create_new", self._snapshot(folder), dir_mode, public))
        self.meta = json.loads((Path(folder) / "dataset-metadata.json").read_text())
        self.exists = True
        return SimpleNamespace(ref="me/cellseg-weights", url="https://kaggle.com/ds", error=None)

    def dataset_create_version(self, folder, version_notes, quiet=False, convert_to_csv=True,
                               delete_old_versions=False, dir_mode="skip"):
        self.calls.append(("dataset_create_version", self._snapshot(folder), dir_mode, version_notes))
        return SimpleNamespace(ref="me/cellseg-weights", url="https://kaggle.com/ds", error=None)


@pytest.mark.parametrize("exists", [False, True])
def test_upload_creates_or_versions(manifest: Path, exists: bool, capsys) -> None:
    api = FakeDatasets(exists)
    rc = _script().main(["--manifest", str(manifest), "--dataset-id", "me/cellseg-weights",
                         "--poll", "0", "--notes", "v2"], api=api)
    assert rc == 0, capsys.readouterr().err
    upload = [c for c in api.calls if c[0].startswith("dataset_create")]
    assert len(upload) == 1
    kind, files, dir_mode, extra = upload[0]
    assert kind == ("dataset_create_version" if exists else "dataset_create_new")
    assert files == ["dataset-metadata.json", "manifest.yaml", "unet_a.pt", "unet_b.pt"]
    assert dir_mode == "zip"
    assert extra == ("v2" if exists else False)
    assert api.calls[-1][0] == "dataset_status"  # polled until ready
    assert "is ready" in capsys.readouterr().out
