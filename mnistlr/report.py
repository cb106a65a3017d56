"""The pages of text: the report stage's reports/report.md, and the studies' reports/studies.md.

reports/report.md: one page over all variants, measured beside the tutorial's numbers, from what evaluate
wrote (headline metrics, test predictions; its figures are linked, not drawn here), prepare's variant
summaries and preprocessing, and the committed experiment comparison. reports/studies.md: from the
studies' JSON results. No figure is drawn, no model loaded and no torch imported.
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
from mnistlr.evaluate import (
    EXAMPLES_PER_PAIR,
    EXPECTED_BY_FRACTION,
    EXPECTED_BY_NOISE,
    EXPECTED_BY_OPTIMIZER,
    EXPECTED_NOISE_DROP,
    noise_rows,
)
from mnistlr.params import Params


def markdown_table(rows: list[dict], floatfmt: str = "g") -> str:
    """Rows of one dict each as a markdown (pipe) table, columns in the first row's key order. tabulate
    directly: pandas would cost this stage more to import than all of its work."""
    return tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=floatfmt)


LOSS_NAMES = {
    "ce": "cross-entropy (logistic regression)",
    "mse": "least squares on one-hot targets (linear regression)",
}
# LeCun et al. (1998), "Gradient-based learning applied to document recognition", table of test error
# rates: the linear classifier ("1-layer NN") on plain and on deskewed digits, in %.
LECUN_LINEAR_ERROR = {"plain": 12.0, "deskewed": 8.4}


def expected_range(fraction: float, noise: float) -> tuple[float, float] | None:
    """The tutorial's expected test accuracy (%) for a variant, when it gives one."""
    if noise == 0:
        return EXPECTED_BY_FRACTION.get(fraction)
    if fraction == 1.0:
        return EXPECTED_BY_NOISE.get(noise)
    return None


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
            f"Up to {EXAMPLES_PER_PAIR} misclassified test digits of each pair above, first in test order{seen}:",
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
        "[studies.md](studies.md) (`dvc repro studies/dvc.yaml`).",
        "",
    ]
    text = "\n".join(lines)
    atomic.write_text(out_path, text)
    return text


# --- the studies' page (reports/studies.md, from the studies pipeline's JSON results) ---------------------

STUDIES = ("mse", "optimum", "l1l2", "sweep", "deskew")
COMMAND = "dvc repro studies/dvc.yaml"
LBFGS_CHUNK = 50  # L-BFGS iterations per logged "epoch" in the studies


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def _config(r: dict) -> str:
    if r["optimizer"] == "lbfgs":
        return f"lbfgs, {r['epochs'] * LBFGS_CHUNK} iterations, wd {r['weight_decay']:g}"
    return f"{r['optimizer']} lr {r['lr']:g}, bs {r['batch_size']}, {r['epochs']} ep, wd {r['weight_decay']:g}"


def mse_section(m: dict, logistic: dict) -> list[str]:
    rows = [
        [
            f"logistic regression (cross-entropy), SGD lr {logistic['lr']:g} (optimum study, weight decay 0)",
            _pct(logistic["val_accuracy"]),
            _pct(logistic["test_accuracy"]),
        ],
        [
            f"linear regression (least squares on one-hot), SGD lr {m['linear_regression_sgd']['lr']:g}",
            _pct(m["linear_regression_sgd"]["val_accuracy"]),
            _pct(m["linear_regression_sgd"]["test_accuracy"]),
        ],
        [
            "linear regression, exact least-squares solution (lstsq)",
            _pct(m["linear_regression_exact"]["val_accuracy"]),
            _pct(m["linear_regression_exact"]["test_accuracy"]),
        ],
    ]
    return [
        "## 1. Linear regression baseline (`train.loss: mse`)",
        "",
        f"Same linear layer, same data; SGD {logistic['epochs']} epochs, batch {logistic['batch_size']}, cosine schedule. "
        f"SGD on least squares needs a smaller learning rate than on cross-entropy (`studies.mse.lr`, here {m['linear_regression_sgd']['lr']:g}).",
        "",
        *_table(["model", "val acc %", "test acc %"], rows),
    ]


def optimum_section(o: dict) -> list[str]:
    rows = []
    for e in o["rows"]:
        lb = e["lbfgs"]
        rows.append(
            [
                f"{e['weight_decay']:g}",
                "L-BFGS",
                f"{lb['objective']:.5f}",
                "0",
                _pct(lb["val_accuracy"]),
                _pct(lb["test_accuracy"]),
                "-",
            ]
        )
        for name in ("sgd", "adam"):
            r = e[name]
            rows.append(
                [
                    f"{e['weight_decay']:g}",
                    f"{name} lr {r['lr']:g}, {r['epochs']} ep",
                    f"{r['objective']:.5f}",
                    f"{r['objective_gap']:+.5f}",
                    _pct(r["val_accuracy"]),
                    _pct(r["test_accuracy"]),
                    f"{100 * r['test_accuracy_gap']:+.2f}",
                ]
            )
    return [
        "## 2. The convex optimum (`optimizer: lbfgs`)",
        "",
        f"Training objective = mean cross-entropy on the {o['n_train']} training images + weight_decay/2 * ||W||^2 "
        "(the function SGD and Adam with the same `weight_decay` minimize). L-BFGS: full batch, "
        f"{o['params']['lbfgs_iters']} iterations, strong-Wolfe line search. Gap = run - L-BFGS.",
        "",
        *_table(
            [
                "weight decay",
                "optimizer",
                "train objective",
                "objective gap",
                "val acc %",
                "test acc %",
                "test acc gap (pts)",
            ],
            rows,
        ),
        "At weight decay 0 (and nearly so at 1e-5) the objective is not strongly convex, so L-BFGS may still be "
        "descending when it stops: those rows are upper bounds on the minimum. Runs that stop short of the "
        "minimum can score as well or better on held-out images: stopping early regularizes much as weight "
        "decay does.",
        "",
        f"Best test accuracy of an exact optimum over this weight-decay grid: **{_pct(max(e['lbfgs']['test_accuracy'] for e in o['rows']))} %**.",
        "",
    ]


def l1l2_section(d: dict) -> list[str]:
    rows = [
        [
            r["penalty"],
            f"{r['strength']:g}",
            _pct(r["test_accuracy"]),
            _pct(r["sparsity"]),
            _pct(r["exact_zeros"]),
            f"{r['l1_norm']:.1f}",
            f"{r['l2_norm']:.2f}",
        ]
        for r in d["rows"]
    ]
    return [
        "## 5. L1 and L2 seen",
        "",
        f"SGD lr {d['params']['lr']:g}, batch {d['params']['batch_size']}, {d['params']['epochs']} epochs, cosine; sparsity = share of |w| < {d['sparsity_threshold']:g}.",
        "",
        *_table(["penalty", "strength", "test acc %", "sparsity %", "exact zeros %", "sum abs w", "norm w"], rows),
        "L1 drives many weights (mostly the always-blank border pixels) towards zero while L2 at the same "
        "strength only shrinks them all a little; plain (sub)gradient steps make weights small, not exactly 0.",
        "",
        "![L1 vs L2 weights](studies/l1l2_weights.png)",
        "",
    ]


def sweep_section(s: dict, title: str = "## 3. The best linear model", inputs: str = "") -> list[str]:
    rows = []
    for i, r in enumerate(s["rows"]):
        mark = " **(selected)**" if i == s["best_index"] else ""
        batched = f"x{r['batched']}" if r.get("batched") else "alone"
        rows.append(
            [_config(r) + mark, f"{r['objective']:.4f}", _pct(r["train_accuracy"]), _pct(r["val_accuracy"]), batched]
        )
    b, t = s["best"], s["trained_on_train"]
    best_val, n_train, n_val = s["rows"][s["best_index"]]["val_accuracy"], s["n_train"], s["n_val"]
    out = [
        title,
        "",
        f"Every candidate is trained on the {n_train} training{inputs} images and scored on the {n_val} validation "
        "images; the one with the highest validation accuracy is selected, and only it touches the test set. "
        "Candidates sharing optimizer, batch size and epochs train as one batched program.",
        "",
        *_table(["config", "train objective", "train acc %", "val acc %", "trained"], rows),
        f"One standard error of an accuracy near {100 * best_val:.1f} % on {n_val} validation images is "
        f"{100 * math.sqrt(best_val * (1 - best_val) / n_val):.2f} points: differences smaller than that "
        "do not separate the candidates.",
        "",
        f"Selected: `{json.dumps(b)}`",
        "",
        f"- trained on train ({n_train}): val {_pct(t['val_accuracy'])} %, **test {_pct(t['test_accuracy'])} %**",
    ]
    if "refit_on_train_val" in s:
        out.append(
            f"- refitted on train + val ({n_train + n_val}): **test {_pct(s['refit_on_train_val']['test_accuracy'])} %**"
        )
    return out + [""]


def deskew_study_section(d: dict, plain: dict) -> list[str]:
    """The best linear model on deskewed digits, beside the plain one and LeCun et al.'s linear classifier."""
    out = sweep_section(d, "## 4. The best linear model on deskewed digits", " (deskewed)")
    final = lambda r: r.get("refit_on_train_val", r["trained_on_train"])["test_accuracy"]  # noqa: E731
    out += [
        f"Inputs: {d['preprocessing']} (`data/prepared_deskewed`, the prepare stage with deskewing on). "
        f"Test error of the selected model: **{100 * (1 - final(d)):.2f} %** deskewed against "
        f"{100 * (1 - final(plain)):.2f} % for the best plain model (section 3); LeCun et al. (1998) give the "
        "linear classifier 12.0 % plain and 8.4 % deskewed.",
        "",
    ]
    return out


def write_studies_report(results: str | Path, out: str | Path) -> str:
    results = Path(results)
    load = lambda n: json.loads((results / f"{n}.json").read_text())  # noqa: E731
    found = {n: load(n) for n in STUDIES}
    lines = [
        "# Studies: beyond the tutorial",
        "",
        f"Generated by `{COMMAND}` (studies/dvc.yaml; params: `studies:` in params.yaml). "
        "Multinomial logistic regression on normalized pixels; no augmentation or features; section 4 on "
        "deskewed digits. Wall times are the benchmark's (bench/studies_wall.sh), not kept here: they vary "
        "run to run, these results must not.",
        "",
    ]
    opt = found["optimum"]
    logistic = (
        next(e["sgd"] for e in opt["rows"] if e["weight_decay"] == 0)
        if any(e["weight_decay"] == 0 for e in opt["rows"])
        else opt["rows"][0]["sgd"]
    )
    lines += (
        mse_section(found["mse"], logistic)
        + optimum_section(opt)
        + sweep_section(found["sweep"])
        + deskew_study_section(found["deskew"], found["sweep"])
        + l1l2_section(found["l1l2"])
    )
    text = "\n".join(lines)
    atomic.write_text(out, text)
    return text
