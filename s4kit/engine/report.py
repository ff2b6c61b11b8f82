"""``s4kit report RUNS_DIR``: one table row per (dataset, method, split) over seeds, with the
paper's number and protocol beside s4kit's; ``protocol_markdown()`` builds docs/protocols.md."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import SPLIT_FAMILIES, ConfigError

METHOD_ORDER = ["supervised", "meanteacher", "reco", "css", "prcl", "supervised_maskformer", "rc2l", "allspark"]
MODEL_ORDER = ["", "maskformer", "segformer"]  # DeepLabV3+ methods first, then each head with its baseline


REQUIRED = ("method", "dataset", "split", "miou")


def collect_metrics(runs_dir: str | Path, skipped: list[str] | None = None) -> list[dict]:
    """Every readable ``metrics.json`` below ``runs_dir`` (with its folder as ``run_dir``).

    A file that is empty, not JSON, or lacks one of ``REQUIRED`` is left out and, when
    ``skipped`` is a list, appended to it as ``"<path> (<reason>)"``: one broken run never
    hides the others. Raises ``ConfigError`` if ``runs_dir`` is not a folder.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no such folder")
    out = []
    for p in sorted(runs_dir.rglob("metrics.json")):
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(m, dict):
                raise ValueError(f"a JSON {type(m).__name__}, not an object")
            missing = [k for k in REQUIRED if k not in m]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except (OSError, ValueError) as exc:
            if skipped is not None:
                skipped.append(f"{p} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        m["run_dir"] = str(p.parent)
        out.append(m)
    return out


def _mean_std(values: list[float], digits: int = 1) -> str:
    """``mean ± sample std`` (or the single value) of the non-missing values, else a dash."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std) of the non-missing values; std None for one value, both None for none."""
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def bootstrap_ci(values, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (one number per seed).

    Draws ``n_resamples`` samples of n = len(values) seeds with replacement (numpy
    ``default_rng(seed)``: the same interval every time), takes each sample's mean, and
    returns the (1 - level)/2 and (1 + level)/2 percentiles of those means (linear
    interpolation, as ``np.percentile`` and scipy's ``bootstrap(method="percentile")``).
    Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), §13.3. With fewer than two
    values there is no spread to resample: returns ``None`` (shown as n/a).
    """
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    # theta*_b = mean_i v[I_bi],  I_bi ~ U{0..n-1} i.i.d.,  b = 1..n_resamples
    means = v[rng.integers(0, len(v), size=(n_resamples, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _read_config(path: Path) -> DictConfig | None:
    """A run's ``config.yaml`` as written (not re-resolved: old runs stay readable), or None."""
    from ..config import _read_yaml

    try:
        return _read_yaml(path) if path.is_file() else None
    except ConfigError:
        return None


# Reading a preset's protocol card needs no weights file: the ImageNet-weights check
# (config._require_pretrained) is for training runs.
PRESET_CARD = "model.pretrained=none"


def run_config(m: dict) -> DictConfig | None:
    """The config behind a metrics entry: its run's ``config.yaml``, else the preset
    ``<dataset>/<method>`` (a metrics.json copied without its folder), else None."""
    cfg = _read_config(Path(m.get("run_dir", "")) / "config.yaml") if m.get("run_dir") else None
    if cfg is not None:
        return cfg
    from ..config import available_presets, load_config

    name = f"{m.get('dataset')}/{m.get('method')}"
    if name in available_presets():
        try:
            return load_config(name, [PRESET_CARD])
        except ConfigError:
            return None
    return None


def paper_result(cfg: DictConfig | None, split: str) -> dict | None:
    """The ``paper`` entry of ``cfg`` for ``split`` (a plain dict), or None."""
    if cfg is None:
        return None
    for r in OmegaConf.select(cfg, "paper", default=None) or []:
        if str(r.get("split")) == str(split):
            return OmegaConf.to_container(r) if isinstance(r, DictConfig) else dict(r)
    return None


def _has_card(cfg: DictConfig | None) -> bool:
    return cfg is not None and bool(str(OmegaConf.select(cfg, "protocol.source", default="") or "").strip())


def summarize(metrics: list[dict]) -> list[dict]:
    """Group runs by (dataset, method, model, split); mean ± sample std over seeds, the paper's
    number for the split (from the run's protocol card) and a 95 % bootstrap interval of the
    mean mIoU over seeds (``bootstrap_ci``)."""
    groups: dict[tuple, list[dict]] = {}
    for m in metrics:
        key = (m["dataset"], m["method"], m.get("model", ""), m["split"])
        groups.setdefault(key, []).append(m)

    def order(key):
        d, meth, model, split = key
        return (d, split, MODEL_ORDER.index(model) if model in MODEL_ORDER else 99,
                METHOD_ORDER.index(meth) if meth in METHOD_ORDER else 99, meth, model)

    rows = []
    for key in sorted(groups, key=order):
        ms = groups[key]
        label = key[1] + (f" ({key[2]})" if key[2] and key[2] not in key[1] else "")
        cfg = run_config(ms[0])
        paper = paper_result(cfg, key[3])
        ci = bootstrap_ci([m["miou"] for m in ms])
        rows.append({"dataset": key[0], "method": label, "split": key[3],
                     "preset": f"{key[0]}/{key[1]}", "config": cfg if _has_card(cfg) else None,
                     "paper": _paper_cell(paper), "paper_miou": None if paper is None else paper["miou"],
                     "ci95": "n/a" if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]",
                     "ci95_low": None if ci is None else ci[0], "ci95_high": None if ci is None else ci[1],
                     "n_labeled": ms[0].get("n_labeled", ""), "seeds": len(ms),
                     "miou": _mean_std([m["miou"] for m in ms]), "mious": [m["miou"] for m in ms],
                     "pl_precision": _mean_std([m.get("pseudo_label_precision") for m in ms]),
                     "pl_coverage": _mean_std([m.get("pseudo_label_coverage") for m in ms]),
                     "silhouette": _mean_std([m.get("silhouette") for m in ms], 2),
                     "knn_accuracy": _mean_std([m.get("knn_accuracy") for m in ms]),
                     **{f"{k}_{stat}": value for k, key in STAT_KEYS.items()
                        for stat, value in zip(("mean", "std"), _stats([m.get(key) for m in ms]))},
                     "iters": ms[0].get("iters", ""),
                     "minutes": f"{np.mean([m.get('train_seconds', 0) for m in ms]) / 60:.1f}"})
    return rows


def _paper_cell(paper: dict | None) -> str:
    """``68.09 ± 4.89`` / ``57.12`` / ``n/a`` (no published number for this split)."""
    if paper is None:
        return "n/a"
    std = paper.get("std")
    return f"{paper['miou']:.2f}" + (f" ± {std:.2f}" if std is not None else "")


COLUMNS = [("dataset", "dataset"), ("method", "method"), ("split", "split"), ("n_labeled", "labeled"),
           ("seeds", "seeds"), ("miou", "mIoU (%)"), ("paper", "paper (%)"), ("ci95", "95% CI (seeds)"),
           ("pl_precision", "PL precision (%)"),
           ("pl_coverage", "PL coverage (%)"), ("silhouette", "silhouette"), ("knn_accuracy", "kNN acc (%)"),
           ("iters", "iters"), ("minutes", "train min")]


# CSV: the numbers themselves (empty where there is none), not the Markdown cells: mean and
# sample std over seeds of each measure (std empty for one seed), the paper number, the interval
STAT_KEYS = {"miou": "miou", "pl_precision": "pseudo_label_precision", "pl_coverage": "pseudo_label_coverage",
             "silhouette": "silhouette", "knn_accuracy": "knn_accuracy"}
CSV_COLUMNS = (["dataset", "method", "split", "n_labeled", "seeds"]
               + [f"{k}_{stat}" for k in STAT_KEYS for stat in ("mean", "std")]
               + ["paper_miou", "ci95_low", "ci95_high", "iters", "minutes"])


def report_table(runs_dir: str | Path, csv: bool = False, skipped: list[str] | None = None) -> str:
    """Markdown (or CSV) table of every run below ``runs_dir``; unreadable metrics files go to
    ``skipped`` (see ``collect_metrics``). Raises ``ConfigError`` if no run is readable.

    Markdown: one row per (dataset, method, network, split) with the paper's number and the
    95 % bootstrap interval of s4kit's mean over seeds, then one protocol line per preset
    whose runs carry a protocol card (``protocol_line``). CSV: ``CSV_COLUMNS``; the paper
    number and interval bounds are plain numbers, empty where there is none."""
    skipped = [] if skipped is None else skipped
    rows = summarize(collect_metrics(runs_dir, skipped))
    if not rows:
        raise ConfigError(f"{runs_dir}: no readable metrics.json below this folder ({len(skipped)} unreadable, "
                          f"e.g. {skipped[0]})" if skipped else f"{runs_dir}: no metrics.json below this folder")
    if csv:
        return _csv(rows)
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep] + ["| " + " | ".join(str(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    protocols: dict[str, str] = {}
    for r in rows:
        if r["config"] is not None and r["preset"] not in protocols:
            protocols[r["preset"]] = protocol_line(r["config"])
    if protocols:
        lines += ["", "Protocols (the paper's; then where these runs differ from it; paper numbers are the "
                  "paper's checkpoint rule, s4kit's mIoU the last checkpoint):", ""]
        lines += [f"- **{name}**: {line}" for name, line in protocols.items()]
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r[k] is None or r[k] == "" else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])
                    for k in CSV_COLUMNS])
    return buf.getvalue().rstrip("\n")


# ----------------------------------------------------------------------------- protocol cards

_DENOMINATOR = {"all_classes": "every class in the batch (the code)",
                "anchor_classes": "classes with hard anchors (s4kit default)"}
_GPU = lambda n: f"{n} GPU" + ("s" if n != 1 else "")  # noqa: E731


def _sel(cfg: DictConfig, key: str, default=None):
    value = OmegaConf.select(cfg, key, default=default)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _size(x) -> str:
    return "–" if x is None else f"{x[0]}x{x[1]}"


def _range(x) -> str:
    return "–" if x is None else f"{x[0]:g}-{x[1]:g}"


def _eval_text(mode: str, window: int) -> str:
    if not mode:
        return "unknown"
    return mode + (f" {window}" if window and mode in ("sliding", "crop", "pad") else "")


def protocol_items(cfg: DictConfig) -> list[tuple[str, str, str, bool]]:
    """``(item, paper, s4kit, differs)`` for every protocol item of ``cfg`` (a resolved config
    or a run's ``config.yaml``): the paper's value from ``protocol``, the value the preset
    actually trains and evaluates with, and whether they differ. Unknown paper values show
    as "unknown" and never differ.

    The global batch of s4kit is the per-process batch times the paper's GPU count (what
    ``torchrun --nproc_per_node <gpus>`` gives); the contrast-loss denominator compares
    ``protocol.loss_denominator`` with ``method.literal_denominator``.
    """
    from ..methods import method_class, method_options  # late import: methods import config

    p = lambda k, d=None: _sel(cfg, f"protocol.{k}", d)  # noqa: E731
    name = _sel(cfg, "method.name", "supervised")
    try:
        fields = set(method_options(name).__dataclass_fields__)
        uses_unlabeled = method_class(name).uses_unlabeled
    except ConfigError:
        fields, uses_unlabeled = set(), True
    model = _sel(cfg, "model.name", "deeplabv3plus")
    items: list[tuple[str, str, str, bool]] = []

    def add(item, paper_value, ours, known=True, differs=None):
        paper_text = paper_value if known else "unknown"
        items.append((item, paper_text, ours, bool(known and (paper_value != ours if differs is None else differs))))

    family = p("split_family", "")
    add("split lists", family or "unknown", f"data.split={_sel(cfg, 'data.split')}", differs=False)
    add("backbone", p("backbone", "") or "unknown",
        f"{model}, " + (_sel(cfg, "model.encoder") if model == "segformer" else _sel(cfg, "model.backbone")),
        differs=False)
    resize, ours_resize = p("resize"), _sel(cfg, "data.resize")
    if resize is not None or ours_resize is not None:
        add("images resized to", _size(resize), _size(ours_resize), differs=resize != ours_resize)
    crop = p("crop", 0)
    add("crop", str(crop), str(_sel(cfg, "data.crop_size")), known=crop > 0)
    os_ours = None if model == "segformer" else _sel(cfg, "model.output_stride")
    os_paper = p("output_stride")
    add("output stride", "–" if os_paper is None else str(os_paper), "–" if os_ours is None else str(os_ours),
        known=os_paper is not None or model == "segformer")
    scale = p("scale_range")
    add("scale range (labeled)", _range(scale), _range(_sel(cfg, "data.scale_range")),
        known=scale is not None, differs=scale is not None and [float(x) for x in scale]
        != [float(x) for x in _sel(cfg, "data.scale_range")])
    gpus, bl, bu = p("gpus", 0), p("batch_labeled", 0), p("batch_unlabeled", 0)
    l_ours = _sel(cfg, "train.batch_labeled")
    u_ours = _sel(cfg, "train.batch_unlabeled") if uses_unlabeled else 0
    n = gpus or 1
    add("global batch (labeled+unlabeled)", f"{bl}+{bu} on {_GPU(gpus)}",
        f"{l_ours}+{u_ours} per process" + (f" x {gpus} = {l_ours * n}+{u_ours * n}" if gpus > 1 else ""),
        known=gpus > 0 and bl > 0, differs=(l_ours * n, u_ours * n) != (bl, bu))
    iters = p("iters", 0)
    add("iterations", str(iters), str(_sel(cfg, "train.iters")), known=iters > 0)
    sup = p("sup_loss", "")
    ours_sup = "set" if model == "maskformer" else (_sel(cfg, "method.sup_loss", "ce") if "sup_loss" in fields else "ce")
    add("supervised loss", sup, ours_sup, known=bool(sup))
    mix = p("mix", "")
    add("mixing", mix, _sel(cfg, "augment.mix") if uses_unlabeled else "none", known=bool(mix))
    mode, window = p("eval_mode", ""), p("eval_window", 0)
    e_mode = _sel(cfg, "eval.mode")
    e_window = (_sel(cfg, "eval.window", 0) or _sel(cfg, "data.crop_size")) if e_mode in ("sliding", "crop") else 0
    add("evaluation", _eval_text(mode, window), _eval_text(e_mode, e_window), known=bool(mode),
        differs=mode != e_mode or (bool(window) and mode in ("sliding", "crop") and window != e_window))
    ckpt = p("checkpoint", "")
    add("checkpoint reported", ckpt, "last (best_miou beside it in metrics.json)", known=bool(ckpt),
        differs=ckpt != "last")
    who = p("eval_model", "")
    ours_who = _sel(cfg, "eval.model", "teacher") if "ema_alpha" in fields else "student"
    add("network evaluated", who, ours_who, known=bool(who))
    if "literal_denominator" in fields:
        den = p("loss_denominator", "")
        ours_den = "all_classes" if _sel(cfg, "method.literal_denominator", False) else "anchor_classes"
        add("contrast-loss denominator", _DENOMINATOR.get(den, ""),
            _DENOMINATOR[ours_den] + ("" if ours_den == "all_classes" else "; method.literal_denominator=true: the code"),
            known=bool(den), differs=den != ours_den)
    return items


def protocol_line(cfg: DictConfig) -> str:
    """One line: the paper's protocol of ``cfg`` (its source, then every known item), then the
    items where ``cfg`` trains or evaluates differently ("s4kit: ...")."""
    items = protocol_items(cfg)
    skip = ("split lists", "backbone")
    known = [f"{item} {paper}" for item, paper, _, _ in items if paper not in ("unknown", "–") and item not in skip]
    family = _sel(cfg, "protocol.split_family", "") or "unknown"
    head = f"{_sel(cfg, 'protocol.source')}; {family} split lists"
    line = head + ("; " + "; ".join(known) if known else "; protocol unknown")
    diffs = [f"{item} {ours}" for item, _, ours, differs in items if differs]
    return line + (" — s4kit: " + "; ".join(diffs) if diffs else " — s4kit: as the paper")


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def protocol_markdown() -> str:
    """``docs/protocols.md``: one section per pascal/cityscapes preset with a protocol card
    (``config.protocol``, ``config.paper``): the paper's protocol beside the preset's own
    values (differences marked), the paper's numbers per split with their source, the notes.

    Built only from the presets, so ``tests/test_protocols.py`` can check the committed page
    is up to date; regenerate with ``python -m s4kit.engine.report docs/protocols.md``.
    """
    from ..config import available_presets, load_config

    out = ["# Protocol cards",
           "",
           "<!-- generated by s4kit.engine.report.protocol_markdown() from the protocol and paper blocks of",
           "     s4kit/configs/*/*.yaml; regenerate with: python -m s4kit.engine.report docs/protocols.md -->",
           "",
           "Each PASCAL VOC, Cityscapes and COCO preset names the paper protocol it stands for (`protocol:`) and the",
           "paper's mIoU per split (`paper:`). The tables set the paper's protocol beside what the preset",
           "trains and evaluates with; **≠** marks a difference. Global batches of s4kit are the batch per",
           "process times the paper's GPU count (`torchrun --nproc_per_node <gpus>`). `s4kit report` prints",
           "the paper's number beside s4kit's mean ± std and a 95 % bootstrap interval over seeds.",
           "",
           "Split lists:",
           ""]
    out += [f"- `{k}`: {v}" for k, v in SPLIT_FAMILIES.items()]
    order = {"pascal": 0, "cityscapes": 1, "coco": 2}
    names = sorted((n for n in available_presets() if n.split("/")[0] in order),
                   key=lambda n: (order[n.split("/")[0]], METHOD_ORDER.index(n.split("/")[1])
                                  if n.split("/")[1] in METHOD_ORDER else 99, n))
    for name in names:
        cfg = load_config(name, [PRESET_CARD])
        if not _has_card(cfg):
            continue
        out += ["", f"## {name}", "", f"Source: {_sel(cfg, 'protocol.source')}", "",
                "| item | paper | s4kit preset | |", "|---|---|---|---|"]
        out += [f"| {item} | {_cell(paper)} | {_cell(ours)} | {'**≠**' if differs else ''} |"
                for item, paper, ours, differs in protocol_items(cfg)]
        results = _sel(cfg, "paper", []) or []
        if results:
            out += ["", "| split | in the kit | paper mIoU (%) | source | note |", "|---|---|---|---|---|"]
            out += [f"| {r['split']} | {'yes' if r.get('in_kit', True) else 'no'} | {_paper_cell(r)} | "
                    f"{_cell(r['source'])} | {_cell(r.get('note', ''))} |" for r in results]
        else:
            out += ["", "No paper numbers: none published in an accessible source for this protocol."]
        notes = _sel(cfg, "protocol.notes", []) or []
        if notes:
            out += [""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m s4kit.engine.report [FILE]``: write ``protocol_markdown()`` to FILE
    (default docs/protocols.md)."""
    import sys

    from ..io import atomic_write_text

    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "docs/protocols.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, protocol_markdown())
    print(f"protocol page written to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
