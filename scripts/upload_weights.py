"""Upload the weights listed in weights/manifest.yaml as a Kaggle dataset (new or new version).

    python scripts/upload_weights.py --dataset-id me/cellseg-weights --dry-run
    python scripts/upload_weights.py --dataset-id me/cellseg-weights --names unet_r34_fold0
    python scripts/upload_weights.py --dataset-id me/cellseg-weights --notes "fold 0 retrained"

Every selected file's sha256 is verified against the manifest before anything is uploaded. The
files, a manifest.yaml of the selected entries and ``dataset-metadata.json`` (id, title, licenses)
are staged in one folder, uploaded with ``dir_mode="zip"`` (the kaggle default "skip" silently
drops sub-folders), then ``dataset_status`` is polled until the dataset is ready.

``--dry-run`` prints exactly what would be uploaded and the metadata; it touches no network and
does not import the kaggle package. Credentials: KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN,
~/.kaggle/kaggle.json, ~/.config/kaggle/kaggle.json or $KAGGLE_CONFIG_DIR/kaggle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

DEFAULT_SLUG = "cellseg-weights"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", default="weights/manifest.yaml")
    p.add_argument("--names", nargs="*", default=None, help="entries to upload (default: all)")
    p.add_argument("--dataset-id", help=f"owner/slug (default: $KAGGLE_USERNAME/{DEFAULT_SLUG})")
    p.add_argument("--title", help="dataset title (default: the slug, '-' as spaces)")
    p.add_argument("--license", default="other", help="Kaggle license name (CC0-1.0, CC-BY-SA-4.0, other)")
    p.add_argument("--notes", default="cellseg weights", help="version notes")
    p.add_argument("--mode", choices=("auto", "new", "version"), default="auto",
                   help="auto: create when the dataset does not exist yet")
    p.add_argument("--public", action="store_true", help="new datasets are private by default")
    p.add_argument("--staging", help="folder to stage the upload in (default: temporary)")
    p.add_argument("--poll", type=float, default=10.0, help="seconds between dataset_status calls")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded; no network")
    return p


def dataset_metadata(dataset_id: str, title: str | None, license_name: str) -> dict[str, Any]:
    from cellseg.kaggle.names import check_dataset_ref, check_dataset_title

    check_dataset_ref(dataset_id, "dataset id")  # Kaggle's rules, before any network call
    slug = dataset_id.split("/")[1]
    return {"title": check_dataset_title(title or slug.replace("-", " ")), "id": dataset_id,
            "licenses": [{"name": license_name}]}


def stage(entries: Sequence[Any], manifest: Path, folder: Path, metadata: dict[str, Any]) -> list[Path]:
    """Hard-link (or copy) the weight files into ``folder`` with manifest.yaml and metadata."""
    from cellseg.io import write_json
    from cellseg.weights import save_manifest

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for e in entries:
        dest = folder / e.file
        dest.unlink(missing_ok=True)
        try:
            os.link(e.path(manifest), dest)  # no copy of multi-GB files on the same disk
        except OSError:
            shutil.copyfile(e.path(manifest), dest)
        files.append(dest)
    save_manifest(folder / "manifest.yaml", entries)
    write_json(folder / "dataset-metadata.json", metadata)
    return files + [folder / "manifest.yaml", folder / "dataset-metadata.json"]


def main(argv: Sequence[str] | None = None, api: Any = None) -> int:
    """Entry point; ``api`` lets tests pass a fake Kaggle API object."""
    from cellseg.weights import find_entry, load_manifest, verify_entry

    args = get_args_parser().parse_args(argv)
    manifest = Path(args.manifest)
    try:
        entries = load_manifest(manifest)
        if not entries:
            raise ValueError(f"{manifest} lists no weights: run `cellseg weights add CKPT --name N`")
        if args.names:
            entries = [find_entry(entries, n) for n in args.names]
        problems = [p for p in (verify_entry(e, manifest) for e in entries) if p]
        if problems:
            raise ValueError("refusing to upload, sha256 check failed:\n  " + "\n  ".join(problems))
        owner = os.environ.get("KAGGLE_USERNAME", "").strip()
        dataset_id = args.dataset_id or (f"{owner}/{DEFAULT_SLUG}" if owner else None)
        if not dataset_id:
            raise ValueError("pass --dataset-id owner/slug or set KAGGLE_USERNAME")
        metadata = dataset_metadata(dataset_id, args.title, args.license)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.dry_run:
        print(f"DRY RUN: would upload {len(entries)} weight file(s) to {dataset_id} "
              f"(mode {args.mode}, dir_mode zip)")
        for e in entries:
            print(f"  {e.file}\t{e.size} bytes\tsha256 {e.sha256}\t({e.name}, {e.family})")
        print("  manifest.yaml\t(the entries above)")
        print("dataset-metadata.json:")
        print(json.dumps(metadata, indent=2))
        return 0

    from cellseg.kaggle import api as kapi

    try:
        client = kapi.get_api(api)
        with tempfile.TemporaryDirectory(prefix="cellseg-weights-") as tmp:
            folder = Path(args.staging or tmp)
            staged = stage(entries, manifest, folder, metadata)
            print(f"staged {len(staged)} files in {folder}")
            new = {"auto": None, "new": True, "version": False}[args.mode]
            url = kapi.upload_dataset(client, folder, dataset_id, notes=args.notes, new=new,
                                      public=args.public)
            print(f"uploaded: {url}")
            kapi.wait_dataset(client, dataset_id, poll_s=args.poll)
    except kapi.CredentialsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (kapi.KaggleError, TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{dataset_id} is ready; build the kernel with --weights-dataset {dataset_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
