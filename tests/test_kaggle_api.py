"""push / status / output / submit against a fake Kaggle API (no network, kaggle never imported),
plus the credential messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cellseg.cli import main
from cellseg.kaggle import api as kapi


class FakeApi:
    """Records every call; answers like kaggle 2.2.5 (objects with snake_case fields)."""

    def __init__(self, statuses=("queued", "running", "complete"), push_error=None,
                 submit_error=None, invalid=()):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.statuses = list(statuses)
        self.push_error, self.submit_error, self.invalid = push_error, submit_error, list(invalid)
        self.dataset_states: dict[str, str] = {}  # absent: "ready"; "404": unknown
        self.remaining_today = 3
        self.output_files: dict[str, str] = {}  # extra files the run "wrote"

    def dataset_status(self, dataset):
        self.calls.append(("dataset_status", (dataset,), {}))
        state = self.dataset_states.get(dataset, "ready")
        if state == "404":
            raise _HTTPError(404, "Not Found", "")
        return state

    def competition_get_submission_limits(self, competition_name):
        self.calls.append(("competition_get_submission_limits", (competition_name,), {}))
        return SimpleNamespace(num_today=5 - self.remaining_today, num_total=40,
                               num_allowed_now=self.remaining_today, limited_by_total=False)

    def kernels_push(self, folder, timeout=None, acc=None):
        self.calls.append(("kernels_push", (folder,), {"timeout": timeout}))
        meta = json.loads((Path(folder) / "kernel-metadata.json").read_text())
        assert (Path(folder) / meta["code_file"]).is_file()
        return SimpleNamespace(ref=f"/code/{meta['id']}", url=f"https://www.kaggle.com/code/{meta['id']}",
                               version_number=7, error=self.push_error, invalid_tags=[],
                               invalid_dataset_sources=self.invalid, invalid_competition_sources=[],
                               invalid_kernel_sources=[], invalid_model_sources=[])

    def kernels_status(self, kernel):
        self.calls.append(("kernels_status", (kernel,), {}))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(status=status, failure_message="boom" if status == "error" else None)

    def kernels_output(self, kernel, path, file_pattern=None, force=False, quiet=True, **kw):
        self.calls.append(("kernels_output", (kernel, path), {"force": force}))
        out = [Path(path) / "submission.csv", Path(path) / (kernel.split("/")[1] + ".log")]
        out[0].write_text("id,predicted\nabc,1 2\n")
        out[1].write_text("log\n")
        for name, text in self.output_files.items():
            (Path(path) / name).write_text(text)
            out.append(Path(path) / name)
        return [str(p) for p in out], None

    def competition_submit_code(self, file_name, message, competition=None, kernel=None,
                                kernel_version=None, quiet=False):
        self.calls.append(("competition_submit_code", (file_name, message, competition, kernel,
                                                       kernel_version), {}))
        if self.submit_error:
            raise RuntimeError(self.submit_error)
        return SimpleNamespace(message="Successfully submitted", ref=123)


@pytest.fixture()
def kernel_dir(tmp_path: Path) -> Path:
    d = tmp_path / "kernel"
    d.mkdir()
    (d / "kernel-metadata.json").write_text(json.dumps({
        "id": "me/cellseg-infer", "title": "cellseg infer", "code_file": "cellseg_infer.py",
        "dataset_sources": ["me/cellseg-wheels", "me/cellseg-weights"],
        "competition_sources": ["sartorius-cell-instance-segmentation"]}))
    (d / "cellseg_infer.py").write_text("print('hi')\n")
    return d


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kapi, "get_api", lambda api_=None: api)
    return api


def test_push_waits_downloads_and_reports(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    rc = main(["kaggle", "push", str(kernel_dir), "--poll", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    names = [c[0] for c in fake.calls]
    assert names == ["dataset_status", "dataset_status", "competition_get_submission_limits",
                     "kernels_push", "kernels_status", "kernels_status", "kernels_status",
                     "kernels_output"]
    assert fake.calls[3][1] == (str(kernel_dir),)
    # the exact version pushed is polled and downloaded ("/code/" prefix of ref stripped)
    assert fake.calls[4][1] == ("me/cellseg-infer/7",)
    assert fake.calls[-1][1][0] == "me/cellseg-infer/7"
    assert "version 7" in out and "submissions left today for sartorius" in out
    assert (kernel_dir / "output" / "submission.csv").is_file()
    assert (kernel_dir / "output" / "cellseg-infer.log").is_file()
    assert "cellseg kaggle submit me/cellseg-infer --version 7" in out


def test_refused_source_is_an_error_before_waiting(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    fake.invalid = ["me/typo-dataset"]
    assert main(["kaggle", "push", str(kernel_dir), "--poll", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "me/typo-dataset" in err
    assert "kernels_status" not in [c[0] for c in fake.calls]


@pytest.mark.parametrize("state,words", [("deleted", "is deleted on Kaggle"),
                                         ("error", "ended in status error"),
                                         ("404", "unknown or not visible")])
def test_bad_dataset_source_stops_before_the_push(fake: FakeApi, kernel_dir: Path, capsys,
                                                   state: str, words: str) -> None:
    fake.dataset_states["me/cellseg-weights"] = state
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "me/cellseg-weights" in err and words in err
    assert "kernels_push" not in [c[0] for c in fake.calls]


def test_wait_dataset_ends_on_deleted() -> None:
    api = SimpleNamespace(dataset_status=lambda d: "deleted")
    with pytest.raises(kapi.KaggleError, match="is deleted on Kaggle"):
        kapi.wait_dataset(api, "me/cellseg-wheels", poll_s=0, log=lambda m: None)


def test_no_submissions_left_stops_the_push_unless_forced(fake: FakeApi, kernel_dir: Path,
                                                          capsys) -> None:
    fake.remaining_today = 0
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    err = capsys.readouterr().err
    assert "accepts no more submissions from you today" in err and "--force" in err
    assert "kernels_push" not in [c[0] for c in fake.calls]
    assert main(["kaggle", "push", str(kernel_dir), "--force", "--poll", "0"]) == 0
    assert "kernels_push" in [c[0] for c in fake.calls]
    assert "--force: pushing anyway" in capsys.readouterr().err


def test_a_client_without_submission_limits_is_not_stopped(kernel_dir: Path, capsys,
                                                            monkeypatch) -> None:
    class OldApi(FakeApi):
        competition_get_submission_limits = None  # kaggle < 2.2.5

    api = OldApi()
    monkeypatch.setattr(kapi, "get_api", lambda api_=None: api)
    assert kapi.submission_allowance(api).remaining_today is None
    assert main(["kaggle", "push", str(kernel_dir), "--poll", "0"]) == 0
    assert "unknown (this kaggle client cannot tell" in capsys.readouterr().out


def test_push_reports_failures_and_image_drift_before_the_submit_line(
        fake: FakeApi, kernel_dir: Path, capsys) -> None:
    from cellseg.kaggle.kernel_template import render

    img = {"label": "kaggle-2026-10-06", "python": "3.13.15",
           "packages": {"torch": "2.11.0", "numpy": "2.1.3"}}
    (kernel_dir / "cellseg_infer.py").write_text(render({"image": img}))
    fake.output_files = {
        "failures.json": json.dumps({"images": 4, "failed": [
            {"id": "abc", "reason": "cannot read abc.png: broken PNG"}]}),
        "kaggle_image.json": json.dumps({
            "python": "3.13.15", "platform_tag": "manylinux_2_35_x86_64",
            "recorded_at": "2026-12-01T10:00:00Z",
            "distributions": {"torch": "2.12.0+cu128", "numpy": "2.1.3"}})}
    assert main(["kaggle", "push", str(kernel_dir), "--poll", "0"]) == 0
    cap = capsys.readouterr()
    assert "1 of 4 test image(s) failed" in cap.err and "abc: cannot read abc.png" in cap.err
    assert "differs from kaggle-2026-10-06" in cap.out and "torch 2.11.0 -> 2.12.0" in cap.out
    assert "numpy" not in cap.out.split("differs")[1].split("\n")[0]  # equal versions not listed
    assert "cellseg kaggle image --import" in cap.out
    assert cap.out.rstrip().splitlines()[-1].startswith("submit with:")


def test_push_of_a_stopped_kernel_reports_why(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    fake.statuses = ["running", "error"]
    fake.output_files = {"failures.json": json.dumps({
        "images": 3, "failed": [], "systemic": "probe FAILED: 0 instances (expected 12)",
        "probe": {"ok": False, "message": "probe FAILED: 0 instances (expected 12, allowed +-1)"}})}
    assert main(["kaggle", "push", str(kernel_dir), "--poll", "0"]) == 1
    err = capsys.readouterr().err
    assert "KERNEL STOPPED: probe FAILED" in err and "submit with" not in err


def test_push_reports_kernel_error(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    fake.statuses = ["running", "error"]
    assert main(["kaggle", "push", str(kernel_dir), "--poll", "0"]) == 1
    captured = capsys.readouterr()
    assert "error" in captured.err and "boom" in captured.err
    assert [c[0] for c in fake.calls][-1] == "kernels_output"  # the log is fetched even on error


def test_push_error_stops_before_polling(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    fake.push_error = "Notebook not found"
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    cap = capsys.readouterr()
    assert "push failed: Notebook not found" in cap.out
    assert "Notebook not found" in cap.err and cap.err.count("\n") == 1
    assert [c[0] for c in fake.calls][-1] == "kernels_push"


def test_versioned_kernel_refs() -> None:
    assert kapi.kernel_ref("me/cellseg-infer/3") == "me/cellseg-infer/3"
    assert kapi.kernel_ref("https://www.kaggle.com/code/me/cellseg-infer") == "me/cellseg-infer"
    assert kapi.split_version("me/cellseg-infer/12") == ("me/cellseg-infer", 12)
    assert kapi.split_version("me/cellseg-infer") == ("me/cellseg-infer", None)
    for bad in ("me", "me/k/x", "me/k/0", "a/b/c/d"):
        with pytest.raises(ValueError, match="owner/slug"):
            kapi.kernel_ref(bad)


def test_status_output_submit(fake: FakeApi, tmp_path: Path, capsys) -> None:
    fake.statuses = ["complete"]
    assert main(["kaggle", "status", "me/cellseg-infer"]) == 0
    assert "me/cellseg-infer: complete" in capsys.readouterr().out
    assert main(["kaggle", "output", "me/cellseg-infer", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "submission.csv").is_file()
    assert main(["kaggle", "submit", "https://www.kaggle.com/code/me/cellseg-infer",
                 "--version", "7", "--message", "try 1"]) == 0
    assert fake.calls[-1] == ("competition_submit_code",
                              ("submission.csv", "try 1", "sartorius-cell-instance-segmentation",
                               "me/cellseg-infer", 7), {})
    assert "Successfully submitted" in capsys.readouterr().out
    assert main(["kaggle", "status", "me/cellseg-infer/7"]) == 0
    assert fake.calls[-1] == ("kernels_status", ("me/cellseg-infer/7",), {})
    assert main(["kaggle", "submit", "me/cellseg-infer/8", "--message", "v8"]) == 0
    assert fake.calls[-1][1][3:] == ("me/cellseg-infer", 8)
    assert main(["kaggle", "submit", "me/cellseg-infer"]) == 2
    assert "no kernel version" in capsys.readouterr().err


def test_submit_failure_prints_the_manual_url(fake: FakeApi, capsys) -> None:
    fake.submit_error = "403 Forbidden"
    assert main(["kaggle", "submit", "me/cellseg-infer", "--version", "2"]) == 2
    err = capsys.readouterr().err
    assert "403 Forbidden" in err and "https://www.kaggle.com/code/me/cellseg-infer" in err


def test_real_kagglesdk_objects_are_read() -> None:
    """The field names used above are the ones kagglesdk 0.1.x (kaggle 2.2.4) really has."""
    enums = pytest.importorskip("kagglesdk.kernels.types.kernels_enums")
    types = pytest.importorskip("kagglesdk.kernels.types.kernels_api_service")
    resp = types.ApiSaveKernelResponse()
    resp.ref, resp.url, resp.version_number = "/code/me/k-k-k", "https://x", 3
    resp.invalid_dataset_sources = ["me/missing"]
    api = SimpleNamespace(kernels_push=lambda folder, timeout=None: resp)
    r = kapi.push_kernel(api, "unused")
    assert (r.ref, r.version, r.error) == ("me/k-k-k", 3, None)
    assert r.invalid == {"dataset sources": ["me/missing"]}
    status = types.ApiGetKernelSessionStatusResponse()
    status.status = enums.KernelWorkerStatus.CANCEL_ACKNOWLEDGED
    api = SimpleNamespace(kernels_status=lambda k: status)
    assert kapi.kernel_status(api, "me/k-k-k") == ("cancel_acknowledged", None)


def test_wait_kernel_times_out() -> None:
    api = FakeApi(statuses=["running"])
    with pytest.raises(kapi.KaggleError, match="still running.*cellseg kaggle status"):
        kapi.wait_kernel(api, "me/k-k-k", poll_s=0, timeout_s=0, log=lambda s: None)


def _no_credentials(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("KAGGLE_") or key == "XDG_CONFIG_HOME":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))


def test_missing_credentials_lists_sources_without_secrets(monkeypatch, tmp_path: Path) -> None:
    _no_credentials(monkeypatch, tmp_path)
    for mod in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, mod)
    # half-configured sources are not credentials, and their values must never be echoed
    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-key-value")
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "alice"}')
    with pytest.raises(kapi.CredentialsError) as info:
        kapi.get_api()
    msg = str(info.value)
    assert "\n" not in msg
    for source in ("KAGGLE_USERNAME/KAGGLE_KEY env", "KAGGLE_API_TOKEN env", "~/.kaggle/kaggle.json",
                   "~/.config/kaggle/kaggle.json", "KAGGLE_CONFIG_DIR",
                   "~/.kaggle/access_token.txt"):
        assert source in msg
    # the fix comes first, and it is today's token, not the legacy key pair
    assert msg.index("KAGGLE_API_TOKEN") < msg.index("KAGGLE_USERNAME")
    assert msg.startswith("no Kaggle credentials found: create an API token")
    assert "s3cr3t" not in msg and "alice" not in msg
    # the kaggle package was not imported to find this out
    assert "kaggle.api.kaggle_api_extended" not in sys.modules


def test_cli_without_credentials_exits_2(monkeypatch, tmp_path: Path, kernel_dir: Path, capsys) -> None:
    _no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Kaggle credentials found" in err
    assert str(tmp_path / "cfg" / "kaggle.json") in err


def test_credential_sources_detects_each(tmp_path: Path) -> None:
    usable = lambda env: [n for n, ok in kapi.credential_sources(env, tmp_path) if ok]  # noqa: E731
    assert usable({}) == []
    assert usable({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}) == ["KAGGLE_USERNAME/KAGGLE_KEY env"]
    assert usable({"KAGGLE_API_TOKEN": "t"}) == ["KAGGLE_API_TOKEN env"]
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "access_token.txt").write_text("   \n")
    assert usable({}) == []  # an empty token file is no credential
    (tmp_path / ".kaggle" / "access_token.txt").write_text("KGAT_abc\n")
    assert usable({}) == ["~/.kaggle/access_token.txt"]
    (tmp_path / ".kaggle" / "access_token.txt").unlink()
    cfg = tmp_path / ".config" / "kaggle"
    cfg.mkdir(parents=True)
    (cfg / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert usable({}) == ["~/.config/kaggle/kaggle.json"]


def test_get_api_imports_kaggle_quietly_with_legacy_key(monkeypatch, tmp_path: Path, capsys) -> None:
    """With KAGGLE_USERNAME/KAGGLE_KEY the real package authenticates offline (no request is made
    until a method is called); nothing it prints at import reaches our output."""
    pytest.importorskip("kagglesdk")
    _no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    client = kapi.get_api()
    assert type(client).__name__ == "KaggleApi"
    assert hasattr(client, "kernels_push") and hasattr(client, "competition_submit_code")
    assert capsys.readouterr().out == ""


def test_upload_dataset_versions_an_existing_folder(monkeypatch, tmp_path: Path, capsys) -> None:
    calls = []

    class Api:
        def dataset_status(self, dataset):
            calls.append(("status", dataset))
            return "ready"

        def dataset_create_version(self, folder, notes, quiet=False, dir_mode="skip"):
            calls.append(("version", folder, notes, dir_mode))
            return SimpleNamespace(url="https://kaggle.com/me/cellseg-wheels", error=None)

    monkeypatch.setattr(kapi, "get_api", lambda api_=None: Api())
    folder = tmp_path / "wheels"
    folder.mkdir()
    assert main(["kaggle", "upload-dataset", str(folder)]) == 2  # no metadata yet
    assert "dataset-metadata.json not found" in capsys.readouterr().err
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": "me/cellseg-wheels",
                                                              "title": "cellseg wheels"}))
    assert main(["kaggle", "upload-dataset", str(folder), "--notes", "v2", "--poll", "0"]) == 0
    assert calls == [("status", "me/cellseg-wheels"), ("version", str(folder), "v2", "zip"),
                     ("status", "me/cellseg-wheels")]


class _HTTPError(Exception):
    """Shaped like requests.HTTPError: a multi-line str() and a response object."""

    def __init__(self, code: int, reason: str, body: str) -> None:
        super().__init__(f"{code} Client Error: {reason} for url: https://www.kaggle.com/api/v1/x\n"
                         f"{body}")
        self.response = SimpleNamespace(status_code=code, reason=reason, text=body)


def test_push_http_error_ends_in_one_line(fake: FakeApi, kernel_dir: Path, capsys) -> None:
    def refuse(folder, timeout=None):
        raise _HTTPError(403, "Forbidden", '{"code": 403,\n "message": "Permission denied"}')

    fake.kernels_push = refuse
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pushing" in err and "HTTP 403 Forbidden" in err and "Permission denied" in err


def test_upload_http_error_ends_in_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    class Api:
        def dataset_status(self, dataset):
            raise _HTTPError(404, "Not Found", "")

        def dataset_create_new(self, folder, public=False, quiet=False, dir_mode="skip"):
            raise _HTTPError(400, "Bad Request", "Dataset slug must be at least 6 characters")

    monkeypatch.setattr(kapi, "get_api", lambda api_=None: Api())
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": "me/cellseg-wheels",
                                                              "title": "cellseg wheels"}))
    assert main(["kaggle", "upload-dataset", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 400 Bad Request: Dataset slug" in err


def test_names_are_checked_before_any_network_call(monkeypatch, tmp_path: Path,
                                                   kernel_dir: Path, capsys) -> None:
    def no_network(api_=None):
        raise AssertionError("a refused name must be reported before contacting Kaggle")

    monkeypatch.setattr(kapi, "get_api", no_network)
    meta = json.loads((kernel_dir / "kernel-metadata.json").read_text())
    (kernel_dir / "kernel-metadata.json").write_text(json.dumps(dict(meta, title="cell")))
    assert main(["kaggle", "push", str(kernel_dir)]) == 2
    assert "kernel title 'cell'" in capsys.readouterr().err
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": "me/wts", "title": "weights"}))
    assert main(["kaggle", "upload-dataset", str(folder)]) == 2
    assert "slug of 6-50 characters" in capsys.readouterr().err
    (folder / "dataset-metadata.json").write_text(json.dumps({"id": "me/weights", "title": "wts"}))
    assert main(["kaggle", "upload-dataset", str(folder)]) == 2
    assert "dataset title 'wts'" in capsys.readouterr().err


def test_submit_prints_the_kaggle_cli_equivalent(fake: FakeApi, capsys) -> None:
    assert main(["kaggle", "submit", "me/cellseg-infer", "--version", "4", "--message",
                 "fold 0 unet"]) == 0
    out = capsys.readouterr().out
    assert ("same as: kaggle competitions submit sartorius-cell-instance-segmentation "
            "-f submission.csv -k me/cellseg-infer -v 4 -m 'fold 0 unet'") in out
    assert kapi.submit_cli("/code/me/k-k-k", 2).endswith("-k me/k-k-k -v 2 -m 'cellseg me/k-k-k v2'")


def test_kaggle_extra_needs_the_first_version_with_every_call() -> None:
    """kernels_push(..., timeout=) and competition_submit_code arrived in kaggle 1.7.3."""
    import configparser

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    reqs = [Requirement(r) for r in cfg["options.extras_require"]["kaggle"].split() if r]
    [kaggle] = [r for r in reqs if r.name == "kaggle"]
    assert not kaggle.specifier.contains("1.7.2") and kaggle.specifier.contains("1.7.3")
    assert kaggle.specifier.contains("2.2.4") and "six" in {r.name for r in reqs}
