"""`cellseg kaggle`: build, rehearse, push and submit offline Kaggle kernels.

    cellseg kaggle image                                      # the Kaggle image the kit targets
    cellseg kaggle image --list                               # every shipped description
    cellseg kaggle image --import kernels/build/cellseg-infer/output   # what a kernel ran on
    cellseg kaggle build-wheels --out kernels/build/wheels --dataset-id me/cellseg-wheels
    cellseg kaggle upload-dataset kernels/build/wheels        # create, or a new version
    cellseg kaggle build-kernel --weights unet_r34_fold0 --kernel-id me/cellseg-infer \\
        --wheels-dir kernels/build/wheels --out kernels/build/cellseg-infer
    cellseg kaggle rehearse kernels/build/cellseg-infer --data ../shared/data/sartorius   # --image kaggle
    cellseg kaggle push kernels/build/cellseg-infer          # push, wait, download output + log
    cellseg kaggle status me/cellseg-infer/3                 # owner/slug or owner/slug/VERSION
    cellseg kaggle output me/cellseg-infer --out kernels/build/cellseg-infer/output
    cellseg kaggle submit me/cellseg-infer --version 3
        # = kaggle competitions submit sartorius-cell-instance-segmentation -f submission.csv \
        #       -k me/cellseg-infer -v 3 -m "cellseg me/cellseg-infer v3"

Weights are uploaded with scripts/upload_weights.py (sha256-checked against the manifest).
Every path argument may be relative: it is resolved against the current directory first.
User mistakes and Kaggle's refusals are ``UserError``s: the CLI's one boundary prints one line and
exits 2. A push whose kernel failed, or whose output reports failed images, exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _image_args(sub)
    _build_kernel_args(sub)
    _dataset_args(sub)
    _rehearse_args(sub)
    _api_args(sub)


def _image_args(sub: argparse._SubParsersAction) -> None:
    """`cellseg kaggle image`: print, list or import a description of Kaggle's image."""
    p = sub.add_parser("image", help="print the description of Kaggle's image the kit targets")
    p.add_argument("--image", default="kaggle",
                   help="kaggle (the newest, default), kaggle-<date> (e.g. kaggle-2026-08-12) or "
                        "a description JSON path")
    p.add_argument("--file", help="same as --image PATH (kept for old scripts)")
    p.add_argument("--list", action="store_true", help="list the shipped descriptions")
    p.add_argument("--json", action="store_true", help="print the JSON file itself")
    p.add_argument("--build-env", action="store_true",
                   help="also build (or find) the cached rehearsal env for it")
    p.add_argument("--import", dest="import_from", metavar="OUTPUT_DIR",
                   help="write a new dated description from the kaggle_image.json a kernel run "
                        "wrote (its downloaded output folder or the file)")
    p.add_argument("--out", help="with --import: the JSON to write (default: "
                   "cellseg/kaggle/images/kaggle-gpu-<date>.json in this checkout)")


def _build_kernel_args(sub: argparse._SubParsersAction) -> None:
    """`cellseg kaggle build-kernel`: the kernel folder, its probe and failure policy."""
    p = sub.add_parser("build-kernel", help="write kernel-metadata.json + one self-contained code file")
    p.add_argument("--weights", nargs="+", required=True, metavar="NAME", help="manifest names")
    p.add_argument("--out", required=True, help="kernel folder to write")
    p.add_argument("--manifest", default="weights/manifest.yaml")
    p.add_argument("--kernel-id", help="owner/slug (default: $KAGGLE_USERNAME/cellseg-infer)")
    p.add_argument("--wheels-dataset", help="owner/slug (default: <owner>/cellseg-wheels)")
    p.add_argument("--weights-dataset", help="owner/slug (default: <owner>/cellseg-weights)")
    p.add_argument("--config", default=None,
                   help="inference config embedded in the kernel: YAML path or shipped name "
                        "(default: none embedded, predict uses the kit's defaults)")
    p.add_argument("--wheels-dir", help="local wheels folder, remembered for `rehearse`")
    p.add_argument("--predict-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `cellseg predict` in the kernel (repeatable)")
    p.add_argument("--accelerator", choices=("t4", "p100", "none"), default="t4",
                   help="machine_shape: t4 (NvidiaTeslaT4, default); p100 is retired and torch's "
                        "cu128 wheels do not run on it; none = CPU")
    p.add_argument("--cpu", action="store_true", help="same as --accelerator none")
    p.add_argument("--no-verify", action="store_true", help="skip the local sha256 check")
    p.add_argument("--image", default="kaggle",
                   help="the Kaggle image description the kernel is built for (kaggle = newest, "
                        "kaggle-<date>, or a JSON path); push compares it with what the run reports")
    p.add_argument("--probe-image", metavar="PATH[:Y,X,H,W]",
                   help="the probe: a crop of an image of yours (default: a synthetic 260x352 "
                        "image); the kernel must reproduce its instances before predicting")
    p.add_argument("--no-probe", action="store_true", help="ship no probe (not recommended)")
    p.add_argument("--max-failed-share", type=float, default=0.5,
                   help="the kernel exits non-zero when more than this share of test images "
                        "failed (default 0.5; always when all failed)")


def _dataset_args(sub: argparse._SubParsersAction) -> None:
    """`build-wheels` and `upload-dataset`: the wheels dataset and Kaggle datasets."""
    p = sub.add_parser("build-wheels", help="wheels dataset: cellseg + what Kaggle's image lacks")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset-id", help="owner/slug (default: $KAGGLE_USERNAME/cellseg-wheels)")
    p.add_argument("--packages", nargs="*", default=None,
                   help="extra packages the kernel needs beyond cellseg's requirements")
    p.add_argument("--source", default=".", help="cellseg source tree")
    p.add_argument("--image-file", "--image", dest="image_file",
                   help="Kaggle image: kaggle (the newest, default), kaggle-<date> or a "
                        "description JSON (see `cellseg kaggle image --list`)")
    p.add_argument("--no-pin", action="store_true", help="do not pin to the versions installed here")

    p = sub.add_parser("upload-dataset", help="create or version a dataset from a folder "
                       "with dataset-metadata.json (e.g. the wheels folder)")
    p.add_argument("folder")
    p.add_argument("--notes", default="cellseg update", help="version notes")
    p.add_argument("--mode", choices=("auto", "new", "version"), default="auto")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")


def _rehearse_args(sub: argparse._SubParsersAction) -> None:
    """`cellseg kaggle rehearse`: the kernel run locally as Kaggle would."""
    p = sub.add_parser("rehearse", help="run the kernel locally as Kaggle would, internet off")
    p.add_argument("kernel_dir")
    p.add_argument("--data", help="competition folder with test/*.png (default: a synthetic set)")
    p.add_argument("--layout", choices=("old", "new", "both"), default="both")
    p.add_argument("--wheels-dir", help="default: the one given to build-kernel")
    p.add_argument("--weights-dir", help="default: the manifest's folder")
    p.add_argument("--workdir", help="keep the rehearsal tree here (default: temporary)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per layout")
    p.add_argument("--no-unshare", action="store_true", help="socket block only, no netns")
    p.add_argument("--image", default="kaggle",
                   help="kaggle (default): the newest description of Kaggle's image (Python and "
                        "package pins, env built once per machine); kaggle-<date> an older one "
                        "(`cellseg kaggle image --list`); a description JSON path; local: this "
                        "interpreter's packages (fast)")


def _api_args(sub: argparse._SubParsersAction) -> None:
    """`push`, `status`, `output`, `submit`: the Kaggle API."""
    p = sub.add_parser("push", help="push a kernel folder, wait for the run, download its output")
    p.add_argument("kernel_dir")
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--output", help="where to download output + log (default: KERNEL_DIR/output)")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between status checks")
    p.add_argument("--timeout", type=int, default=None, help="kernel session timeout (s)")
    p.add_argument("--force", action="store_true",
                   help="push even when the competition accepts no more submissions today")

    p = sub.add_parser("status", help="print a kernel's run status")
    p.add_argument("kernel", help="owner/slug or owner/slug/VERSION")

    p = sub.add_parser("output", help="download a kernel's output files and log")
    p.add_argument("kernel", help="owner/slug or owner/slug/VERSION")
    p.add_argument("--out", required=True)

    p = sub.add_parser("submit", help="submit a kernel version to the competition")
    p.add_argument("kernel", help="owner/slug or owner/slug/VERSION")
    p.add_argument("--version", type=int, default=None,
                   help="kernel version (printed by push; or give owner/slug/VERSION)")
    p.add_argument("--message", default=None)
    p.add_argument("--file-name", default="submission.csv")


# path arguments, made absolute before anything changes directory or starts a process
_PATH_ARGS = ("out", "manifest", "wheels_dir", "source", "folder", "kernel_dir", "data",
              "weights_dir", "workdir", "output", "image_file", "file", "import_from")


def _absolute_paths(args: argparse.Namespace) -> None:
    for name in _PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            setattr(args, name, str(Path(value).expanduser().resolve()))
    # --config, --image: a path or a name; resolve only what exists as a file
    for name in ("config", "image"):
        value = getattr(args, name, None)
        if isinstance(value, str) and Path(value).is_file():
            setattr(args, name, str(Path(value).resolve()))


def run(args: argparse.Namespace) -> int:
    """Run one action. Errors are left to the CLI's boundary (``cellseg.cli``): user mistakes and
    Kaggle's refusals raise ``UserError`` (one line, exit 2); anything else is a bug."""
    _absolute_paths(args)
    return _ACTIONS[args.action](args)


def _image(args: argparse.Namespace) -> int:
    from cellseg.kaggle.image import (ensure_image_env, env_info, find_image, format_image,
                                      image_files, load_image)

    if args.import_from:
        from cellseg.kaggle.image_report import import_report

        path, img = import_report(args.import_from, out=args.out)
        print(f"wrote {path}: Kaggle image {img.name} as of {img.as_of}, Python {img.python}, "
              f"{len(img.packages)} packages; rehearse on it with "
              f"`cellseg kaggle rehearse KERNEL_DIR --image {path}`")
        return 0
    if args.list:
        newest = load_image()
        for f in image_files():
            img = load_image(f)
            mark = "  (newest: --image kaggle)" if img.as_of == newest.as_of else ""
            print(f"{img.label:<20} Python {img.python:<8} torch {img.packages.get('torch', '-'):<8} "
                  f"{f.name}{mark}")
        return 0
    img = find_image(args.file or args.image)
    if args.json:
        print(Path(img.path).read_text().rstrip())
        return 0
    print(format_image(img))
    if args.build_env:
        python = ensure_image_env(img)
        info = env_info(img) or {}
        print(f"rehearsal env: {python} (Python {info.get('python', '?')}, built in "
              f"{info.get('seconds', '?')} s)")
    return 0


def _build_kernel(args: argparse.Namespace) -> int:
    from cellseg.kaggle.kernel import build_kernel

    from cellseg.kaggle.kernel import P100_WARNING

    accelerator = "none" if args.cpu else args.accelerator
    if accelerator == "p100":
        print(f"WARNING: {P100_WARNING}", file=sys.stderr)
    b = build_kernel(args.weights, args.out, manifest=args.manifest, kernel_id=args.kernel_id,
                     wheels_dataset=args.wheels_dataset, weights_dataset=args.weights_dataset,
                     config=args.config, wheels_dir=args.wheels_dir, predict_args=args.predict_arg,
                     accelerator=accelerator, verify=not args.no_verify, probe=not args.no_probe,
                     probe_image=args.probe_image, image=args.image,
                     max_failed_share=args.max_failed_share)
    print(f"wrote {b.code_file} and {b.folder / 'kernel-metadata.json'}")
    probe = b.embedded["probe"]
    if probe:
        print(f"probe: {probe['image']}: {probe['count']} instance(s) on {probe['computed_on']}")
        if probe["count"] < 5:
            print(f"WARNING: the model finds {probe['count']} instance(s) on the probe image, too "
                  "few to tell a changed environment apart; pass --probe-image with a crop of an "
                  "image it segments (e.g. train/<id>.png:0,0,260,352)", file=sys.stderr)
    print(f"built for Kaggle image {b.embedded['image']['label']}; "
          f"{len(b.embedded['wheels'])} wheel(s) pinned by sha256")
    print(json.dumps(b.metadata, indent=2))
    return 0


def _build_wheels(args: argparse.Namespace) -> int:
    from cellseg.kaggle.image import find_image
    from cellseg.kaggle.wheels import build_wheels

    img = find_image(args.image_file or "kaggle")
    print(f"target: Kaggle image {img.name} {img.as_of}, Python {img.python} ({img.python_tag}), "
          f"{img.platform}")
    bundled, left_out = build_wheels(args.out, packages=args.packages, dataset_id=args.dataset_id,
                                     source=args.source, image=img, pin=not args.no_pin)
    print("bundled:")
    for p in bundled:
        size = (Path(args.out) / p.file).stat().st_size / 2**20 if p.file else 0.0
        print(f"  {p.file or p.name}  {size:.2f} MiB  - {p.reason}")
    print("left out:")
    implied = [p.name for p in left_out if p.reason.startswith("in the image (")]
    for p in left_out:
        if p.name not in implied:
            print(f"  {p.name}{' ' + p.version if p.version else ''}  - {p.reason}")
    if implied:
        print(f"  {len(implied)} dependencies of the image's packages - in the image: "
              f"{', '.join(implied)}")
    print(f"written: {Path(args.out) / 'bundle.json'}; upload with: "
          f"cellseg kaggle upload-dataset {args.out}")
    return 0


def _upload_dataset(args: argparse.Namespace) -> int:
    from cellseg.kaggle import api as kapi
    from cellseg.kaggle.names import check_dataset_ref, check_dataset_title

    meta_path = Path(args.folder) / "dataset-metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: build the folder with "
                                "`cellseg kaggle build-wheels` or add the metadata file")
    meta = json.loads(meta_path.read_text())
    dataset = check_dataset_ref(meta.get("id", ""), f"dataset id in {meta_path}")
    check_dataset_title(meta.get("title", ""))  # names first: no network call for a refused one
    api = kapi.get_api()
    new = {"auto": None, "new": True, "version": False}[args.mode]
    print(f"uploaded: {kapi.upload_dataset(api, args.folder, dataset, notes=args.notes, new=new)}")
    kapi.wait_dataset(api, dataset, poll_s=args.poll)
    print(f"{dataset} is ready")
    return 0


def _rehearse(args: argparse.Namespace) -> int:
    from cellseg.kaggle.rehearse import LAYOUTS, rehearse

    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    results = rehearse(args.kernel_dir, data=args.data, layouts=layouts, wheels_dir=args.wheels_dir,
                       weights_dir=args.weights_dir, workdir=args.workdir, timeout=args.timeout,
                       isolate=not args.no_unshare, image=args.image)
    for r in results:
        print(r.summary())
        if not r.ok and r.log.exists():
            print("---- last lines of the kernel log ----")
            print("\n".join(r.log.read_text().splitlines()[-30:]))
    return 0 if all(r.ok for r in results) else 1


def _push(args: argparse.Namespace) -> int:
    from cellseg.kaggle import api as kapi
    from cellseg.kaggle.kernel_template import embedded_of
    from cellseg.kaggle.names import check_kernel_ref, check_kernel_title

    meta_path = Path(args.kernel_dir) / "kernel-metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; build it with `cellseg kaggle build-kernel`")
    meta = json.loads(meta_path.read_text())
    check_kernel_ref(meta.get("id", ""), f"kernel id in {meta_path}")
    check_kernel_title(meta.get("title", ""))  # names first: no network call for a refused one
    code = Path(args.kernel_dir) / meta.get("code_file", "")
    text = code.read_text() if code.is_file() else ""
    embedded = embedded_of(text) if "EMBEDDED BEGIN" in text else {}
    api = kapi.get_api()
    kapi.check_dataset_sources(api, list(meta.get("dataset_sources", [])))
    for competition in meta.get("competition_sources", []):
        try:
            allowance = kapi.submission_allowance(api, competition)
        except kapi.KaggleError as exc:
            if not args.force:
                raise
            print(f"WARNING: {exc} (--force: pushing anyway)", file=sys.stderr)
            continue
        print(allowance.line(competition))
        if allowance.remaining_today == 0:
            if not args.force:
                raise kapi.KaggleError(f"{competition} accepts no more submissions from you today",
                                       fix="push tomorrow (Kaggle's day is UTC), or pass --force "
                                           "to run the kernel anyway")
            print("WARNING: no submissions left today (--force: pushing anyway)", file=sys.stderr)
    result = kapi.push_kernel(api, args.kernel_dir, timeout=args.timeout)
    print(result.summary())
    if result.error:
        raise kapi.KaggleError(f"Kaggle refused the push of {args.kernel_dir}: {result.error}")
    if result.refusal():
        raise kapi.KaggleError(result.refusal())
    if args.no_wait:
        return 0
    ref = result.versioned_ref or result.ref
    status, message = kapi.wait_kernel(api, ref, poll_s=args.poll)
    out = Path(args.output or Path(args.kernel_dir) / "output")
    files = kapi.download_output(api, ref, out)
    print(f"{len(files)} output file(s) in {out}: {', '.join(f.name for f in files)}")
    from cellseg.kaggle.image_report import image_drift, read_failures

    drift = image_drift(out, embedded.get("image"))
    for line in drift:
        print(line)
    failed, summary = read_failures(out)
    for line in summary:
        print(line, file=sys.stderr if failed else sys.stdout)
    if status != "complete":
        print(f"kernel ended {status}" + (f": {message}" if message else ""), file=sys.stderr)
        return 1
    if failed:
        print("the submission is complete, but check the failed images above before submitting",
              file=sys.stderr)
    print(f"submit with: cellseg kaggle submit {result.ref} --version {result.version}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cellseg.kaggle import api as kapi

    status, message = kapi.kernel_status(kapi.get_api(), args.kernel)
    print(f"{args.kernel}: {status}" + (f" ({message})" if message else ""))
    return 1 if status == "error" else 0


def _output(args: argparse.Namespace) -> int:
    from cellseg.kaggle import api as kapi

    files = kapi.download_output(kapi.get_api(), args.kernel, args.out)
    for f in files:
        print(f)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from cellseg.errors import ConfigError
    from cellseg.kaggle import api as kapi

    kernel, version = kapi.split_version(args.kernel)
    version = args.version or version
    if version is None:
        raise ConfigError("no kernel version", where="submit", fix="pass --version N (printed by "
                          "`cellseg kaggle push`) or the kernel as owner/slug/N")
    print("same as: " + kapi.submit_cli(kernel, version, message=args.message,
                                        file_name=args.file_name))
    print(kapi.submit_kernel(kapi.get_api(), kernel, version, message=args.message,
                             file_name=args.file_name))
    return 0


_ACTIONS = {"image": _image, "build-kernel": _build_kernel, "build-wheels": _build_wheels,
            "upload-dataset": _upload_dataset, "rehearse": _rehearse,
            "push": _push, "status": _status, "output": _output, "submit": _submit}
