"""Cross-validation on a handful of annotated images: is a recipe better than another?

    cellseg cv --data ../shared/data/sartorius --data ../shared/data/livecell:val \\
        --config unet_small_real --steps 300 --reference --out runs/cv

Folds: leave-one-image-out (the default), or ``n_folds`` grouped folds (``make_folds``: frames of
one sample / LIVECell well stay together, cell types spread). For every fold:

1. The fold's training images and its held-out images are written as two competition-layout
   folders (``fold_K/train_data``, ``fold_K/test_data``; images stored once as PNG in
   ``images/`` and linked), whatever their sources were.
``only_folds`` runs some folds only (the others' finished results are reported): two processes
with disjoint ``only_folds`` and the same ``out`` share a CV run; ``report_only`` sums it up.

2. ``kit``: the recipe is trained through the public entry point, ``python -m cellseg train``, in a
   subprocess (``OMP_NUM_THREADS`` = ``threads``) with ``train.max_steps`` = the step budget and no
   validation split; the held-out images are predicted with the inference config (the UNet's cell
   type is unknown at test time, so ``default`` thresholds apply, as in ``cellseg predict``).
   ``extra_train`` sources (e.g. a pseudo-labelled folder) join every fold's training set; they
   are never scored. (Pseudo-labels from a teacher that saw the held-out image leak it: for an
   honest gain, make them with a teacher trained without it.)
3. ``kit_pl`` (``pseudo_images`` set): the fold's ``kit`` model is the teacher. It labels the
   unlabeled images (``cellseg.pseudo.pseudo_label``: confident cells only, whole images rejected
   when unsure; annotated images are never among them), and a student is trained from scratch
   with the same recipe and step budget on the fold's training images plus those pseudo-labels
   (``pseudo_weight`` of the samples drawn from them). The teacher never saw the held-out image,
   so the gain measured is honest; the teacher's training and the labelling come on top of the
   student's budget.
4. The peers named by ``cellseg cv --reference`` (``PEERS``: ``plain_unet`` as method ``plain``,
   ``cellpose``, ``plain_maskrcnn``): ``python -m bench.<module>`` on the same folders and step
   budget, each a method of its own (see docs/peers.md).
5. All are scored by ``cellseg.core.metrics.match_image``; results per fold and method are saved as
   ``fold_K/<method>/result.json`` (``resume=True`` reuses them), the predictions as
   ``fold_K/<method>/pred.csv`` (the results page, ``cellseg.viewer.sources.cv_page``, reads them).

The report (``cv.json``, ``cv.csv``, the per-image bar chart ``cv.png``, written atomically; and
the printed table) gives, per method,
the mean and sample standard deviation of the image scores, per cell type, and per image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cellseg.errors import UserError
from cellseg.jobs import repo_root, run_logged

if TYPE_CHECKING:  # pragma: no cover
    from cellseg.data.record import ImageRecord


@dataclass(frozen=True)
class Peer:
    """A reference method written independently of the kit (``bench/<module>.py``), run as a
    subprocess per fold with the common peer arguments (``bench/peer_io.py``) plus ``args``."""

    method: str  # its name in cv.json / cv.csv / the table
    module: str
    args: tuple[str, ...] = ()
    # the flag that trains it under CPU bfloat16 autocast, passed when the kit's recipe trains
    # so (same steps, same precision: the same CPU budget); None: the peer has no such switch
    bf16_flag: str | None = None


# --reference NAME -> the peer; plain_unet keeps the method name "plain" it has always had
PEERS: dict[str, Peer] = {
    "plain_unet": Peer("plain", "bench.plain_unet", ("--border", "2"), bf16_flag="--bf16"),
    "cellpose": Peer("cellpose", "bench.cellpose_ref"),
    "plain_maskrcnn": Peer("plain_maskrcnn", "bench.plain_maskrcnn"),
}
PEER_BY_METHOD = {p.method: p for p in PEERS.values()}
METHODS = ("kit", "kit_pl", *PEER_BY_METHOD)
STEPS_PER_EPOCH = 25  # with a few images, repeat the fold's folder so an epoch is about this long


@dataclass(frozen=True)
class CVSettings:
    """Everything that defines a CV run (recorded in ``cv.json``)."""

    config: str = "unet_small_real"
    overrides: tuple[str, ...] = ()
    steps: int = 300
    n_folds: int | None = None  # None: leave one image out
    methods: tuple[str, ...] = ("kit",)
    infer_config: str | None = None  # None: the kit's defaults (cellseg.infer.config)
    infer_overrides: tuple[str, ...] = ()
    tta: bool = False
    threads: int = 1
    seed: int = 0  # picks the folds, and seeds every training unless ``train_seed`` is set
    train_seed: int | None = None  # another training seed on the same folds (seed variance)
    resume: bool = False
    overlays: str | None = None
    extra_train: tuple[str, ...] = ()  # added to every fold's training set, never scored
    report_only: bool = False  # summarise the finished folds of ``out``; train nothing
    only_folds: tuple[int, ...] = ()  # run these folds; report the others' finished results
    # kit_pl: unlabeled image folders/files, the filters, and the pseudo-labels' share of samples
    pseudo_images: tuple[str, ...] = ()
    pseudo_min_score: float = 0.6
    pseudo_min_keep_fraction: float = 0.5
    pseudo_min_cells: int = 5
    pseudo_weight: float = 0.5
    pseudo_tta: bool = False
    pseudo_ignore_dropped: bool = False
    matching: str = "dsb"  # the metric's rule (cellseg.core.metrics.MATCHING_RULES); both saved

    @property
    def training_seed(self) -> int:
        """The seed every fold's training (kit and peers) runs with."""
        return self.seed if self.train_seed is None else self.train_seed


def make_cv_folds(records: Sequence["ImageRecord"], n_folds: int | None = None,
                  seed: int = 0) -> list[list[str]]:
    """Held-out image ids of each fold: one image per fold (``n_folds`` None or >= the number of
    images), else ``make_folds`` groups (sample / well kept together, cell types spread)."""
    ids = [r.image_id for r in records]
    if len(ids) < 2:
        raise ValueError(f"cross-validation needs at least 2 annotated images, got {len(ids)}")
    if n_folds is None or n_folds >= len(ids):
        return [[i] for i in ids]
    from cellseg.data.folds import make_folds

    folds = make_folds(records, n_folds=n_folds, seed=seed)
    return [[i for i in ids if folds[i] == k] for k in range(n_folds)]


def kit_train_command(settings: CVSettings, train_data: Path, n_train: int, out: Path
                      ) -> list[str]:
    """The ``python -m cellseg train`` command of one fold: an epoch is about ``STEPS_PER_EPOCH``
    steps (``data.samples_per_epoch`` where the config has it, else the folder listed repeatedly),
    so the schedule spans about ``settings.steps`` and checkpoints are not written every step."""
    from cellseg.config import load_train_config

    cfg = load_train_config(settings.config, settings.overrides)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    cmd = [sys.executable, "-m", "cellseg", "train", "--config", settings.config,
           "--out", str(out), "--no-progress"]
    sets = []
    if "samples_per_epoch" in {f.name for f in dataclasses.fields(cfg.data)}:
        # the loop draws this many samples per epoch from the listed images
        steps_per_epoch = STEPS_PER_EPOCH
        cmd += ["--data", str(train_data)]
        sets.append(f"data.samples_per_epoch={STEPS_PER_EPOCH * per_step}")
    else:  # older loops: an epoch is one pass over data.sources, so list the folder repeatedly
        repeat = max(1, math.ceil(STEPS_PER_EPOCH * per_step / max(n_train, 1)))
        steps_per_epoch = math.ceil(repeat * n_train / per_step)
        for _ in range(repeat):
            cmd += ["--data", str(train_data)]
    for src in settings.extra_train:  # e.g. a pseudo-labelled folder
        cmd += ["--data", str(src)]
    epochs = max(1, math.ceil(settings.steps / steps_per_epoch))
    for o in (*settings.overrides, *sets, "data.fold=null", "data.val_split=null",
              f"train.max_steps={settings.steps}", f"train.epochs={epochs}",
              f"train.seed={settings.training_seed}"):
        cmd += ["--set", o]
    return cmd


def student_train_command(settings: CVSettings, train_data: Path, n_train: int,
                          pseudo_data: Path, out: Path) -> list[str]:
    """The ``kit_pl`` student's command: the fold's kit command plus the pseudo-labelled folder
    as the last source, drawn for ``pseudo_weight`` of the samples (by image count, a few dozen
    pseudo-labelled images would otherwise drown a handful of annotated ones)."""
    with_pl = dataclasses.replace(settings, extra_train=(*settings.extra_train, str(pseudo_data)))
    cmd = kit_train_command(with_pl, train_data, n_train, out)
    if cmd.count("--data") != 2 + len(settings.extra_train):
        raise ValueError("cv kit_pl needs a training config with data.samples_per_epoch")
    n_labelled = 1 + len(settings.extra_train)
    w = settings.pseudo_weight
    if not 0.0 < w < 1.0:
        raise ValueError(f"pseudo_weight {w} must lie strictly between 0 and 1")
    weights = [1.0] * n_labelled + [round(n_labelled * w / (1.0 - w), 6)]
    return cmd + ["--set", "data.source_weights=[" + ",".join(map(str, weights)) + "]"]


def unlabeled_records(settings: CVSettings, annotated: Sequence["ImageRecord"]
                      ) -> list["ImageRecord"]:
    """The images of ``settings.pseudo_images`` that are not annotated, by id or by file (an
    annotated image is either held out, and must not be trained on, or has true labels)."""
    from cellseg.data.sources import list_image_files

    ids = {r.image_id for r in annotated}
    files = {Path(r.image_path).resolve() for r in annotated}
    return [r for r in list_image_files(list(settings.pseudo_images))
            if r.image_id not in ids and Path(r.image_path).resolve() not in files]


def make_pseudo_labels(teacher: Path, records: Sequence["ImageRecord"], out: Path,
                       settings: CVSettings) -> dict[str, Any]:
    """Label ``records`` with the fold's teacher into the competition folder ``out``."""
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models
    from cellseg.pseudo import PseudoSettings, pseudo_label

    overrides = list(settings.infer_overrides) + (["tta=[h,v,hv]"] if settings.pseudo_tta else [])
    cfg = load_inference_config(settings.infer_config, overrides)
    thresholds = PseudoSettings(min_score=settings.pseudo_min_score,
                                min_cells=settings.pseudo_min_cells,
                                min_keep_fraction=settings.pseudo_min_keep_fraction,
                                ignore_dropped=settings.pseudo_ignore_dropped)
    return pseudo_label(load_models([teacher], device="cpu"), records, cfg, out, thresholds,
                        weights_paths=[teacher], device="cpu", progress=False,
                        log=lambda m: None)


def _kit_checkpoint(mdir: Path) -> Path:
    return mdir / "best.pt" if (mdir / "best.pt").is_file() else mdir / "last.pt"


def kit_trains_in_bfloat16(settings: CVSettings) -> bool:
    """Whether the kit's recipe (with its overrides) trains under bfloat16 autocast on this CPU
    (``train.amp_dtype`` bfloat16, or bfloat16_if_native on a CPU with bf16 units)."""
    from cellseg.config import load_train_config
    from cellseg.config import native_bfloat16

    tc = load_train_config(settings.config, list(settings.overrides)).train
    return tc.amp and (tc.amp_dtype == "bfloat16" or
                       (tc.amp_dtype == "bfloat16_if_native" and native_bfloat16("cpu")))


def peer_command(peer: Peer | str, settings: CVSettings, train_data: Path, test_data: Path,
                 out: Path) -> list[str]:
    """The ``python -m bench.<peer module>`` command of one fold (``peer``: a ``Peer`` or the
    method name of one). A peer that can train in bfloat16 does when the kit's recipe does."""
    if isinstance(peer, str):
        peer = PEER_BY_METHOD[peer]
    if repo_root() is None:
        raise FileNotFoundError(f"the peers (bench/{peer.module.split('.')[-1]}.py) are not "
                                "beside this cellseg package; run cellseg cv --reference from "
                                "a source checkout")
    cmd = [sys.executable, "-m", peer.module, "--train", str(train_data),
           *map(str, settings.extra_train), "--test", str(test_data), "--out", str(out),
           "--steps", str(settings.steps), "--seed", str(settings.training_seed),
           "--threads", str(settings.threads), *peer.args]
    if peer.bf16_flag and kit_trains_in_bfloat16(settings):
        cmd.append(peer.bf16_flag)
    return cmd + (["--tta"] if settings.tta else [])


def score_rows(method: str, fold: int, records: Sequence["ImageRecord"], preds: dict[str, Any],
               seconds: float, overlay_dir: str | None = None, matching: str = "dsb"
               ) -> list[dict[str, Any]]:
    """One row per held-out record: competition score of ``preds[image_id]`` (label image,
    ``Runs``, RLE list or ``Instances``; missing = no prediction) under ``matching``, and
    ``score_<rule>`` under every rule."""
    from cellseg.core import metrics

    rows = []
    for r in records:
        truth = metrics.runs_from_rles(r.rles, r.shape)
        pred = metrics.as_runs(preds.get(r.image_id, []), r.shape)
        res = metrics.match_image(truth, pred, r.shape, image_id=r.image_id,
                                  cell_type=r.cell_type, matching=matching)
        rows.append({"method": method, "fold": fold, "image_id": r.image_id,
                     "cell_type": r.cell_type or "unknown", "source": r.source,
                     "score": float(res.score), "n_true": int(res.n_true),
                     "n_pred": int(res.n_pred), "seconds": round(seconds, 1),
                     **{f"score_{k}": float(v) for k, v in res.score_by_matching.items()}})
        if overlay_dir is not None:
            write_overlay(Path(overlay_dir) / f"{method}_{r.image_id}.png", r.read_image(),
                          truth, pred, res)
    return rows


def write_overlay(path: Path, image: np.ndarray, truth: Any, pred: Any, result: Any) -> None:
    """``cellseg.report.overlay`` (TP green, FP red, FN yellow at IoU > 0.5) as an RGB PNG."""
    from cellseg.io import write_png
    from cellseg.report import overlay

    rgb = (overlay(image, truth, pred, result) * 255).round().astype(np.uint8)
    write_png(path, rgb[..., ::-1])  # OpenCV writes BGR


def _peer_training_cost(mdir: Path, cost: Any) -> Any:
    """A peer trains and predicts in one process: its ``scores.json`` says how much CPU the
    loading and training took (``train_cpu_seconds``); the whole run's when it does not."""
    import json

    from cellseg.jobs import Timing

    try:
        cpu = json.loads((mdir / "scores.json").read_text())["train_cpu_seconds"]
    except (OSError, ValueError, KeyError):
        return cost
    return Timing(cost.wall, float(cpu))


def _kit_predict(ckpt: Path, records: Sequence["ImageRecord"], settings: CVSettings) -> dict:
    from cellseg.infer.config import load_inference_config
    from cellseg.infer.predict import load_models, predict_images

    overrides = list(settings.infer_overrides) + (["tta=[h,v,hv]"] if settings.tta else [])
    cfg = load_inference_config(settings.infer_config, overrides)
    models = load_models([ckpt], device="cpu")
    preds = predict_images(models, [r.read_image() for r in records], cfg,
                           cell_types=[None] * len(records), device="cpu")
    return {r.image_id: p for r, p in zip(records, preds)}


def run_fold(fold: int, held: Sequence["ImageRecord"], train: Sequence["ImageRecord"],
             out: Path, settings: CVSettings, log: Callable[[str], None] = print,
             unlabeled: Sequence["ImageRecord"] = ()) -> list[dict[str, Any]]:
    """Train and score every method of one fold (``unlabeled``: the ``kit_pl`` teacher's images);
    returns the score rows."""
    from cellseg.export import write_competition_folder
    from cellseg.io import write_json

    fold_dir = out / f"fold_{fold}"
    train_data, test_data = fold_dir / "train_data", fold_dir / "test_data"
    if not settings.report_only:  # (another process may be running this fold: leave it alone)
        write_competition_folder(train, train_data, store=out / "images")
        write_competition_folder(held, test_data, store=out / "images")
    rows: list[dict[str, Any]] = []
    infer_key = [settings.infer_config, list(settings.infer_overrides), settings.tta]
    pseudo_key = [list(settings.pseudo_images), settings.pseudo_min_score,
                  settings.pseudo_min_keep_fraction, settings.pseudo_min_cells,
                  settings.pseudo_tta]
    if settings.pseudo_ignore_dropped:  # only when set: results saved before it stay valid
        pseudo_key.append(True)
    for method in settings.methods:
        key = infer_key + pseudo_key if method == "kit_pl" else infer_key
        mdir = fold_dir / method
        done = mdir / "result.json"
        if method == "kit":
            cmd = kit_train_command(settings, train_data, len(train), mdir)
        elif method == "kit_pl":
            cmd = student_train_command(settings, train_data, len(train), fold_dir / "pseudo",
                                        mdir)
        elif method in PEER_BY_METHOD:
            cmd = peer_command(method, settings, train_data, test_data, mdir)
        else:
            raise ValueError(f"unknown cv method {method!r}; valid: {', '.join(METHODS)}")
        if (settings.resume or settings.report_only) and done.is_file():
            import json

            saved = json.loads(done.read_text())
            # reuse only a result of the same training command and inference settings
            if saved.get("command") == cmd and saved.get("infer", key) == key:
                for row in saved["rows"]:  # both rules are saved: pick this run's
                    row["score"] = row.get(f"score_{settings.matching}", row["score"])
                rows += saved["rows"]
                log(f"fold {fold} {method}: reused {done}")
                continue
            log(f"fold {fold} {method}: {done} was made with other settings; running again")
        if settings.report_only:
            log(f"fold {fold} {method}: not finished, left out of the report")
            continue
        if method == "kit":
            cost = run_logged(cmd, mdir / "train.log", settings.threads,
                              f"fold {fold} kit training")
            preds = _kit_predict(_kit_checkpoint(mdir), held, settings)
        elif method == "kit_pl":
            teacher = _kit_checkpoint(fold_dir / "kit")
            if not teacher.is_file():
                raise UserError(f"fold {fold} kit_pl: no teacher checkpoint", where=str(teacher),
                                fix="run the kit method first (or drop kit_pl)")
            t0 = time.perf_counter()
            prov = make_pseudo_labels(teacher, unlabeled, fold_dir / "pseudo", settings)
            c = prov["counts"]
            log(f"fold {fold} kit_pl: teacher {teacher} kept {c['cells']} of "
                f"{c['cells_predicted']} cells on {c['accepted']}/{c['images']} images "
                f"[{time.perf_counter() - t0:.0f} s]")
            if not c["accepted"]:
                raise UserError(f"fold {fold}: the teacher's pseudo-labels rejected all "
                                f"{c['images']} images",
                                where=str(fold_dir / "pseudo" / "pseudo_label.json"),
                                fix="lower --pseudo-min-score / --pseudo-min-keep-fraction / "
                                    "--pseudo-min-cells, or train the teacher longer (--steps)")
            cost = run_logged(cmd, mdir / "train.log", settings.threads,
                              f"fold {fold} kit_pl student training")
            preds = _kit_predict(_kit_checkpoint(mdir), held, settings)
        else:
            cost = run_logged(cmd, mdir / "train.log", settings.threads,
                              f"fold {fold} peer {method}")
            from cellseg.core.submission import read_submission

            preds = dict(read_submission(mdir / "pred.csv"))
            cost = _peer_training_cost(mdir, cost)
        if method != "plain":  # (plain writes its own pred.csv) kept for `cellseg cv --report`
            from cellseg.core.submission import write_submission

            write_submission(mdir / "pred.csv", [(r.image_id, preds[r.image_id]) for r in held])
        fold_rows = score_rows(method, fold, held, preds, cost.wall, settings.overlays,
                               settings.matching)
        for row in fold_rows:  # the fold's training CPU, the budget the methods share
            row["cpu_seconds"] = round(cost.cpu, 1)
        write_json(done, {"command": cmd, "infer": key, "rows": fold_rows})
        rows += fold_rows
        log(f"fold {fold} {method}: " + ", ".join(f"{r['image_id']} {r['score']:.4f} "
                                                   f"({r['n_pred']}/{r['n_true']} cells)"
                                                   for r in fold_rows)
            + f" [{cost.wall:.0f} s, {cost.cpu / 60:.1f} CPU-min]")
    return rows


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean ± sd over images, per cell type, per fold, and the image scores."""
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        types = sorted({r["cell_type"] for r in mine})
        folds = sorted({r["fold"] for r in mine})
        per_type = {t: _mean_sd([r["score"] for r in mine if r["cell_type"] == t])
                    for t in types}
        out[method] = {
            **_mean_sd([r["score"] for r in mine]),
            "per_cell_type": per_type,
            # the mean under each matching rule, overall and per type (rows of older runs lack it)
            "by_matching": {rule: {"all": _mean_sd([r[f"score_{rule}"] for r in mine])["mean"],
                                   **{t: _mean_sd([r[f"score_{rule}"] for r in mine
                                                   if r["cell_type"] == t])["mean"]
                                      for t in types}}
                            for rule in ("dsb", "greedy")
                            if all(f"score_{rule}" in r for r in mine)},
            # the mean of the per-type means: what the score would be if every type had as many
            # images (a fold's own mix, e.g. 56 cort of 82, otherwise decides the mean)
            "types_equal": float(np.mean([v["mean"] for v in per_type.values()])),
            "per_fold": {str(f): _mean_sd([r["score"] for r in mine if r["fold"] == f])["mean"]
                         for f in folds},
            "per_image": {r["image_id"]: r["score"] for r in mine},
            "n_pred": int(sum(r["n_pred"] for r in mine)),
            "n_true": int(sum(r["n_true"] for r in mine)),
            # every row of a fold carries that fold's training cost: count each fold once
            "seconds": float(sum({r["fold"]: r["seconds"] for r in mine}.values())),
            "cpu_minutes": float(sum({r["fold"]: r.get("cpu_seconds", 0.0)
                                      for r in mine}.values())) / 60,
        }
    return out


def format_table(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The printed report: one line per method (mean ± sd, per cell type), then per image."""
    methods = list(summary)
    types = sorted({r["cell_type"] for r in rows})
    n_type = {t: len({r["image_id"] for r in rows if r["cell_type"] == t}) for t in types}
    mw = max([8, *map(len, methods)])
    head = f"{'method':<{mw}} {'score (mean ± sd)':>18} " + " ".join(
        f"{f'{t} ({n_type[t]})':>14}" for t in types) + (
        f" {'types equal':>11}" if len(types) > 1 else "") + f" {'CPU-min':>8}"
    lines = [head]
    for m in methods:
        s = summary[m]
        pt = s["per_cell_type"]
        cells = " ".join(f"{pt[t]['mean']:>7.4f}±{pt[t]['sd']:<6.4f}" if t in pt else f"{'-':>14}"
                         for t in types)
        cpu = f"{s['cpu_minutes']:>8.1f}" if s.get("cpu_minutes") else f"{'-':>8}"
        if len(types) > 1:
            cells += f" {s['types_equal']:>11.4f}" if "types_equal" in s else f" {'-':>11}"
        lines.append(f"{m:<{mw}} {s['mean']:>9.4f} ± {s['sd']:<6.4f} {cells} {cpu}")
    rules = {rule: [m for m in methods if rule in summary[m].get("by_matching", {})]
             for rule in ("dsb", "greedy")}
    differ = [m for m in methods if len({round(v["all"], 6) for v in
                                         summary[m].get("by_matching", {}).values()}) > 1]
    if differ:
        lines.append("matching rules differ (overlapping truth): " + "; ".join(
            f"{m} " + ", ".join(f"{rule} {summary[m]['by_matching'][rule]['all']:.4f}"
                                for rule in rules if m in rules[rule]) for m in differ))
    lines.append("")
    lines.append(f"{'fold':>4} {'image':<36} {'type':<8} {'true':>5} " +
                 " ".join(f"{m + ' score':>11} {m + ' pred':>9}" for m in methods))
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        key = (r["fold"], r["image_id"], r["cell_type"], r["n_true"])
        by_key.setdefault(key, {})[r["method"]] = r
    for (fold, image_id, ctype, n_true), per in sorted(by_key.items()):
        cells = " ".join(f"{per[m]['score']:>11.4f} {per[m]['n_pred']:>9d}" if m in per
                         else f"{'-':>11} {'-':>9}" for m in methods)
        lines.append(f"{fold:>4} {image_id:<36} {ctype:<8} {n_true:>5} {cells}")
    return "\n".join(lines)


def plot_scores(path: Path, summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """``path`` (PNG, written atomically): one group of bars per held-out image (label: cell type
    and image id), one bar per method; the legend gives each method's mean ± sd."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cellseg.io import atomic_path

    methods = list(summary)
    images = list(dict.fromkeys((r["cell_type"], r["image_id"]) for r in rows))
    score = {(r["method"], r["image_id"]): r["score"] for r in rows}
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(images) + 2.5), 3.8))
    for j, m in enumerate(methods):
        x = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(images))]
        ax.bar(x, [score.get((m, i), 0.0) for _, i in images], width,
               label=f"{m}: {summary[m]['mean']:.3f} ± {summary[m]['sd']:.3f}")
    ax.set_xticks(range(len(images)))
    ax.set_xticklabels([f"{t}\n{i[:14]}" for t, i in images], fontsize=7)
    ax.set_ylabel("competition score (held out)")
    ax.set_title("cross-validation: each image scored by the model that never saw it", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_reports(out: Path, settings: CVSettings, folds: list[list[str]],
                  rows: list[dict[str, Any]], extra: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Write ``out/cv.json``, ``out/cv.csv`` and the bar chart ``out/cv.png`` atomically; return
    the summary."""
    import csv
    import dataclasses

    from cellseg.io import atomic_open, write_json

    summary = summarise(rows)
    write_json(out / "cv.json", {"settings": dataclasses.asdict(settings), "folds": folds,
                                 "summary": summary, "rows": rows, **(extra or {})})
    keys = ["method", "fold", "image_id", "cell_type", "source", "score", "n_true", "n_pred",
            "seconds", "score_dsb", "score_greedy"]
    with atomic_open(out / "cv.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    if rows:
        plot_scores(out / "cv.png", summary, rows)
    return summary


def run_cv(records: Sequence["ImageRecord"], out: str | os.PathLike, settings: CVSettings,
           log: Callable[[str], None] = print, extra: dict[str, Any] | None = None
           ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cross-validate ``settings.methods`` over the annotated ``records``; returns (summary, rows)
    and writes the reports after every fold (a killed run keeps what it finished)."""
    records = [r for r in records if r.rles]
    folds = make_cv_folds(records, settings.n_folds, settings.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_id = {r.image_id: r for r in records}
    unlabeled = unlabeled_records(settings, records) if "kit_pl" in settings.methods else []
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for k, held_ids in enumerate(folds):
        held = [by_id[i] for i in held_ids]
        train = [r for r in records if r.image_id not in set(held_ids)]
        # --only-fold: the other folds are reported when finished (by another process, say)
        mine = not settings.only_folds or k in settings.only_folds
        fold_settings = settings if mine else dataclasses.replace(settings, report_only=True)
        rows += run_fold(k, held, train, out, fold_settings, log if mine else (lambda m: None),
                         unlabeled)
        summary = write_reports(out, settings, folds, rows, extra)
    return summary, rows
