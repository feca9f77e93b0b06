"""The dated description of Kaggle's image, its cached rehearsal env, and how build-wheels plans
the bundle from it (no network: resolutions are given as pip report dicts)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cellseg.kaggle import image as kimage
from cellseg.kaggle import wheels as kwheels
from cellseg.kaggle.image import ImageDescription, load_image


def _img(**kw) -> ImageDescription:
    base = dict(name="kaggle-gpu", as_of="2026-01-01", python="3.12.13",
                platform="manylinux_2_35_x86_64",
                packages={"torch": "2.10.0", "torchvision": "0.25.0", "numpy": "2.0.2",
                          "timm": "1.0.26"},
                absent=("segmentation-models-pytorch",))
    base.update(kw)
    return ImageDescription(**base)


def test_default_description_is_kaggles_313_image_with_its_evidence() -> None:
    img = load_image()
    assert img.python.startswith("3.13.") and img.python_tag == "cp313"
    assert img.packages["torch"] == "2.11.0" and img.packages["torchvision"] == "0.26.0"
    assert img.platform == "manylinux_2_35_x86_64" and img.label == f"kaggle-{img.as_of}"
    assert not img.has("segmentation-models-pytorch") and not img.has("faster_coco_eval")
    assert img.has("PyYAML") and img.has("huggingface_hub")  # PEP 503 names
    assert any("backend-info" in s for s in img.sources) and "T4" in img.accelerator
    # every pin says whether it is confirmed or whose approximation it is
    assert set(img.packages) <= set(img.confidence) and "python" in img.confidence
    assert img.confidence["torch"].startswith("confirmed")
    assert img.confidence["numpy"].startswith("Colab's")


def test_older_descriptions_stay_selectable_by_date() -> None:
    from cellseg.errors import ConfigError
    from cellseg.kaggle.image import find_image

    old = find_image("kaggle-2026-08-12")
    assert old.python == "3.12.13" and old.packages["torch"] == "2.10.0"
    assert any("docker-python" in s for s in old.sources)
    assert find_image("kaggle") == find_image(None) == load_image()
    assert find_image(str(old.path)) == old
    with pytest.raises(ConfigError, match="kaggle-2026-08-12"):
        find_image("kaggle-2025-01-01")  # the error lists the shipped labels
    with pytest.raises(ConfigError, match="neither an image label nor a file"):
        find_image("/no/such/description.json")


def test_platform_tags_cover_older_manylinux_but_not_newer() -> None:
    tags = _img().platforms()
    assert tags[0] == "manylinux_2_35_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_36_x86_64" not in tags


def test_newest_description_wins_and_incomplete_ones_are_named(tmp_path: Path, monkeypatch) -> None:
    src = json.loads(Path(load_image().path).read_text())
    for date, py in (("2026-08-12", "3.12.13"), ("2027-01-05", "3.13.2")):
        (tmp_path / f"kaggle-gpu-{date}.json").write_text(json.dumps(dict(src, as_of=date, python=py)))
    monkeypatch.setattr(kimage, "image_files", lambda: sorted(tmp_path.glob("*.json")))
    assert load_image().python == "3.13.2" and load_image().python_tag == "cp313"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({k: v for k, v in src.items() if k != "platform"}))
    with pytest.raises(ValueError, match="bad.json lacks 'platform'"):
        load_image(bad)


def test_cache_key_follows_the_pins() -> None:
    assert _img().key() == _img().key()
    assert _img().key() != _img(packages={"torch": "2.11.0"}).key()
    assert _img().key() != _img(python="3.13.0").key()


def test_cached_env_is_reused_without_building(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CELLSEG_CACHE", str(tmp_path))
    img = _img()
    env = kimage.cache_dir(img)
    (env / "bin").mkdir(parents=True)
    (env / ".complete.json").write_text(json.dumps({"python": "3.12.1", "seconds": 1.0}))

    def no_python(version: str) -> Path:
        raise AssertionError("a cached env must not look for an interpreter or rebuild")

    monkeypatch.setattr(kimage, "find_python", no_python)
    assert kimage.ensure_image_env(img, log=lambda s: None) == env / "bin" / "python"
    assert kimage.env_info(img)["python"] == "3.12.1"


def test_missing_interpreter_names_the_fix(monkeypatch) -> None:
    monkeypatch.delenv("CELLSEG_KAGGLE_PYTHON", raising=False)
    with pytest.raises(FileNotFoundError, match="pyenv install 3.99.*CELLSEG_KAGGLE_PYTHON"):
        kimage.find_python("3.99")


def test_cli_prints_the_description() -> None:
    out = subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "image"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "python      3.13.15 (cp313)" in out.stdout and "torch" in out.stdout
    assert "Colab's" in out.stdout and "confirmed" in out.stdout  # per-version confidence
    assert "not in the image: segmentation-models-pytorch, faster-coco-eval" in out.stdout
    raw = subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "image", "--json",
                          "--image", "kaggle-2026-08-12"], capture_output=True, text=True, timeout=120)
    assert json.loads(raw.stdout)["python"] == "3.12.13"
    listing = subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "image", "--list"],
                             capture_output=True, text=True, timeout=120).stdout
    assert "kaggle-2026-08-12" in listing and "(newest: --image kaggle)" in listing
    bad = subprocess.run([sys.executable, "-m", "cellseg", "kaggle", "image", "--image",
                          "kaggle-1999-01-01"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "kaggle-2026-08-12" in bad.stderr


# ---------------------------------------------------------------- build-wheels planning


def _item(name: str, version: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


REPORT = {"install": [
    _item("segmentation_models_pytorch", "0.6.0", "torch>=1.8", "timm>=0.9", "pillow>=8",
          "tiny-dep>=1", "winonly>=1"),
    _item("torch", "2.10.0", "filelock", "sympy>=1.13", "winonly; sys_platform == 'win32'",
          "old-backport; python_version < '3.10'", "docs-only; extra == 'docs'"),
    _item("torchvision", "0.25.0", "torch==2.10.0", "pillow>=5.3"),
    _item("timm", "1.0.26", "torch", "torchvision"),
    _item("numpy", "2.0.2"),
    _item("filelock", "3.20.0"),
    _item("sympy", "1.14.0", "mpmath<1.4"),
    _item("mpmath", "1.3.0"),
    _item("pillow", "12.0.0"),
    _item("tiny-dep", "1.2", "tinier-dep"),
    _item("tinier-dep", "0.1"),
    _item("winonly", "1.0"),
    _item("old-backport", "1.0"),
    _item("docs-only", "1.0"),
]}


def test_bundle_is_what_the_image_lacks_with_reasons() -> None:
    bundle, present = kwheels.split_report(REPORT, _img(), ["segmentation-models-pytorch"])
    reasons = {p.name: p.reason for p in bundle}
    # pillow is in the image because torchvision (an image package) needs it; sympy via torch
    assert {"segmentation-models-pytorch", "tiny-dep", "tinier-dep", "winonly"} <= set(reasons)
    assert not {"pillow", "sympy", "mpmath", "filelock", "torch", "numpy"} & set(reasons)
    assert "not in the Kaggle image" in reasons["segmentation-models-pytorch"]
    assert reasons["tiny-dep"].startswith("required by segmentation-models-pytorch")
    assert reasons["tinier-dep"].startswith("required by tiny-dep")
    have = {p.name: p.reason for p in present}
    assert have["pillow"] == "in the image (a dependency of its packages)"
    assert have["mpmath"].startswith("in the image") and have["torch"] == "in the image"


def test_markers_and_extras_are_evaluated_for_the_image() -> None:
    """torch needs winonly only on Windows, so on Kaggle's Linux image it is NOT there and smp's
    unconditional need for it puts it in the bundle; a Python < 3.10 backport and an extra are
    not image packages' dependencies either."""
    bundle, present = kwheels.split_report(REPORT, _img(), ["segmentation-models-pytorch"])
    reasons = {p.name: p.reason for p in bundle}
    assert reasons["winonly"].startswith("required by segmentation-models-pytorch")
    assert not {"old-backport", "docs-only"} & {p.name for p in present}


def test_extras_an_image_package_requests_are_in_the_image() -> None:
    """torch 2.11 requires cuda-toolkit[nvrtc,...], whose nvidia-* wheels are conditional on
    those extras: they are the image's (its pip installed them), never bundled."""
    report = {"install": [
        _item("torch", "2.11.0", 'cuda-toolkit[nvrtc,nvtx]==13.0.2; platform_system == "Linux"'),
        _item("cuda-toolkit", "13.0.2", "nvidia-cuda-nvrtc==13.0.88.*; extra == 'nvrtc'",
              "nvidia-nvtx==13.0.85.*; extra == 'nvtx'", "nvidia-cuda-nvcc==13.0.88.*; extra == 'all'"),
        _item("nvidia-cuda-nvrtc", "13.0.88"), _item("nvidia-nvtx", "13.0.85"),
        _item("nvidia-cuda-nvcc", "13.0.88"),
        _item("segmentation-models-pytorch", "0.5.0", "torch>=2")]}
    bundle, present = kwheels.split_report(report, _img(packages={"torch": "2.11.0"}),
                                           ["segmentation-models-pytorch"])
    assert {"cuda-toolkit", "nvidia-cuda-nvrtc", "nvidia-nvtx"} <= {p.name for p in present}
    # an extra nobody requested is not the image's: resolved but unexplained, so it is bundled
    assert {p.name for p in bundle} == {"segmentation-models-pytorch", "nvidia-cuda-nvcc"}


def test_plan_leaves_out_scoring_only_and_image_packages() -> None:
    asked = []

    def resolver(requests, img, log=print):
        asked.append(list(requests))
        return REPORT

    bundle, left_out = kwheels.plan_bundle(
        ["numpy>=1.22", "faster-coco-eval>=1.5", "torch>=1.13", "segmentation-models-pytorch>=0.3"],
        _img(), pin=False, resolver=resolver, log=lambda s: None)
    assert asked == [["segmentation-models-pytorch"]]
    why = {p.name: p.reason for p in left_out}
    assert why["faster-coco-eval"].startswith("scoring only")
    assert why["numpy"] == "in the image" and why["torch"] == "in the image"
    assert "faster-coco-eval" not in {p.name for p in bundle}
    nothing, _ = kwheels.plan_bundle(["numpy", "faster-coco-eval"], _img(), resolver=resolver)
    assert nothing == [] and len(asked) == 1  # nothing missing: no resolution at all


@pytest.mark.parametrize("filename,fits", [
    ("segmentation_models_pytorch-0.6.0-py3-none-any.whl", True),
    ("torchvision-0.25.0-cp312-cp312-manylinux_2_28_x86_64.whl", True),
    ("safetensors-0.7.0-cp38-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("faster_coco_eval-1.8.0-cp311-cp311-manylinux_2_28_x86_64.whl", False),
    ("x-1.0-cp312-cp312-manylinux_2_38_x86_64.whl", False),
    ("x-1.0-cp312-cp312-macosx_11_0_arm64.whl", False),
])
def test_wheel_tags_must_fit_the_image(filename: str, fits: bool) -> None:
    assert kwheels.fits_image(filename, _img()) is fits


def test_requirements_come_from_the_built_wheel(tmp_path: Path) -> None:
    whl = tmp_path / "cellseg_kit-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("cellseg_kit-0.2.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: cellseg-kit\nVersion: 0.2.0\n"
                    "Requires-Dist: numpy>=1.22\nRequires-Dist: faster-coco-eval>=1.5\n"
                    "Requires-Dist: kaggle<3,>=1.7.3; extra == \"kaggle\"\n\n")
    assert kwheels.wheel_requirements(whl) == ["numpy>=1.22", "faster-coco-eval>=1.5"]


def test_predict_path_never_imports_faster_coco_eval() -> None:
    """The kernel does not bundle faster-coco-eval: nothing predict imports may need it."""
    code = ("import sys; sys.modules['faster_coco_eval'] = None\n"
            "import cellseg, cellseg.commands.predict, cellseg.commands.validate, "
            "cellseg.infer.predict, cellseg.core.submission, cellseg.checkpoint, cellseg.models\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
