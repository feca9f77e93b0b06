"""The one place that talks to Kaggle: lazy ``kaggle`` import, credential checks, thin wrappers.

    from cellseg.kaggle.api import get_api, push_kernel, wait_kernel
    api = get_api()                      # raises CredentialsError with the sources tried
    result = push_kernel(api, "kernels/cellseg-infer")
    status = wait_kernel(api, result.ref)

``import kaggle`` authenticates at import time (kaggle 2.x prints a login help, may call
``exit(1)`` and, with ``KAGGLE_API_TOKEN``, calls the network), and its class body creates a config
folder. So it is imported only inside :func:`get_api`, with stdout captured and SystemExit caught.
Every other function takes the API object as an argument: tests pass a fake that records calls.

Field names follow kaggle 2.2.4 / kagglesdk: ``kernels_push`` returns ``ApiSaveKernelResponse``
(``ref``, ``url``, ``version_number``, ``error``, ``invalid_dataset_sources``,
``invalid_competition_sources``, ``invalid_kernel_sources``, ``invalid_model_sources``,
``invalid_tags``); ``kernels_status`` returns ``status`` (a ``KernelWorkerStatus`` enum: QUEUED,
RUNNING, COMPLETE, ERROR, CANCEL_REQUESTED, CANCEL_ACKNOWLEDGED, NEW_SCRIPT) and
``failure_message``; ``competition_submit_code(file_name, message, competition, kernel,
kernel_version)`` returns ``message`` and ``ref``. kaggle 2.2.5 adds ``owner/slug/N`` kernel refs
(``kernels_status``/``kernels_output`` of one version), ``kernels_push(folder, timeout, acc)``
(``acc`` overrides the metadata's accelerator) and
``competition_get_submission_limits(competition)`` (``num_today``, ``num_total``,
``num_allowed_now``, ``limited_by_total``); an older client lacks it, and the check is skipped.

Errors: :class:`CredentialsError` and :class:`KaggleError` are ``UserError``s, so the CLI's one
error boundary (``cellseg.cli``) prints them as one line and exits 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from cellseg.errors import UserError

COMPETITION = "sartorius-cell-instance-segmentation"
TERMINAL_KERNEL_STATES = ("complete", "error", "cancel_acknowledged", "cancel_requested")
# dataset statuses after which waiting is pointless (kagglesdk DatasetStatus + what the API answers)
DATASET_FAILED_STATES = ("error", "failed", "deleted", "cancelled", "canceled", "blocked")


class CredentialsError(UserError, RuntimeError):
    """No usable Kaggle credentials. The message lists the sources tried, never their values."""


class KaggleError(UserError, RuntimeError):
    """Kaggle answered with an error (push, dataset upload, submission), or a wait timed out."""


# ---------------------------------------------------------------- credentials


def credential_sources(env: Mapping[str, str] | None = None,
                       home: str | os.PathLike | None = None) -> list[tuple[str, bool]]:
    """Every place kaggle 2.x reads credentials from, as ``(description, usable)``.

    Only names and paths are returned, never values. A kaggle.json counts as usable when it is
    JSON with non-empty "username" and "key".
    """
    env = os.environ if env is None else env
    home = Path(home if home is not None else env.get("HOME") or Path.home())

    def json_ok(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and bool(data.get("username")) and bool(data.get("key"))

    def file_ok(path: Path) -> bool:
        try:
            return bool(path.read_text().strip())
        except OSError:
            return False

    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    # kaggle's own order: the API token first (value, or a path to a file holding it)
    sources = [
        ("KAGGLE_API_TOKEN env", bool(env.get("KAGGLE_API_TOKEN"))),
        ("~/.kaggle/access_token", file_ok(home / ".kaggle" / "access_token")),
        ("~/.kaggle/access_token.txt", file_ok(home / ".kaggle" / "access_token.txt")),
        ("KAGGLE_USERNAME/KAGGLE_KEY env", bool(env.get("KAGGLE_USERNAME")) and bool(env.get("KAGGLE_KEY"))),
    ]
    if env.get("KAGGLE_CONFIG_DIR"):
        cfg = Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
        sources.append((f"$KAGGLE_CONFIG_DIR/kaggle.json ({cfg})", json_ok(cfg)))
    else:
        sources.append(("$KAGGLE_CONFIG_DIR (unset)", False))
    sources += [
        ("~/.kaggle/kaggle.json", json_ok(home / ".kaggle" / "kaggle.json")),
        (f"{'$XDG_CONFIG_HOME' if env.get('XDG_CONFIG_HOME') else '~/.config'}/kaggle/kaggle.json",
         json_ok(xdg / "kaggle" / "kaggle.json")),
        ("~/.kaggle/credentials.json (kaggle auth login)", (home / ".kaggle" / "credentials.json").is_file()),
    ]
    return sources


def missing_credentials_message(env: Mapping[str, str] | None = None,
                                home: str | os.PathLike | None = None) -> str:
    """One line naming every credential source tried (no values)."""
    tried = ", ".join(name for name, _ in credential_sources(env, home))
    return ("no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api "
            "and export KAGGLE_API_TOKEN=<token> (or save it in ~/.kaggle/access_token.txt; legacy "
            f"KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json also work); tried: {tried}")


def get_api(api: Any = None) -> Any:
    """An authenticated ``KaggleApi`` (or ``api`` unchanged when given: tests pass fakes).

    Raises CredentialsError (one line, sources tried, no secrets) when no source holds
    credentials or Kaggle rejects them, and UserError when the package is not installed.
    """
    if api is not None:
        return api
    usable = [name for name, ok in credential_sources() if ok]
    if not usable:
        raise CredentialsError(missing_credentials_message())
    captured = io.StringIO()
    try:
        # kaggle/__init__.py authenticates on import and prints a help text when it cannot;
        # keep that out of our output and turn exit(1) into an error we can report.
        with contextlib.redirect_stdout(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            client = KaggleApi()
            client.authenticate()
    except ImportError as exc:
        raise UserError(f"the kaggle package is not installed ({exc})",
                        fix="pip install 'cellseg[kaggle]' (kaggle>=1.7.3 and six)") from exc
    except SystemExit as exc:
        raise CredentialsError(f"Kaggle rejected the credentials from {', '.join(usable)}; check "
                               "them at https://www.kaggle.com/settings/api") from exc
    return client


# ---------------------------------------------------------------- helpers


def _field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` for kagglesdk objects (snake_case) and dicts, with the camelCase fallback."""
    if obj is None:
        return default
    camel = name.split("_")[0] + "".join(w.title() for w in name.split("_")[1:])
    for key in (name, camel):
        if isinstance(obj, Mapping):
            if key in obj:
                return obj[key]
        elif hasattr(obj, key):
            return getattr(obj, key)
    return default


def error_line(exc: BaseException) -> str:
    """One line for an exception from the kaggle package: ``HTTP 403 Forbidden: <body start>``
    for requests' HTTPError (its str() spans lines and repeats the URL), else the first line."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if code is not None:
        reason = getattr(response, "reason", "") or ""
        try:
            body = " ".join(str(getattr(response, "text", "") or "").split())[:200]
        except Exception:  # noqa: BLE001 - a body we cannot read adds nothing
            body = ""
        return f"HTTP {code} {reason}".strip() + (f": {body}" if body else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def status_name(status: Any) -> str:
    """``KernelWorkerStatus.COMPLETE`` / "complete" / "KernelWorkerStatus.COMPLETE" -> "complete"."""
    name = getattr(status, "name", None) or str(status)
    return name.rsplit(".", 1)[-1].strip().lower()


# ---------------------------------------------------------------- kernels


@dataclass
class PushResult:
    """What ``kernels_push`` answered. ``invalid`` maps source kind -> refused sources."""

    ref: str | None
    url: str | None
    version: int | None
    error: str | None
    invalid: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = []
        if self.error:
            lines.append(f"push failed: {self.error}")
        else:
            lines.append(f"pushed {self.ref} version {self.version}: {self.url}")
        for kind, refs in self.invalid.items():
            lines.append(f"Kaggle refused these {kind} (the kernel will not see them): "
                         f"{', '.join(refs)}")
        return "\n".join(lines)

    @property
    def versioned_ref(self) -> str | None:
        """``owner/slug/N``: the exact version pushed (what status and output are asked about)."""
        if not self.ref:
            return None
        return f"{self.ref}/{self.version}" if self.version else self.ref

    def refusal(self) -> str | None:
        """One line naming the refused sources with the likely fix, or None."""
        if not self.invalid:
            return None
        parts = [f"{kind}: {', '.join(refs)}" for kind, refs in self.invalid.items()]
        return ("Kaggle refused the kernel's sources (" + "; ".join(parts) + "): the run would fail "
                "without them; accept the competition's rules on its Kaggle page, check that each "
                "dataset exists and is visible to you, then push again")


def push_kernel(api: Any, folder: str | os.PathLike, *, timeout: int | None = None) -> PushResult:
    """Push the kernel in ``folder`` (kernel-metadata.json + its code_file)."""
    folder = Path(folder).resolve()
    try:
        resp = api.kernels_push(str(folder), timeout=str(timeout) if timeout else None)
    except (KaggleError, CredentialsError):
        raise
    except Exception as exc:  # noqa: BLE001 - HTTP errors from the kaggle package: one line
        raise KaggleError(f"pushing {folder} failed: {error_line(exc)}") from exc
    if resp is None:
        raise KaggleError(f"kernels_push({folder}) returned nothing (see the output above)")
    invalid = {}
    for kind in ("dataset_sources", "competition_sources", "kernel_sources", "model_sources", "tags"):
        refs = _field(resp, f"invalid_{kind}") or []
        if refs:
            invalid[kind.replace("_", " ")] = [str(r) for r in refs]
    ref = _field(resp, "ref") or None
    if not ref:
        meta = json.loads((Path(folder) / "kernel-metadata.json").read_text())
        ref = meta.get("id")
    try:
        ref = kernel_ref(ref)  # Kaggle answers "/code/owner/slug"; every other call wants owner/slug
    except ValueError:
        pass
    if isinstance(ref, str):
        ref = "/".join(ref.split("/")[:2])
    return PushResult(ref=ref, url=_field(resp, "url") or None,
                      version=_field(resp, "version_number"), error=_field(resp, "error") or None,
                      invalid=invalid)


def kernel_ref(ref: str) -> str:
    """``/code/owner/slug``, a kaggle.com URL or ``owner/slug/N`` -> ``owner/slug`` or
    ``owner/slug/N`` (kaggle 2.2.5 accepts a version number as the third part)."""
    from cellseg.errors import ConfigError

    ref = ref.strip().rstrip("/")
    for prefix in ("https://www.kaggle.com/", "http://www.kaggle.com/", "https://kaggle.com/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    parts = [p for p in ref.split("/") if p and p != "code"]
    if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0:
        return "/".join(parts)
    if len(parts) != 2:
        raise ConfigError(f"kernel {ref!r} must be owner/slug or owner/slug/VERSION",
                          fix="e.g. me/cellseg-infer/3")
    return "/".join(parts)


def split_version(ref: str) -> tuple[str, int | None]:
    """``owner/slug/N`` -> (``owner/slug``, N); ``owner/slug`` -> (``owner/slug``, None)."""
    ref = kernel_ref(ref)
    parts = ref.split("/")
    return "/".join(parts[:2]), (int(parts[2]) if len(parts) == 3 else None)


def kernel_status(api: Any, kernel: str) -> tuple[str, str | None]:
    """(status name in lower case, failure message or None)."""
    resp = api.kernels_status(kernel_ref(kernel))
    return status_name(_field(resp, "status")), _field(resp, "failure_message") or None


def wait_kernel(api: Any, kernel: str, *, poll_s: float = 30.0, timeout_s: float = 9.5 * 3600,
                sleep: Callable[[float], None] = time.sleep,
                log: Callable[[str], None] = print) -> tuple[str, str | None]:
    """Poll ``kernels_status`` until a terminal state; returns (status, failure message).

    Raises KaggleError after ``timeout_s`` (Kaggle's own limit is 9 hours of run time).
    """
    start, last = time.monotonic(), None
    while True:
        status, message = kernel_status(api, kernel)
        if status != last:
            log(f"{kernel}: {status}" + (f" ({message})" if message else ""))
            last = status
        if status in TERMINAL_KERNEL_STATES:
            return status, message
        if time.monotonic() - start > timeout_s:
            raise KaggleError(f"{kernel} still {status} after {timeout_s:.0f} s",
                              fix=f"check later with `cellseg kaggle status {kernel}`")
        sleep(poll_s)


def download_output(api: Any, kernel: str, out_dir: str | os.PathLike) -> list[Path]:
    """Download the kernel's output files and log into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = api.kernels_output(kernel_ref(kernel), str(out_dir), force=True, quiet=True)
    files = result[0] if isinstance(result, tuple) else result
    return [Path(f) for f in files or []]


def submit_cli(kernel: str, version: int, *, competition: str = COMPETITION,
               file_name: str = "submission.csv", message: str | None = None) -> str:
    """The kaggle CLI command equivalent to :func:`submit_kernel` (printed for the record)."""
    import shlex

    kernel = split_version(kernel)[0]
    message = message or f"cellseg {kernel} v{version}"
    return (f"kaggle competitions submit {competition} -f {shlex.quote(file_name)} -k {kernel} "
            f"-v {int(version)} -m {shlex.quote(message)}")


def submit_url(kernel: str, competition: str = COMPETITION) -> str:
    """Where to submit by hand when the API cannot."""
    return f"https://www.kaggle.com/code/{split_version(kernel)[0]} (Submit to {competition} from its Output tab)"


def submit_kernel(api: Any, kernel: str, version: int, *, competition: str = COMPETITION,
                  file_name: str = "submission.csv", message: str | None = None) -> str:
    """Submit ``kernel`` version ``version`` to the code competition; returns Kaggle's message.

    Raises KaggleError (whose text includes the manual-submission URL) when the call fails.
    """
    kernel = split_version(kernel)[0]
    message = message or f"cellseg {kernel} v{version}"
    try:
        resp = api.competition_submit_code(file_name, message, competition, kernel, int(version))
    except Exception as exc:  # HTTP errors, unsupported API versions: fall back to the web UI
        raise KaggleError(f"competition_submit_code failed ({error_line(exc)}); submit by hand: "
                          f"{submit_url(kernel, competition)}") from exc
    text = _field(resp, "message") or ""
    ref = _field(resp, "ref")
    return f"submitted {kernel} v{version} to {competition}" + (f" (ref {ref})" if ref else "") + (
        f": {text}" if text else "")


# ---------------------------------------------------------------- datasets


def dataset_exists(api: Any, dataset: str) -> bool:
    """True when ``dataset_status`` answers (the dataset exists and is visible to us)."""
    try:
        api.dataset_status(dataset)
    except Exception:  # 404 comes back as requests.HTTPError
        return False
    return True


def upload_dataset(api: Any, folder: str | os.PathLike, dataset: str, *, notes: str,
                   new: bool | None = None, public: bool = False) -> str:
    """Create ``dataset`` from ``folder`` or add a version; returns the response's url/ref.

    ``dir_mode="zip"`` so sub-folders survive (the default "skip" silently drops them).
    ``new`` None: create when ``dataset_status`` says it does not exist yet.
    """
    folder = Path(folder).resolve()
    if new is None:
        new = not dataset_exists(api, dataset)
    try:
        if new:
            resp = api.dataset_create_new(str(folder), public=public, quiet=False, dir_mode="zip")
        else:
            resp = api.dataset_create_version(str(folder), notes, quiet=False, dir_mode="zip")
    except Exception as exc:  # noqa: BLE001 - HTTP errors from the kaggle package: one line
        raise KaggleError(f"uploading {folder} as {dataset} failed: {error_line(exc)}") from exc
    error = _field(resp, "error")
    if error:
        raise KaggleError(f"uploading {folder} as {dataset} failed: {error}")
    return str(_field(resp, "url") or _field(resp, "ref") or dataset)


def wait_dataset(api: Any, dataset: str, *, poll_s: float = 10.0, timeout_s: float = 1800.0,
                 sleep: Callable[[float], None] = time.sleep,
                 log: Callable[[str], None] = print) -> str:
    """Poll ``dataset_status`` until "ready" (returned) or "error" (KaggleError)."""
    start, last = time.monotonic(), None
    while True:
        status = status_name(api.dataset_status(dataset))
        if status != last:
            log(f"{dataset}: {status}")
            last = status
        if status == "ready":
            return status
        if status in DATASET_FAILED_STATES:
            raise KaggleError(dataset_state_message(dataset, status))
        if time.monotonic() - start > timeout_s:
            raise KaggleError(f"dataset {dataset} still {status} after {timeout_s:.0f} s",
                              fix="check it on kaggle.com and run the command again")
        sleep(poll_s)


def dataset_state_message(dataset: str, status: str) -> str:
    """One line for a dataset in a terminal state other than ready."""
    if status == "deleted":
        return (f"dataset {dataset} is deleted on Kaggle: upload it again (`cellseg kaggle "
                "upload-dataset FOLDER --mode new`) or point the kernel at another one")
    return (f"dataset {dataset} ended in status {status} on Kaggle: open it on kaggle.com for the "
            "reason, fix the folder and upload a new version")


def check_dataset_sources(api: Any, datasets: list[str]) -> None:
    """KaggleError (one line) when a dataset the kernel needs is unknown, not visible, or in a
    terminal state other than ready; a dataset still processing is fine (Kaggle waits for it)."""
    for ds in datasets:
        try:
            status = status_name(api.dataset_status(ds))
        except Exception as exc:  # noqa: BLE001 - 404/403 from the kaggle package
            raise KaggleError(f"dataset source {ds} is unknown or not visible to you "
                              f"({error_line(exc)})", fix="upload it with `cellseg kaggle "
                              "upload-dataset` or fix the id in kernel-metadata.json") from exc
        if status in DATASET_FAILED_STATES:
            raise KaggleError(dataset_state_message(ds, status))


@dataclass
class SubmissionAllowance:
    """What ``competition_get_submission_limits`` answered (None: the client cannot tell)."""

    remaining_today: int | None
    submitted_today: int | None = None
    limited_by_total: bool = False
    note: str = ""

    def line(self, competition: str = COMPETITION) -> str:
        if self.remaining_today is None:
            return f"submissions left today for {competition}: unknown ({self.note})"
        cap = " (lifetime cap reached)" if self.limited_by_total else ""
        return (f"submissions left today for {competition}: {self.remaining_today}{cap}"
                + (f" ({self.submitted_today} made today)" if self.submitted_today is not None else ""))


def submission_allowance(api: Any, competition: str = COMPETITION) -> SubmissionAllowance:
    """How many submissions the competition still accepts from us today.

    KaggleError when Kaggle says the competition is unknown or closed to us (HTTP 403/404: rules
    not accepted, or no longer accepting submissions); ``remaining_today`` None when the client
    has no ``competition_get_submission_limits`` (kaggle < 2.2.5) or another error occurred.
    """
    getter = getattr(api, "competition_get_submission_limits", None)
    if getter is None:
        return SubmissionAllowance(None, note="this kaggle client cannot tell; kaggle>=2.2.5 can")
    try:
        limits = getter(competition)
    except Exception as exc:  # noqa: BLE001 - HTTP errors from the kaggle package
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (403, 404):
            raise KaggleError(f"competition {competition} does not accept submissions from you "
                              f"({error_line(exc)})", fix="join it and accept its rules on "
                              f"https://www.kaggle.com/competitions/{competition}/rules, or pass "
                              "--force") from exc
        return SubmissionAllowance(None, note=f"the check failed: {error_line(exc)}")
    left = _field(limits, "num_allowed_now")
    return SubmissionAllowance(None if left is None else int(left),
                               submitted_today=_field(limits, "num_today"),
                               limited_by_total=bool(_field(limits, "limited_by_total", False)))
