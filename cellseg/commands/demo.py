"""`cellseg demo`: the whole pipeline on synthetic data, in a few CPU minutes.

    cellseg demo --out demo_out            # what `make demo` runs
    cellseg demo --out /tmp/d --quick      # the short end-to-end run CI does
    cellseg demo --out /tmp/d --quick --kernel   # ... plus wheels, kernel and its rehearsal

Steps, each one a real `cellseg` subcommand run in-process (so the demo exercises exactly what a
user types): synthesise a training set and an independent labelled hold-out set -> train each
model family briefly -> predict the hold-out images and score them -> predict the synthetic
`test/` folder into `submission.csv` with the best model and validate it -> build the Kaggle
kernel and rehearse it offline -> write `report.md`. It ends by pointing at the results page of
the best model's hold-out run, `OUT/report/index.html`, and the page comparing the first two
families on it, `OUT/report_compare/index.html` (`cellseg score --report`, `--compare`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

from cellseg.io import atomic_open

# Training budgets on top of the tiny configs. Full demo: ~2 CPU minutes per family on an idle
# machine (UNet reaches ~0.25 on synthetic validation; a useful Mask R-CNN needs far more than a
# CPU can give, the demo only proves its pipeline). CI's --quick: seconds, pipeline check only.
_DEMO_SET = {
    "unet": ["train.epochs=80", "train.max_steps=null", "train.val_every=10"],
    "maskrcnn": ["train.epochs=30", "train.max_steps=null", "train.val_every=10"],
}
_QUICK_SET = {
    "unet": ["train.epochs=2", "train.max_steps=6"],
    "maskrcnn": ["train.epochs=1", "train.max_steps=3"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    from cellseg.commands.common import add_count_arg

    add_count_arg(parser, "images", default=16, help="synthetic training images (default 16)",
                  old="--images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=["unet", "maskrcnn"],
                        help="model families to train (default: unet maskrcnn)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for CI: fewer images and steps, no kernel rehearsal")
    parser.add_argument("--no-kernel", action="store_true", help="skip build-kernel + rehearse")
    parser.add_argument("--kernel", action="store_true",
                        help="with --quick: still build the Kaggle kernel and rehearse it")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _cli(argv: list[str]) -> None:
    from cellseg.cli import main

    print(f"\n$ cellseg {' '.join(argv)}", flush=True)
    rc = main(argv)
    if rc != 0:
        from cellseg.jobs import StepFailed

        raise StepFailed(f"demo step failed (exit {rc})", where=f"cellseg {' '.join(argv)}",
                         fix="read that step's output above")


def run(args: argparse.Namespace) -> int:
    from cellseg.data.synthetic import generate

    # absolute from here on: every step below may run a process in another working directory
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    n_images = 6 if args.quick else args.num_images
    timings: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> object:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        return result

    data, holdout = out / "data", out / "holdout"
    step("synthesise training data", lambda: generate(
        data, n_images=n_images, seed=args.seed, n_test=3, n_semi=2, n_livecell=4))
    step("synthesise labelled hold-out", lambda: generate(
        holdout, n_images=3 if args.quick else 6, seed=args.seed + 1000, n_test=0, n_semi=0,
        n_livecell=0))
    _cli(["data", "check", str(data / "competition")])

    device = ["--device", args.device] if args.device else []
    scores: dict[str, float] = {}
    for family in args.models:
        run_dir = out / "runs" / family
        extra = (_QUICK_SET if args.quick else _DEMO_SET)[family]
        argv = ["train", "--config", f"{family}_tiny", "--data", str(data / "competition"),
                "--out", str(run_dir)] + device
        if (run_dir / "last.pt").exists():
            argv.append("--resume")  # an interrupted demo continues where it stopped
        for kv in extra:
            argv += ["--set", kv]
        step(f"train {family}", lambda argv=argv: _cli(argv))
        # thresholds tuned on the validation fold training held out (same fold settings)
        tuned = out / f"tuned_{family}.yaml"
        step(f"tune thresholds ({family})", lambda: _cli(
            ["tune", "--weights", str(run_dir / "best.pt"), "--data", str(data / "competition"),
             "--fold", "0", "--n-folds", "3", "--out", str(tuned), "--no-progress"] + device))
        pred = out / f"holdout_pred_{family}.csv"
        step(f"predict hold-out ({family})", lambda: _cli(
            ["predict", "--weights", str(run_dir / "best.pt"), "--config", str(tuned), "--images",
             str(holdout / "competition" / "train"), "--out", str(pred), "--no-progress"]
            + device))
        score_json = out / f"score_{family}.json"
        step(f"score hold-out ({family})", lambda: _cli(
            ["score", "--truth", str(holdout / "competition" / "train.csv"), "--pred", str(pred),
             "--json", str(score_json), "--no-coco"]))
        scores[family] = json.loads(score_json.read_text())["score"]

    best = max(scores, key=scores.get)
    # the results pages: the best model's hold-out run, and the first two families side by side
    truth_args = ["--truth", str(holdout / "competition" / "train.csv"),
                  "--images", str(holdout / "competition" / "train"), "--no-coco"]
    pages = [out / "report" / "index.html"]
    step("results page (hold-out)", lambda: _cli(
        ["score", *truth_args, "--pred", str(out / f"holdout_pred_{best}.csv"),
         "--report", str(out / "report")]))
    if len(scores) > 1:
        a, b = list(scores)[:2]
        pages.append(out / "report_compare" / "index.html")
        step(f"results page ({a} vs {b})", lambda: _cli(
            ["score", *truth_args, "--pred", str(out / f"holdout_pred_{a}.csv"),
             "--compare", str(out / f"holdout_pred_{b}.csv"),
             "--report", str(out / "report_compare")]))
    weights = str(out / "runs" / best / "best.pt")
    best_cfg = str(out / f"tuned_{best}.yaml")
    submission = out / "submission.csv"
    test_dir = data / "competition" / "test"
    step("predict test -> submission.csv", lambda: _cli(
        ["predict", "--weights", weights, "--config", best_cfg, "--images", str(test_dir),
         "--out", str(submission), "--no-progress"] + device))
    step("validate submission.csv", lambda: _cli(
        ["validate", str(submission), "--images", str(test_dir)]))

    kernel_ok = None
    if not args.no_kernel and (args.kernel or not args.quick):
        manifest = out / "weights" / "manifest.yaml"
        wheels, kernel = out / "wheels", out / "kernel"
        name = f"demo-{best}"
        step("register weights", lambda: _cli(
            ["weights", "add", weights, "--name", name, "--manifest", str(manifest),
             "--overwrite"]))
        if not any(wheels.glob("cellseg_kit-*.whl")):
            step("build wheels dataset", lambda: _cli(
                ["kaggle", "build-wheels", "--out", str(wheels), "--dataset-id", "me/cellseg-wheels",
                 "--source", str(Path(__file__).resolve().parents[2])]))
        step("build Kaggle kernel", lambda: _cli(
            ["kaggle", "build-kernel", "--weights", name, "--manifest", str(manifest),
             "--config", best_cfg,
             "--kernel-id", "me/cellseg-infer", "--wheels-dir", str(wheels),
             "--out", str(kernel)]))
        # --image local: this interpreter's packages, seconds. The rehearsal on Kaggle's own
        # image (its newest description: Python, pinned versions; a few GB built once) is printed
        # at the end.
        step("rehearse kernel offline (both /kaggle/input layouts)", lambda: _cli(
            ["kaggle", "rehearse", str(kernel), "--data", str(data / "competition"),
             "--layout", "both", "--workdir", str(out / "rehearsal"), "--image", "local"]))
        kernel_ok = True

    _write_report(out, scores, best, submission, timings, kernel_ok, pages)
    print("\nDemo finished. Hold-out scores: "
          + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
          + f". Report: {out / 'report.md'}")
    if kernel_ok:
        from cellseg.kaggle.image import load_image

        img = load_image()
        print(f"Rehearse the kernel on Kaggle's own image (Python {img.python}, Kaggle's package "
              f"versions as of {img.as_of}; the env is built once per machine):\n"
              f"  cellseg kaggle rehearse {args.out}/kernel --data {args.out}/data/competition")
    shown = [str(Path(args.out) / p.relative_to(out)) for p in pages]
    print(f"\nOpen the results page in a browser: {shown[0]}"
          + (f"\n  ({' vs '.join(list(scores)[:2])} side by side: {shown[1]})"
             if len(shown) > 1 else ""))
    return 0


def _write_report(out: Path, scores: dict[str, float], best: str, submission: Path,
                  timings: dict[str, float], kernel_ok: bool | None, pages: list[Path]) -> None:
    lines = ["# cellseg demo report", "",
             "Synthetic data, tiny models, a few CPU minutes: this proves the pipeline runs end to "
             "end, not that the models are good.", "",
             "| model | hold-out competition score |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in scores.items()]
    n_rows = sum(1 for _ in open(submission)) - 1
    lines += ["", f"Submission: `{submission}` ({n_rows} rows) from `{best}`, validated.",
              f"Kaggle kernel rehearsal: {'passed' if kernel_ok else 'skipped'}.", "",
              "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "Results pages (open in a browser): "
              + ", ".join(f"`{p.relative_to(out)}`" for p in pages), ""]
    with atomic_open(out / "report.md") as fh:
        fh.write("\n".join(lines))
