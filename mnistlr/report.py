"""The report stage's page, reports/report.md: one page over all variants, measured beside the tutorial's numbers.

It reads what evaluate wrote (headline metrics, test predictions; its figures are linked, not drawn here),
prepare's variant summaries and preprocessing, and the committed experiment comparison. No figure is drawn,
no model loaded and no torch imported.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from tabulate import tabulate

from mnistlr import atomic, metrics
from mnistlr.data import load_preprocessing
from mnistlr.params import Params
from mnistlr.reference import (
    EXPECTED_BY_OPTIMIZER,
    EXPECTED_NOISE_DROP,
    LECUN_LINEAR_ERROR,
    expected_range,
    noise_rows,
)


def markdown_table(rows: list[dict], floatfmt: str = "g") -> str:
    """Rows of one dict each as a markdown (pipe) table, columns in the first row's key order. tabulate
    directly: pandas would cost this stage more to import than all of its work."""
    return tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=floatfmt)


LOSS_NAMES = {
    "ce": "cross-entropy (logistic regression)",
    "mse": "least squares on one-hot targets (linear regression)",
}


def verdict(value: float, band: tuple[float, float] | None) -> str:
    """'within', 'above' or 'below' the band (values in %, compared at one decimal)."""
    if band is None:
        return "n/a"
    v = round(value, 1)
    return "within" if band[0] <= v <= band[1] else ("above" if v > band[1] else "below")


def standard_error_points(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n images, in points."""
    return 100 * math.sqrt(accuracy * (1 - accuracy) / n)


def load_json_dir(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """{name: parsed folder/name.json} for each name."""
    return {n: json.loads((Path(folder) / f"{n}.json").read_text()) for n in names}


def results_table(params: Params, scores: dict[str, dict], summaries: dict[str, dict]) -> list[dict]:
    """One row per variant: its data, its measured accuracy and the tutorial's expectation."""
    rows = []
    for name, v in params.variants.items():
        m, s = scores[name], summaries[name]
        band = expected_range(v.fraction, v.noise)
        test_acc = 100 * m["test"]["accuracy"]
        rows.append(
            {
                "variant": name,
                "train images": s["size"],
                "labels changed": s["labels_changed"],
                "val acc (%)": round(100 * m["val"]["accuracy"], 2),
                "test acc (%)": round(test_acc, 2),
                "test loss": round(m["test"]["loss"], 4),
                "test ECE": round(m["test"]["ece"], 4),
                "tutorial expects (%)": f"{band[0]:g}-{band[1]:g}" if band else "-",
                "vs tutorial": verdict(test_acc, band),
                "weight sparsity": round(m["weights"]["sparsity"], 3),
            }
        )
    return rows


def noise_table(params: Params, scores: dict[str, dict]) -> list[dict]:
    """Each noisy variant beside the clean variant of the same size: accuracies and the change."""
    rows = noise_rows(params, scores)
    for row in rows:
        clean = params.clean_twin(row["variant"]) or row["variant"]
        row["test acc vs clean (points)"] = round(
            100 * (scores[row["variant"]]["test"]["accuracy"] - scores[clean]["test"]["accuracy"]), 2
        )
    return rows


def noise_lines(params: Params, scores: dict[str, dict]) -> list[str]:
    """One sentence per noisy variant: its drop against its clean twin, and the tutorial's when it has one."""
    lines = []
    for name, v in params.variants.items():
        clean = params.clean_twin(name)
        if clean is None:
            continue
        drop = 100 * (scores[clean]["test"]["accuracy"] - scores[name]["test"]["accuracy"])
        band = EXPECTED_NOISE_DROP.get(v.noise) if v.fraction == 1.0 else None
        tutorial = (
            f" (the tutorial reports a {band[0]:g}-{band[1]:g} point drop for {v.noise:.0%} noise)" if band else ""
        )
        lines.append(f"- `{name}` ({v.noise:.0%} of labels wrong) scores {drop:.2f} points below `{clean}`{tutorial}.")
    return lines + ([""] if lines else [])


def confusion_from_predictions(path: str | Path) -> np.ndarray:
    """10x10 counts (rows true, columns predicted) from an actual,predicted CSV."""
    pairs = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return metrics.confusion_matrix(pairs[:, 0], pairs[:, 1])


def per_class_table(cm: np.ndarray) -> list[dict]:
    """Precision, recall and F1 of each class (test set), from its confusion matrix."""
    return [
        {"class": int(c), **{k: round(v, 4) for k, v in s.items()}} for c, s in metrics.per_class_metrics(cm).items()
    ]


def experiments_section(experiments_dir: Path, report_dir: Path) -> list[str]:
    """Summary of the committed `mnistlr compare` output (experiments/compare.json), when there is one."""
    path = Path(experiments_dir) / "compare.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    runs = data["runs"]
    metric = data["metric"]
    link = Path(os.path.relpath(Path(experiments_dir) / "compare.md", report_dir)).as_posix()
    lines = [
        "## Experiments",
        "",
        f"From `mnistlr compare` (variant `{data['variant']}`); full table and curves: [{link}]({link}).",
        "",
    ]
    # deskewed runs are set beside their plain twins in the next section
    runs = [r for r in runs if str(r.get("data.deskew")) != "True"]
    optimizers = sorted({r["optimizer"] for r in runs if "optimizer" in r})
    if len(optimizers) > 1:
        best = max if metrics.higher_is_better(metric) else min
        rows = []
        for o in optimizers:
            values = [r[metric] for r in runs if r.get("optimizer") == o]
            row = {"optimizer": o, f"best {metric}": best(values), "runs": len(values)}
            if metric == "test.accuracy":  # the tutorial's ranges are test accuracies
                row["tutorial expects (%)"] = (
                    "{:g}-{:g}".format(*EXPECTED_BY_OPTIMIZER[o]) if o in EXPECTED_BY_OPTIMIZER else "-"
                )
            rows.append(row)
        lines += ["Optimizer comparison:", "", markdown_table(rows, ".4f"), ""]
    else:
        lines += [markdown_table(runs, ".4f"), ""]
    return lines


def deskew_pairs(data: dict) -> list[tuple[dict, dict]]:
    """(plain run, deskewed run) pairs of compare.json whose other differing params are all equal."""
    runs, keys = data["runs"], [k for k in data["differing_params"] if k != "data.deskew"]
    if "data.deskew" not in data["differing_params"]:
        return []
    plain = [r for r in runs if str(r.get("data.deskew")) == "False"]
    pairs = []
    for d in (r for r in runs if str(r.get("data.deskew")) == "True"):
        twin = next((p for p in plain if all(p.get(k) == d.get(k) for k in keys)), None)
        if twin is not None:
            pairs.append((twin, d))
    return pairs


def deskew_section(params: Params, experiments_dir: Path, prepared: Path) -> list[str]:
    """Beyond the tutorial: plain vs deskewed inputs for every variant, beside LeCun et al.'s linear classifier,
    with sample test digits before and after deskewing."""
    lecun = (
        f"LeCun et al. (1998) give the linear classifier {LECUN_LINEAR_ERROR['plain']:.1f} % test error on plain "
        f"digits and {LECUN_LINEAR_ERROR['deskewed']:.1f} % on deskewed ones."
    )
    lines = [
        "## Beyond the tutorial: deskewed digits",
        "",
        "Deskewing (`data.deskew: true`) shears each digit so its principal axis is vertical and moves its centre "
        "of mass to the middle of the field, before normalization: a fixed transform of the input, the model "
        f"stays one linear layer. This run's inputs: {load_preprocessing(prepared).describe()}. " + lecun,
        "",
        "![test digits before (top) and after (bottom) deskewing](figures/deskew.png)",
        "",
    ]
    path = experiments_dir / "compare.json"
    data = json.loads(path.read_text()) if path.is_file() else None
    pairs = deskew_pairs(data) if data and data.get("metric") == "test.accuracy" else []
    if not pairs:
        return lines + [
            "No plain/deskewed pair of runs in the committed comparison yet: run "
            "`dvc exp run -n deskew -S data.deskew=true`, then `mnistlr compare`.",
            "",
        ]
    plain, desk = pairs[0]
    names = [n for n in params.variants if n in plain.get("by_variant", {}) and n in desk.get("by_variant", {})]
    rows = [
        {
            "variant": n,
            f"plain: test error (%), run {plain['run']}": round(100 * (1 - plain["by_variant"][n]), 2),
            f"deskewed: test error (%), run {desk['run']}": round(100 * (1 - desk["by_variant"][n]), 2),
            "error change (points)": round(100 * (plain["by_variant"][n] - desk["by_variant"][n]), 2),
        }
        for n in names
    ]
    rows.append(
        {
            "variant": "LeCun et al. 1998, linear classifier (60k)",
            f"plain: test error (%), run {plain['run']}": LECUN_LINEAR_ERROR["plain"],
            f"deskewed: test error (%), run {desk['run']}": LECUN_LINEAR_ERROR["deskewed"],
            "error change (points)": round(LECUN_LINEAR_ERROR["deskewed"] - LECUN_LINEAR_ERROR["plain"], 2),
        }
    )
    return lines + [
        f"From `mnistlr compare` (experiments/compare.json): runs `{plain['run']}` and `{desk['run']}` "
        "differ only in `data.deskew`; every other param is the same.",
        "",
        markdown_table(rows),
        "",
    ]


def build_report(
    params: Params,
    metrics_dir: str | Path,
    summaries_dir: str | Path,
    predictions_dir: str | Path,
    out_path: str | Path,
    prepared_dir: str | Path = "data/prepared",
    experiments_dir: str | Path = "experiments",
) -> str:
    """Write reports/report.md, linking the figures evaluate drew into reports/figures; return the markdown."""
    out_path = Path(out_path)
    names = list(params.variants)
    scores = load_json_dir(metrics_dir, names)
    summaries = load_json_dir(summaries_dir, names)
    ref = params.reference_variant()
    ref_acc = scores[ref]["test"]["accuracy"]
    cm = confusion_from_predictions(Path(predictions_dir) / f"{ref}.csv")
    n_test = int(cm.sum())
    train_size = round(summaries[ref]["size"] / summaries[ref]["fraction"])
    noisy = noise_table(params, scores)
    pairs = metrics.top_confusions(cm, params.report.top_confusions)
    confusions = [
        {"true": t, "predicted": p, "count": n, "share of true class (%)": round(100 * n / cm[t].sum(), 2)}
        for t, p, n in pairs
    ]
    pre = load_preprocessing(prepared_dir)

    t = params.train
    opt_band = EXPECTED_BY_OPTIMIZER.get(params.optimizer)
    optimizer_line = (
        f"The tutorial expects {opt_band[0]:g}-{opt_band[1]:g} % for {params.optimizer.upper()}; "
        f"`{ref}` measured {100 * ref_acc:.2f} % ({verdict(100 * ref_acc, opt_band)} that range)."
    )
    if opt_band is None:
        optimizer_line = f"`{ref}` measured {100 * ref_acc:.2f} % (the tutorial gives no range for {params.optimizer})."
    lines = [
        "# mnistlr report",
        "",
        f"Linear model `nn.Linear(784, 10)` on MNIST, loss: {LOSS_NAMES[t.loss]}; "
        f"optimizer **{params.optimizer}** (lr {params.lr:g}, {t.schedule} schedule), {t.epochs} epochs, "
        f"batch {t.batch_size}, weight decay {t.weight_decay:g}, L1 {t.l1:g}, seed {params.seed}. "
        f"Train/val split {train_size}/{params.data.val_size} "
        f"of the training images; test = the {n_test} MNIST test images, used only here.",
        "",
        "## Results",
        "",
        markdown_table(results_table(params, scores, summaries)),
        "",
        optimizer_line + f" One standard error of a test accuracy near {100 * ref_acc:.1f} % on {n_test} images is "
        f"{standard_error_points(ref_acc, n_test):.2f} points.",
        "",
        "Learning curves: the training loss and accuracy of an epoch are the running means over its batches, each "
        "scored just before its update (as the tutorial's `train_epoch` reports them); validation is scored after "
        "the epoch.",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Training-set size and label noise",
        "",
        "![test accuracy against training-set size](figures/data_size.png)",
        "",
        *noise_lines(params, scores),
    ]
    if len(noisy):
        lines += [
            "### Clean vs noisy labels",
            "",
            markdown_table(noisy),
            "",
            "![clean vs noisy training labels](figures/noise.png)",
            "",
        ]
    lines += [
        f"## Top confusions of `{ref}` (test set)",
        "",
        "The tutorial names 4 ↔ 9, 3 ↔ 5 or 8, and 7 ↔ 1 as MNIST's common confusions.",
        "",
        markdown_table(confusions) if confusions else "No errors.",
        "",
    ]
    if pairs:
        seen = " (deskewed, as the model saw them)" if pre.deskew else ""
        lines += [
            f"Up to {metrics.EXAMPLES_PER_PAIR} misclassified test digits of each pair above, "
            f"first in test order{seen}:",
            "",
            "![misclassified digits of the top confusions](figures/confusion_examples.png)",
            "",
        ]
    lines += [
        f"![confusion matrix of {ref}](figures/confusion.png)",
        "",
        f"### Per-class scores of `{ref}` (test set)",
        "",
        markdown_table(per_class_table(cm)),
        "",
        "## What the models learned",
        "",
        "Each class's weights as a 28×28 template, one row per variant: red pixels raise the class's score, blue "
        "lower it.",
        "",
        "![per-class weights of every variant](figures/weights.png)",
        "",
        "## Calibration",
        "",
        f"`{ref}` on the test set: expected calibration error {scores[ref]['test']['ece']:.4f} "
        f"({params.evaluate.ece_bins} equal-width confidence bins); its NLL is the test loss, "
        f"{scores[ref]['test']['loss']:.4f}.",
        "",
        f"![reliability diagram of {ref}](figures/reliability.png)",
        "",
        *experiments_section(Path(experiments_dir), out_path.parent),
        *deskew_section(params, Path(experiments_dir), Path(prepared_dir)),
        "## Studies",
        "",
        "Linear-regression baseline, the L-BFGS optimum, the best linear model (plain and deskewed) and L1 vs L2: "
        "[studies/report.md](../studies/report.md) (`make studies`).",
        "",
    ]
    text = "\n".join(lines)
    atomic.write_text(out_path, text)
    return text
