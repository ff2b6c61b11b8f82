"""The ``s4kit`` command line (DESIGN.md "Commands and the run folder").

    s4kit data digits [--root DIR] [--seed N]
    s4kit data coco --root DIR [--annotations FILE ...] [--limit N]
    s4kit train CONFIG [key=value ...] [--force-eval]
    s4kit presets
    s4kit config CONFIG [key=value ...]
    s4kit eval RUN_DIR [key=value ...]
    s4kit predict RUN_DIR IMAGE|FOLDER ... --out DIR [--device D] [--checkpoint last|best] [--mode sliding|full]
    s4kit reproduce --method M --dataset D --split S [--seed N] [-p KEY VALUE ...] [--out DIR]
    s4kit viz RUN_DIR [RUN_DIR ...] [--out FILE]
    s4kit report RUNS_DIR [--csv]
    s4kit export RUN_DIR --out model.safetensors
    s4kit import allspark CKPT --out RUN_DIR [--config PRESET] [key=value ...]

A user's mistake (unknown preset or key, bad value, missing split file, bad label, corrupt
checkpoint) and an I/O failure (permission, no space) print one line ``s4kit: error: ...``
naming the file or key and exit with status 2; a bug keeps its traceback, exits with 1 and
asks to be reported.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import S4kitError


def _data(args) -> None:
    from .data.digits import DigitsSpec, write_digits

    if args.dataset == "coco":
        return _data_coco(args)
    if args.dataset != "digits":
        raise S4kitError(f"'s4kit data {args.dataset}': only the embedded digits dataset and COCO's masks can be "
                         "built; PASCAL VOC and Cityscapes are downloaded from their official sites "
                         "(see data/README.md)")
    if args.annotations or args.limit is not None:
        raise S4kitError("'s4kit data digits': --annotations and --limit are options of 's4kit data coco'")
    root = write_digits(args.root or "data/digits", seed=args.seed, spec=DigitsSpec())
    print(f"digits written to {root} (splits in {Path(root) / 'splits'})")


def _data_coco(args) -> None:
    """COCO's semantic masks ``<root>/masks/*.png`` from the instances files (needs pycocotools)."""
    from .data.coco import build_coco_masks

    if args.limit is not None and args.limit < 1:
        raise S4kitError(f"--limit {args.limit}: expected a positive number of images")
    root = Path(args.root or "data/coco")
    files = args.annotations or [root / "annotations" / f"instances_{part}2017.json" for part in ("train", "val")]
    for ann in files:
        written = build_coco_masks(ann, root / "masks", limit=args.limit)
        print(f"{len(written)} masks from {ann} in {root / 'masks'}")


def _train(args) -> None:
    from .config import load_config
    from .engine import train

    cfg = load_config(args.config, args.overrides)
    if not args.force_eval:
        from .engine.trainer import finished_run

        done = finished_run(cfg)
        if done is not None:
            miou = done.get("miou")
            shown = f"mIoU {miou:.2f}, " if isinstance(miou, (int, float)) else ""
            print(f"already finished: {cfg.run.dir} ({shown}{done.get('iters')} iterations); "
                  "--force-eval evaluates it again, a larger train.iters extends it")
            return
    metrics = train(cfg)
    from . import dist

    if dist.rank() == 0:
        print(_summary(metrics, cfg.run.dir))


def _summary(m: dict, run_dir=None) -> str:
    """The final lines of ``train`` and ``eval``: one ``key: value`` a line, numbers to 2 decimals,
    ``n/a`` for a measure that could not be taken (None or NaN), then the run folder."""
    keys = ["method", "dataset", "split", "seed", "iters", "miou", "pixel_acc", "pseudo_label_precision",
            "pseudo_label_coverage", "train_seconds"]

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"{k:>24}: {cell(m[k])}" for k in keys if k in m]
    if run_dir:
        lines.append(f"{'run folder':>24}: {run_dir}")
    return "\n".join(lines)


def _presets(args) -> None:
    """Every preset, one a line: name, method, network (encoder), the first line of its comment."""
    from .config import available_presets, load_config, preset_path
    from .engine.report import PRESET_CARD

    rows = []
    for name in available_presets():
        cfg = load_config(name, [PRESET_CARD])
        m = cfg.model
        encoder = m.encoder if m.name == "segformer" else m.backbone
        rows.append((name, cfg.method.name, f"{m.name} ({encoder})", _header_line(preset_path(name))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])


def _header_line(path: Path) -> str:
    """The first line of a YAML file's leading comment block ("" when the file starts with a key)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            return ""
        if line.lstrip("# ").strip():
            return line.lstrip("# ").strip()
    return ""


def _config(args) -> None:
    """The fully resolved config of a preset or YAML file with overrides, as ``train`` would save it."""
    from .config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")


def _eval(args) -> None:
    from .engine.runs import evaluate_run

    result = evaluate_run(args.run_dir, args.overrides)
    print(_summary(result, args.run_dir))


def _predict(args) -> None:
    """Segment the user's images; unreadable ones are named as they come, then summed up in one
    error line (exit 2) after every other image was written."""
    from .engine.predict import predict_run

    result = predict_run(args.run_dir, args.images, args.out, device=args.device, checkpoint=args.checkpoint,
                         mode=args.mode)
    done = result["images"] - len(result["failed"])
    print(f"segmented {done} of {result['images']} images: {len(result['written'])} files in {args.out}")
    if result["failed"]:
        names = ", ".join(str(path) for path, _ in result["failed"])
        raise S4kitError(f"{len(result['failed'])} of {result['images']} images could not be read: {names}")


def _reproduce(args) -> None:
    from .engine.reproduce import reproduce

    params = {k: v for k, v in (args.param or [])}
    out = reproduce(args.method, args.dataset, args.split, args.seed, params, args.out)
    print(f"executed notebook: {out}")


def _viz(args) -> None:
    from .engine.latent import comparison_path, viz_runs

    results = viz_runs(args.run_dirs, args.out)
    for run, m in results.items():
        print(f"{run}: silhouette {m['silhouette']:.3f}, kNN accuracy {m['knn_accuracy']:.1f}%, "
              f"prototype distance {m['proto_distance']:.3f}")
    written = [Path(run) / "figures" / "tsne_evolution.png" for run in results]
    if results:
        written.append(comparison_path(args.run_dirs, args.out))
    for path in written:
        print(f"wrote {path}")


def _report(args) -> None:
    from .engine.report import report_table

    skipped: list[str] = []
    print(report_table(args.runs_dir, csv=args.csv, skipped=skipped))
    for item in skipped:
        print(f"s4kit: skipped unreadable {item}", file=sys.stderr)


def _export(args) -> None:
    from .engine.runs import export_run

    out = export_run(args.run_dir, args.out, force=args.force)
    print(f"weights written to {out} (safetensors; the run's config is in its metadata)")


def _import(args) -> None:
    from .engine.importers import import_allspark

    run = import_allspark(args.ckpt, args.out, args.config, args.overrides)
    print(f"imported {args.ckpt} into {run}; evaluate it with: s4kit eval {run}")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every ``s4kit`` subcommand."""
    from . import __version__

    p = argparse.ArgumentParser(prog="s4kit", description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--version", action="version", version=f"s4kit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="build the embedded digits dataset, or COCO's masks, on disk")
    d.add_argument("dataset", help="digits | coco")
    d.add_argument("--root", default=None, help="output folder (default data/digits); for coco the folder "
                   "holding annotations/, where masks/ is written (default data/coco)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--annotations", nargs="+", default=None, metavar="FILE",
                   help="coco: instances_*.json files (default <root>/annotations/instances_{train,val}2017.json)")
    d.add_argument("--limit", type=int, default=None, help="coco: only the first N images of each file")
    d.set_defaults(fn=_data)
    t = sub.add_parser("train", help="one training run (python -m s4kit.run train under torchrun)",
                       description="One training run into run.dir (default runs/<dataset>/<preset>/<split>/seed<k>). "
                                   "The same command again resumes an interrupted run from checkpoints/last.pt; "
                                   "a finished run is reported, not redone (--force-eval evaluates it again); "
                                   "a larger train.iters extends it.")
    t.add_argument("config", help="preset (digits/reco, pascal/prcl, ...) or YAML path")
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.add_argument("--force-eval", action="store_true",
                   help="a finished run: evaluate its checkpoint again and rewrite metrics.json")
    t.set_defaults(fn=_train)
    ps = sub.add_parser("presets", help="list every preset: method, network and what it is")
    ps.set_defaults(fn=_presets)
    cf = sub.add_parser("config", help="print a preset's fully resolved config (YAML), overrides applied")
    cf.add_argument("config", help="preset (digits/reco, pascal/prcl, ...) or YAML path")
    cf.add_argument("overrides", nargs="*", help="key=value config overrides")
    cf.set_defaults(fn=_config)
    e = sub.add_parser("eval", help="evaluate a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="key=value overrides (eval.mode=sliding, ...)")
    e.set_defaults(fn=_eval)
    pr = sub.add_parser("predict", help="segment your own images with a trained run",
                        description="Segment images (files, or folders searched recursively for .png .jpg .jpeg "
                                    ".bmp .webp) with a run's checkpoint, along its evaluation path (the EMA teacher "
                                    "where it evaluates with it; sliding windows of the training crop). Writes "
                                    "<name>_mask.png (palette PNG of class ids), <name>_overlay.png, "
                                    "<name>_uncertainty.png (entropy / log K) and, for prcl, <name>_sigma2.png.")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders")
    pr.add_argument("--out", required=True, help="output folder (created; never a file)")
    pr.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    pr.add_argument("--checkpoint", default="last", choices=["last", "best"],
                    help="checkpoints/last.pt, or best.pt (the last one when metrics.json says it was the best)")
    pr.add_argument("--mode", default="sliding", choices=["sliding", "full"],
                    help="sliding: windows of eval.window or data.crop_size (one pass when the image fits); "
                         "full: one pass over the whole image")
    pr.set_defaults(fn=_predict)
    r = sub.add_parser("reproduce", help="papermill: notebooks/reproduce.ipynb -> RUN_DIR")
    from .config import available_presets

    presets = [name.split("/") for name in available_presets()]
    r.add_argument("--method", required=True,
                   help=f"the preset's name: {', '.join(sorted({m for _, m in presets}))} (s4kit presets)")
    r.add_argument("--dataset", default="digits", help=f"{', '.join(sorted({d for d, _ in presets}))} (default digits)")
    r.add_argument("--split", required=True,
                   help="digits: 1_32 1_16 1_8 1_4 full; pascal: 92 183 366 732 1464 1_16 1_8 1_4 u2pl_1_16 ...; "
                        "cityscapes: 1_16 1_8 1_4 1_2; coco: 1_512 1_256 1_128 1_64 1_32")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (FAST, MAX_ITERS, DEVICE, DATA_ROOT, OVERRIDES)")
    r.add_argument("--out", default=None, help="run folder (default runs/<dataset>/<method>/<split>/seed<N>)")
    r.set_defaults(fn=_reproduce)
    v = sub.add_parser("viz", help="latent-space figures and measures from runs' snapshots")
    v.add_argument("run_dirs", nargs="+")
    v.add_argument("--out", default=None, help="side-by-side figure (default <parent>/latent_space.png)")
    v.set_defaults(fn=_viz)
    rep = sub.add_parser("report", help="Markdown table of every metrics.json below RUNS_DIR")
    rep.add_argument("runs_dir")
    rep.add_argument("--csv", action="store_true",
                     help="CSV instead of Markdown: numeric mean and std columns per measure, empty where there is no value")
    rep.set_defaults(fn=_report)
    x = sub.add_parser("export", help="a run's weights as a .safetensors file (tensors only) for sharing")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="output file, e.g. model.safetensors")
    x.add_argument("--force", action="store_true", help="replace --out if it exists")
    x.set_defaults(fn=_export)
    im = sub.add_parser("import", help="an official checkpoint as an s4kit run folder (s4kit eval reads it)")
    im.add_argument("method", choices=["allspark"], help="whose checkpoint: allspark (xmed-lab/AllSpark)")
    im.add_argument("ckpt", help="the official checkpoint (latest.pth / best.pth)")
    im.add_argument("--out", required=True, help="the new run folder")
    im.add_argument("--config", default=None,
                    help="preset or YAML (default by class count: 21 pascal/allspark, 19 cityscapes/allspark, "
                         "81 coco/allspark)")
    im.add_argument("overrides", nargs="*", help="key=value config overrides (data.root=..., data.crop_size=...)")
    im.set_defaults(fn=_import)
    return p


def one_line(exc: BaseException) -> str:
    """The message of a user error or I/O failure as one line (an ``OSError`` names its file)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else " ".join(lines)[:500]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 a bug in s4kit, 2 user error or I/O failure,
    130 interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "import":  # key=value overrides may follow --out
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.fn(args)
    except (S4kitError, OSError) as exc:
        print(f"s4kit: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s4kit: interrupted; run the same command again to resume from checkpoints/last.pt", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: keep the traceback, ask for a report
        import traceback

        traceback.print_exc()
        print("s4kit: internal error: this is a bug in s4kit, not in your input; please report it with the "
              "command and the traceback above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
