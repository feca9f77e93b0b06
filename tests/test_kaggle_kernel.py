"""build-kernel: metadata values, a stdlib-only self-contained code file, input discovery in both
Kaggle mount layouts, and the sha256 check that stops a kernel with stale weights."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellseg.cli import main
from cellseg.kaggle.kernel import build_kernel, kernel_metadata
from cellseg.kaggle.kernel_template import embedded_of, render, template_text

COMPETITION = "sartorius-cell-instance-segmentation"


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """A manifest with one registered tiny checkpoint."""
    import torch

    from cellseg.checkpoint import save_checkpoint
    from cellseg.weights import add_weights

    ckpt = tmp_path / "run" / "best.pt"
    save_checkpoint(ckpt, model={"w": torch.ones(4)}, family="unet", model_args={"classes": 3},
                    config={}, metrics={"score": 0.25})
    m = tmp_path / "weights" / "manifest.yaml"
    add_weights(ckpt, "unet_tiny_f0", manifest=m)
    return m


def _load_code(path: Path):
    """Import the generated code file as a module (it only needs the standard library)."""
    spec = importlib.util.spec_from_file_location("cellseg_kernel_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metadata_fields_and_values(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "kernel"
    rc = main(["kaggle", "build-kernel", "--weights", "unet_tiny_f0", "--out", str(out),
               "--manifest", str(manifest), "--kernel-id", "alice/cellseg-infer",
               "--wheels-dataset", "alice/cs-wheels", "--weights-dataset", "bob/cs-weights",
               "--config", "infer_default", "--no-probe"])
    assert rc == 0
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta == {
        "id": "alice/cellseg-infer",
        "title": "cellseg infer",
        "code_file": "cellseg_infer.py",
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": ["alice/cs-wheels", "bob/cs-weights"],
        "competition_sources": [COMPETITION],
        "kernel_sources": [],
        "model_sources": [],
        "machine_shape": "NvidiaTeslaT4",
    }
    # enable_internet must be present literally: kaggle's push default is True
    assert '"enable_internet": false' in (out / "kernel-metadata.json").read_text()
    assert (out / "cellseg_infer.py").is_file()


def test_kernel_title_slugifies_to_id() -> None:
    meta = kernel_metadata("me/my-cell-kernel", datasets=["me/abcdef"])
    assert meta["title"].lower().replace(" ", "-") == "my-cell-kernel"
    with pytest.raises(ValueError, match="owner/slug"):
        kernel_metadata("no-owner", datasets=[])
    with pytest.raises(ValueError, match="dataset"):
        kernel_metadata("me/ok-kernel", datasets=["me/Bad Slug"])


def test_kaggle_name_rules_are_checked_before_any_upload() -> None:
    """Kaggle refuses kernel titles under 5 characters and dataset slugs/titles under 6."""
    from cellseg.kaggle.names import (check_dataset_ref, check_dataset_title, check_kernel_ref,
                                      check_kernel_title)

    assert check_kernel_title("infer") == "infer"  # 5: the minimum
    with pytest.raises(ValueError, match="kernel title 'cell'.*5-50 characters"):
        check_kernel_title("cell")
    with pytest.raises(ValueError, match="kernel title"):
        kernel_metadata("me/cell", datasets=[])  # the default title "cell" is too short
    assert kernel_metadata("me/cell", datasets=[], title="cell kernel")["title"] == "cell kernel"
    assert check_dataset_ref("me/abcdef") == "me/abcdef"  # 6: the minimum
    with pytest.raises(ValueError, match="slug of 6-50 characters.*got 5"):
        check_dataset_ref("me/abcde")
    with pytest.raises(ValueError, match="dataset title 'wheel'"):
        check_dataset_title("wheel")
    with pytest.raises(ValueError, match="slug of 3-50"):
        check_kernel_ref("me/ab")
    with pytest.raises(ValueError, match="dataset"):
        kernel_metadata("me/cellseg-infer", datasets=["me/wts"])


def test_code_file_is_self_contained(manifest: Path, tmp_path: Path) -> None:
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     config="infer_default", probe=False)
    source = b.code_file.read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):  # every import anywhere in the file, not only top level
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported, "the parser found no imports at all"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "cellseg" not in imported
    # the inputs are embedded, and they round-trip exactly
    emb = embedded_of(source)
    assert emb == b.embedded
    entry = emb["weights"][0]
    from cellseg.weights import load_manifest

    assert entry["sha256"] == load_manifest(manifest)[0].sha256 and entry["file"] == "unet_tiny_f0.pt"
    from importlib import resources

    shipped = (resources.files("cellseg") / "configs" / "infer_default.yaml").read_text()
    assert emb["config_yaml"] == shipped
    assert emb["weights_dataset"] == "me/cellseg-weights" and emb["wheels_dataset"] == "me/cellseg-wheels"


def test_render_rejects_unknown_inputs_and_template_runs_as_is() -> None:
    with pytest.raises(KeyError, match="unknown kernel inputs"):
        render({"weigths": []})
    assert embedded_of(template_text())["weights"] == []
    text = render({"config_yaml": "a: '''\"x\"'''\nb: 1\n"})  # quotes survive the literal
    assert embedded_of(text)["config_yaml"] == "a: '''\"x\"'''\nb: 1\n"
    compile(text, "kernel", "exec")


def test_build_refuses_bad_config_and_unknown_weights(manifest: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tile_sise: 256\n")
    with pytest.raises(Exception, match="tile_sise"):
        build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/k-k-k",
                     config=bad)
    from cellseg.errors import InputError

    with pytest.raises(InputError, match="no weights named 'nope'.*unet_tiny_f0"):
        build_kernel(["nope"], tmp_path / "k", manifest=manifest, kernel_id="me/k-k-k", probe=False)
    (manifest.parent / "unet_tiny_f0.pt").write_bytes(b"changed")
    with pytest.raises(ValueError, match="do not match"):
        build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/k-k-k",
                     probe=False)


def _layout(root: Path, layout: str, weights_file: Path, weight_name: str) -> Path:
    """A /kaggle/input stand-in holding competition, wheels and weights (copies)."""
    inp = root / "input"
    comp = inp / COMPETITION if layout == "old" else inp / "competitions" / COMPETITION
    wheels = inp / "cellseg-wheels" if layout == "old" else inp / "datasets" / "me" / "cellseg-wheels"
    weights = inp / "cellseg-weights" if layout == "old" else inp / "datasets" / "me" / "cellseg-weights"
    (comp / "test").mkdir(parents=True)
    (comp / "test" / "abc.png").write_bytes(b"png")
    (comp / "train.csv").write_text("id\n")
    wheels.mkdir(parents=True)
    (wheels / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(b"")
    (wheels / "faster_coco_eval-1.8.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    weights.mkdir(parents=True)
    (weights / weight_name).write_bytes(weights_file.read_bytes())
    # a decoy with the same name outside the weights dataset must not win
    (inp / "other").mkdir(exist_ok=True)
    (inp / "other" / weight_name).write_bytes(b"decoy")
    return inp


@pytest.mark.parametrize("layout", ["old", "new"])
def test_kernel_finds_inputs_in_both_layouts(manifest: Path, tmp_path: Path, layout: str) -> None:
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    inp = _layout(tmp_path / layout, layout, manifest.parent / "unet_tiny_f0.pt", "unet_tiny_f0.pt")
    k = _load_code(b.code_file)
    comp = k.find_competition_dir(inp, COMPETITION)
    assert comp.name == COMPETITION and (comp / "test" / "abc.png").exists()
    wheels = k.find_wheels_dir(inp, "me/cellseg-wheels")
    assert wheels.name == "cellseg-wheels"
    assert [f.name for f in k.wheel_files(wheels)] == [
        "cellseg_kit-0.2.0-py3-none-any.whl", "faster_coco_eval-1.8.0-cp311-cp311-manylinux_2_28_x86_64.whl"]
    paths = k.find_weights(inp, b.embedded["weights"], "me/cellseg-weights")
    assert paths["unet_tiny_f0.pt"].parent.name == "cellseg-weights"
    k.verify_weights(paths, b.embedded["weights"])  # no exception: hashes match
    with pytest.raises(k.KernelError, match="no cellseg_kit-\\*.whl"):
        k.find_wheels_dir(tmp_path / "empty")


def _run_verify(code: Path, inp: Path, work: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "CELLSEG_KAGGLE_INPUT": str(inp),
           "CELLSEG_KAGGLE_WORKING": str(work)}
    return subprocess.run([sys.executable, "-I", str(code), "--verify-only"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_sha256_mismatch_stops_the_kernel(manifest: Path, tmp_path: Path) -> None:
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    good = manifest.parent / "unet_tiny_f0.pt"
    inp = _layout(tmp_path / "new", "new", good, "unet_tiny_f0.pt")
    ok = _run_verify(b.code_file, inp, tmp_path / "work")
    assert ok.returncode == 0, ok.stderr
    assert "weights verified: 1 file(s)" in ok.stdout

    tampered = inp / "datasets" / "me" / "cellseg-weights" / "unet_tiny_f0.pt"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    bad = _run_verify(b.code_file, inp, tmp_path / "work")
    assert bad.returncode == 3
    expected = b.embedded["weights"][0]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert str(tampered) in bad.stderr
    assert f"expected sha256 {expected}" in bad.stderr and f"actual {actual}" in bad.stderr

    tampered.unlink()
    (inp / "other" / "unet_tiny_f0.pt").unlink()
    missing = _run_verify(b.code_file, inp, tmp_path / "work")
    assert missing.returncode == 2 and "unet_tiny_f0.pt" in missing.stderr


def test_install_by_file_requires_cellseg_but_tolerates_other_wheels(manifest: Path,
                                                                    tmp_path: Path) -> None:
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    k = _load_code(b.code_file)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("cellseg_kit-0.2.0-py3-none-any.whl", "other_pkg-1.0-cp399-cp399-linux_x86_64.whl",
                 "segmentation_models_pytorch-0.6.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    calls = []

    def fake_run(cmd, step, code, broken=("other_pkg",)):
        calls.append(cmd)
        if "pip" in cmd and Path(cmd[-1]).name.split("-")[0] in broken:
            raise k.KernelError(f"{step} failed with exit code 1", code)

    k.run = fake_run
    assert k.install(wheels) == ["other_pkg-1.0-cp399-cp399-linux_x86_64.whl"]
    pip_calls = [c for c in calls if "pip" in c]
    # by file path, never by bare name, and never from an index or a --find-links folder
    assert [Path(c[-1]) for c in pip_calls] == [
        wheels / "cellseg_kit-0.2.0-py3-none-any.whl",
        wheels / "other_pkg-1.0-cp399-cp399-linux_x86_64.whl",
        wheels / "segmentation_models_pytorch-0.6.0-py3-none-any.whl"]
    assert all("--no-index" in c and "--no-deps" in c and "--find-links" not in c
               for c in pip_calls)
    assert "import cellseg" in " ".join(map(str, calls[-1]))
    k.run = lambda cmd, step, code: fake_run(cmd, step, code, broken=("cellseg_kit",))
    with pytest.raises(k.KernelError, match="pip install cellseg") as info:
        k.install(wheels)
    assert info.value.code == k.EXIT_INSTALL


def test_build_wheels_makes_a_pure_wheel_with_package_data(tmp_path: Path) -> None:
    """No download (packages=[]): the cellseg wheel alone, plus dataset-metadata.json."""
    import zipfile

    from cellseg.kaggle.wheels import build_wheels, pinned

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "wheels"
    out.mkdir()
    (out / "cellseg_kit-0.0.1-py3-none-any.whl").write_bytes(b"stale")
    asked = []

    def no_network(requests, img, log=print):  # what build-wheels would resolve, answered empty
        asked.append(list(requests))
        return {"install": []}

    bundled, left_out = build_wheels(out, dataset_id="me/cellseg-wheels", source=root,
                                     resolver=no_network, log=lambda s: None)
    wheels = sorted(out.glob("*.whl"))
    assert [w.name for w in wheels] == ["cellseg_kit-0.2.0-py3-none-any.whl"]  # stale one removed
    assert [p.file for p in bundled] == ["cellseg_kit-0.2.0-py3-none-any.whl"]
    # only what the image lacks is resolved; faster-coco-eval (scoring only) never is
    assert [[r.split("==")[0] for r in a] for a in asked] == [["segmentation-models-pytorch"]]
    assert "faster-coco-eval" in {p.name for p in left_out}
    assert (out / "bundle.json").is_file()
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "cellseg/kaggle/templates/kernel_main.py" in names
    assert any(n.startswith("cellseg/kaggle/images/kaggle-gpu-") and n.endswith(".json")
               for n in names)
    assert "cellseg/configs/infer_default.yaml" in names
    assert not any(n.startswith("tests/") for n in names)
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "me/cellseg-wheels" and meta["licenses"]
    assert pinned(["numpy", "not-a-real-pkg-xyz", "timm>=1"])[1:] == ["not-a-real-pkg-xyz", "timm>=1"]
    assert pinned(["numpy"])[0].startswith("numpy==")


# ---------------------------------------------------------------- exit-code contract


def _kernel_with_inputs(manifest: Path, tmp_path: Path, monkeypatch):
    """The generated kernel as a module, with a Kaggle-like input tree of 3 test images."""
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    inp = _layout(tmp_path / "in", "new", manifest.parent / "unet_tiny_f0.pt", "unet_tiny_f0.pt")
    test = inp / "competitions" / COMPETITION / "test"
    for name in ("abc.png", "def.png", "ghi.png"):
        (test / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    monkeypatch.setenv("CELLSEG_KAGGLE_INPUT", str(inp))
    monkeypatch.setenv("CELLSEG_KAGGLE_WORKING", str(tmp_path / "working"))
    k = _load_code(b.code_file)
    k.header = lambda wheels_dir=None: {}
    k.install = lambda wheels, files=None: []
    k.check_installed_version = lambda expected: None
    k.run = lambda cmd, step, code: None  # cellseg validate: passes
    return k, tmp_path / "working"


def _fake_predict(ids, failures, rc):
    def run_predict(cmd):
        out = Path(cmd[cmd.index("--out") + 1])
        out.write_text("id,predicted\n" + "".join(f"{i},1 3\n" for i in ids))
        return rc, failures
    return run_predict


def test_kernel_with_failed_images_but_a_valid_submission_exits_0(
        manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    k, work = _kernel_with_inputs(manifest, tmp_path, monkeypatch)
    failed = [{"id": "def", "reason": "cannot read def.png: broken PNG"}]
    k.run_predict = _fake_predict(["abc", "def", "ghi"], failed, rc=1)  # predict exits 1
    assert k.main([]) == 0
    out = capsys.readouterr()
    assert "FAILED IMAGES: 1 of 3" in out.out and "def: cannot read def.png" in out.out
    assert out.out.rstrip().endswith("!" * 78)  # the summary ends the log
    report = json.loads((work / "failures.json").read_text())
    assert report == {"images": 3, "failed": failed}


def test_kernel_without_failures_writes_an_empty_failures_json(
        manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    k, work = _kernel_with_inputs(manifest, tmp_path, monkeypatch)
    k.run_predict = _fake_predict(["abc", "def", "ghi"], [], rc=0)
    assert k.main([]) == 0
    assert json.loads((work / "failures.json").read_text())["failed"] == []
    assert "FAILED IMAGES" not in capsys.readouterr().out


def test_kernel_exits_non_zero_only_without_a_valid_submission(
        manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    k, work = _kernel_with_inputs(manifest, tmp_path, monkeypatch)
    k.run_predict = lambda cmd: (1, [])  # predict crashed before writing anything
    assert k.main([]) == k.EXIT_PREDICT
    assert "KERNEL FAILED (exit 5)" in capsys.readouterr().err
    assert "without writing" in json.loads((work / "failures.json").read_text())["systemic"]
    k.run_predict = _fake_predict(["abc", "ghi"], [], rc=0)  # an image missing from the CSV
    assert k.main([]) == k.EXIT_INVALID

    def invalid(cmd, step, code):
        raise k.KernelError(f"{step} failed with exit code 1", code)

    k.run_predict = _fake_predict(["abc", "def", "ghi"], [], rc=0)
    k.run = invalid  # cellseg validate refuses the file
    assert k.main([]) == k.EXIT_INVALID


def test_run_predict_collects_per_image_failures(manifest: Path, tmp_path: Path, capsys) -> None:
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    k = _load_code(b.code_file)
    script = ("import sys\n"
              "sys.stderr.write('cellseg predict: cannot read bad1 (/x/bad1.png): cannot decode\\n')\n"
              "sys.stderr.write('cellseg predict: prediction failed for bad2: RuntimeError: oom\\n')\n"
              "sys.stderr.write('cellseg predict: 2 image(s) failed: bad1, bad2\\n')\n"
              "sys.exit(1)\n")
    rc, failures = k.run_predict([sys.executable, "-c", script])
    assert rc == 1
    assert failures == [{"id": "bad1", "reason": "cannot read /x/bad1.png: cannot decode"},
                        {"id": "bad2", "reason": "prediction failed: RuntimeError: oom"}]
    assert "2 image(s) failed" in capsys.readouterr().err  # streamed into the log as well


def test_header_names_python_device_and_versions(manifest: Path, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("CELLSEG_KAGGLE_WORKING", str(tmp_path / "working"))
    monkeypatch.setenv("CELLSEG_KAGGLE_INPUT", str(tmp_path / "input"))
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    k = _load_code(b.code_file)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "cellseg_kit-9.9.9-py3-none-any.whl").write_bytes(b"")
    k.header(wheels)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"python {sys.version.split()[0]} ")
    assert lines[1].startswith("device cpu") or lines[1].startswith("device cuda (")
    names = [line.split()[0] for line in lines[2:8]]
    assert names == ["torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy",
                     "cellseg-kit"]
    assert "(bundled wheel 9.9.9 to install)" in lines[7]


@pytest.mark.parametrize("failed_ids,reason,expected", [
    (["abc", "def", "ghi"], "cannot read", "every test image failed"),
    (["def", "ghi"], "cannot read", "more than the allowed share"),
    (["abc"], "prediction failed: RuntimeError: CUDA error", "first test image's forward pass"),
])
def test_systemic_failures_exit_non_zero_with_failures_json(
        manifest: Path, tmp_path: Path, monkeypatch, capsys, failed_ids, reason, expected) -> None:
    """A submission of placeholders is scored near 0 and costs a submission: exit 8 instead."""
    k, work = _kernel_with_inputs(manifest, tmp_path, monkeypatch)
    failed = [{"id": i, "reason": f"{reason} {i}.png"} for i in failed_ids]
    k.run_predict = _fake_predict(["abc", "def", "ghi"], failed, rc=1)
    assert k.main([]) == k.EXIT_SYSTEMIC == 8
    out = capsys.readouterr()
    assert expected in out.out and "SYSTEMIC" in out.out and "KERNEL FAILED (exit 8)" in out.err
    report = json.loads((work / "failures.json").read_text())
    assert report["failed"] == failed and expected in report["systemic"]


def test_a_few_failed_images_keep_exit_0_and_the_share_is_configurable(
        manifest: Path, tmp_path: Path, monkeypatch) -> None:
    k, work = _kernel_with_inputs(manifest, tmp_path, monkeypatch)
    one = [{"id": "def", "reason": "prediction failed: RuntimeError: oom"}]  # not the first image
    k.run_predict = _fake_predict(["abc", "def", "ghi"], one, rc=1)
    assert k.main([]) == 0
    assert "systemic" not in json.loads((work / "failures.json").read_text())
    k.EMBEDDED["max_failed_share"] = 0.2  # 1 of 3 is now too many
    assert k.main([]) == k.EXIT_SYSTEMIC
    assert k.systemic_reason([], ["a"], 0.5) is None and k.systemic_reason(one, [], 0.5) is None


def _wheel_layout(tmp_path: Path, manifest: Path, content: bytes):
    """A kernel built with a wheels folder, and a Kaggle input tree holding those wheels."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(content)
    (wheels / "segmentation_models_pytorch-0.5.0-py3-none-any.whl").write_bytes(b"smp")
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     wheels_dir=wheels, probe=False)
    inp = _layout(tmp_path / "in", "new", manifest.parent / "unet_tiny_f0.pt", "unet_tiny_f0.pt")
    dest = inp / "datasets" / "me" / "cellseg-wheels"
    for f in wheels.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return b, inp, dest


def test_swapped_wheel_stops_the_kernel(manifest: Path, tmp_path: Path) -> None:
    b, inp, dest = _wheel_layout(tmp_path, manifest, b"the wheel that was built and rehearsed")
    assert [w["file"] for w in b.embedded["wheels"]] == [
        "cellseg_kit-0.2.0-py3-none-any.whl", "segmentation_models_pytorch-0.5.0-py3-none-any.whl"]
    assert b.embedded["wheels"][0]["sha256"] == hashlib.sha256(
        b"the wheel that was built and rehearsed").hexdigest()
    ok = _run_verify(b.code_file, inp, tmp_path / "work")
    assert ok.returncode == 0 and "wheels verified: 2 file(s)" in ok.stdout, ok.stderr
    # a wheels dataset left at another build: same file name, other content
    (dest / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(b"an older build of cellseg 0.1.0")
    bad = _run_verify(b.code_file, inp, tmp_path / "work")
    assert bad.returncode == 3, bad.stderr
    assert "wheels do not match" in bad.stderr and "cellseg_kit-0.2.0-py3-none-any.whl" in bad.stderr
    (dest / "segmentation_models_pytorch-0.5.0-py3-none-any.whl").unlink()
    bad = _run_verify(b.code_file, inp, tmp_path / "work")
    assert bad.returncode == 3 and "segmentation_models_pytorch-0.5.0-py3-none-any.whl: missing" in bad.stderr
    # the kernel installs exactly the embedded files, cellseg first; extra files are ignored
    (dest / "segmentation_models_pytorch-0.5.0-py3-none-any.whl").write_bytes(b"smp")
    (dest / "cellseg_kit-0.2.0-py3-none-any.whl").write_bytes(b"the wheel that was built and rehearsed")
    (dest / "zz_extra-1.0-py3-none-any.whl").write_bytes(b"not built by us")
    k = _load_code(b.code_file)
    assert [p.name for p in k.verify_wheels(dest, b.embedded["wheels"])] == [
        "cellseg_kit-0.2.0-py3-none-any.whl", "segmentation_models_pytorch-0.5.0-py3-none-any.whl"]


def test_installed_cellseg_must_be_the_built_version(manifest: Path, tmp_path: Path, capsys) -> None:
    from cellseg import __version__

    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    assert b.embedded["cellseg_version"] == __version__
    k = _load_code(b.code_file)
    k.check_installed_version(__version__)  # the cellseg importable here: no exception
    with pytest.raises(k.KernelError, match=f"installed cellseg is {__version__}, but this kernel "
                                            "was built with 9.9.9") as info:
        k.check_installed_version("9.9.9")
    assert info.value.code == k.EXIT_INSTALL


def test_accelerator_is_requested_with_machine_shape(manifest: Path, tmp_path: Path, capsys) -> None:
    assert kernel_metadata("me/k-k-k", datasets=[])["machine_shape"] == "NvidiaTeslaT4"
    cpu = kernel_metadata("me/k-k-k", datasets=[], accelerator="none")
    assert cpu["enable_gpu"] is False and "machine_shape" not in cpu
    out = tmp_path / "kernel"
    assert main(["kaggle", "build-kernel", "--weights", "unet_tiny_f0", "--out", str(out),
                 "--manifest", str(manifest), "--kernel-id", "me/cellseg-infer", "--no-probe",
                 "--accelerator", "p100"]) == 0
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "NvidiaTeslaP100" and meta["enable_gpu"] is True
    assert "P100 is retired" in capsys.readouterr().err


def test_kernel_records_its_image_and_import_makes_a_description(
        manifest: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from cellseg.kaggle.image import find_image, load_image
    from cellseg.kaggle.image_report import image_drift, import_report

    monkeypatch.setenv("CELLSEG_KAGGLE_WORKING", str(tmp_path / "working"))
    monkeypatch.setenv("CELLSEG_KAGGLE_INPUT", str(tmp_path / "input"))
    (tmp_path / "input" / "competitions" / COMPETITION / "test").mkdir(parents=True)
    b = build_kernel(["unet_tiny_f0"], tmp_path / "k", manifest=manifest, kernel_id="me/cellseg-infer",
                     probe=False)
    k = _load_code(b.code_file)
    k.header(None)
    rec = json.loads((tmp_path / "working" / "kaggle_image.json").read_text())
    assert rec["python"] == sys.version.split()[0]
    assert rec["platform_tag"].startswith(("manylinux_", "linux_"))
    import numpy
    import torch

    assert rec["distributions"]["numpy"] == numpy.__version__
    assert rec["torch"]["version"] == torch.__version__ and "cudnn" in rec["torch"]
    assert {"dir": "competitions/" + COMPETITION, "files": 0} in rec["input_layout"]
    assert rec["kernel"]["built_for_image"] == load_image().label
    # --import: a dated description in the kit's format, which --image accepts
    assert main(["kaggle", "image", "--import", str(tmp_path / "working"),
                 "--out", str(tmp_path / "desc.json")]) == 0
    img = find_image(str(tmp_path / "desc.json"))
    assert img.python == rec["python"] and img.as_of == rec["recorded_at"][:10]
    assert img.packages["numpy"] == numpy.__version__
    assert img.packages["torch"] == torch.__version__.split("+")[0]
    assert img.confidence["torch"].startswith("confirmed")
    path, same = import_report(tmp_path / "working" / "kaggle_image.json", out=tmp_path / "d2.json")
    assert same.packages == img.packages
    # the run's image against the one the kernel was built for
    drift = image_drift(tmp_path / "working", b.embedded["image"])
    assert drift and "kaggle_image.json" not in drift[0]
    assert image_drift(tmp_path / "working", {"label": "x", "python": rec["python"],
                                              "packages": {"numpy": numpy.__version__}})[0] \
        .startswith("Kaggle's image matches x")
