"""The studies' page, studies/report.md, from the studies' JSON results (studies/results/*.json).

The studies' report stage runs this module alone: it imports no torch and draws no figure. mnistlr.studies,
which runs the studies (and imports torch), takes the names of the studies and the L-BFGS logging chunk from
here, so the page and the runs agree on them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mnistlr import atomic
from mnistlr.reference import LECUN_LINEAR_ERROR

STUDIES = ("mse", "optimum", "l1l2", "sweep", "deskew")
COMMAND = "make studies"
LBFGS_CHUNK = 50  # L-BFGS iterations per logged "epoch" in the studies


def percent(value: float | None) -> str:
    """An accuracy (a share) as percent with two decimals; '-' when absent."""
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_rows(header: list[str], rows: list[list]) -> list[str]:
    """A markdown (pipe) table as lines, with a blank line after it."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return out + [""]


def config_label(run: dict) -> str:
    """One candidate's training settings in a few words: 'sgd lr 0.1, bs 64, 10 ep, wd 0'."""
    if run["optimizer"] == "lbfgs":
        return f"lbfgs, {run['epochs'] * LBFGS_CHUNK} iterations, wd {run['weight_decay']:g}"
    return (
        f"{run['optimizer']} lr {run['lr']:g}, bs {run['batch_size']}, {run['epochs']} ep, wd {run['weight_decay']:g}"
    )


def final_test_accuracy(selection: dict) -> float:
    """The selected model's test accuracy: refitted on train + val when the study refitted it."""
    return selection.get("refit_on_train_val", selection["trained_on_train"])["test_accuracy"]


def mse_section(mse: dict, logistic: dict) -> list[str]:
    """Section 1: linear regression (SGD and the exact least-squares solution) beside logistic regression."""
    sgd, exact = mse["linear_regression_sgd"], mse["linear_regression_exact"]
    rows = [
        [
            f"logistic regression (cross-entropy), SGD lr {logistic['lr']:g} (optimum study, weight decay 0)",
            percent(logistic["val_accuracy"]),
            percent(logistic["test_accuracy"]),
        ],
        [
            f"linear regression (least squares on one-hot), SGD lr {sgd['lr']:g}",
            percent(sgd["val_accuracy"]),
            percent(sgd["test_accuracy"]),
        ],
        [
            "linear regression, exact least-squares solution (lstsq)",
            percent(exact["val_accuracy"]),
            percent(exact["test_accuracy"]),
        ],
    ]
    return [
        "## 1. Linear regression baseline (`train.loss: mse`)",
        "",
        f"Same linear layer, same data; SGD {logistic['epochs']} epochs, batch {logistic['batch_size']}, "
        "cosine schedule. SGD on least squares needs a smaller learning rate than on cross-entropy "
        f"(`studies.mse.lr`, here {sgd['lr']:g}).",
        "",
        *markdown_rows(["model", "val acc %", "test acc %"], rows),
    ]


def optimum_section(optimum: dict) -> list[str]:
    """Section 2: the L-BFGS optimum of the regularized objective against SGD and Adam, per weight decay."""
    rows = []
    for entry in optimum["rows"]:
        lbfgs = entry["lbfgs"]
        rows.append(
            [
                f"{entry['weight_decay']:g}",
                "L-BFGS",
                f"{lbfgs['objective']:.5f}",
                "0",
                percent(lbfgs["val_accuracy"]),
                percent(lbfgs["test_accuracy"]),
                "-",
            ]
        )
        for name in ("sgd", "adam"):
            run = entry[name]
            rows.append(
                [
                    f"{entry['weight_decay']:g}",
                    f"{name} lr {run['lr']:g}, {run['epochs']} ep",
                    f"{run['objective']:.5f}",
                    f"{run['objective_gap']:+.5f}",
                    percent(run["val_accuracy"]),
                    percent(run["test_accuracy"]),
                    f"{100 * run['test_accuracy_gap']:+.2f}",
                ]
            )
    best_optimum = max(entry["lbfgs"]["test_accuracy"] for entry in optimum["rows"])
    header = [
        "weight decay",
        "optimizer",
        "train objective",
        "objective gap",
        "val acc %",
        "test acc %",
        "test acc gap (pts)",
    ]
    return [
        "## 2. The convex optimum (`optimizer: lbfgs`)",
        "",
        f"Training objective = mean cross-entropy on the {optimum['n_train']} training images + "
        "weight_decay/2 * ||W||^2 (the function SGD and Adam with the same `weight_decay` minimize). L-BFGS: "
        f"full batch, {optimum['params']['lbfgs_iters']} iterations, strong-Wolfe line search. Gap = run - L-BFGS.",
        "",
        *markdown_rows(header, rows),
        "At weight decay 0 (and nearly so at 1e-5) the objective is not strongly convex, so L-BFGS may still be "
        "descending when it stops: those rows are upper bounds on the minimum. Runs that stop short of the "
        "minimum can score as well or better on held-out images: stopping early regularizes much as weight "
        "decay does.",
        "",
        f"Best test accuracy of an exact optimum over this weight-decay grid: **{percent(best_optimum)} %**.",
        "",
    ]


def l1l2_section(l1l2: dict) -> list[str]:
    """Section 5: L1 against L2 at the same strengths: test accuracy, sparsity and the weights' norms."""
    rows = [
        [
            row["penalty"],
            f"{row['strength']:g}",
            percent(row["test_accuracy"]),
            percent(row["sparsity"]),
            percent(row["exact_zeros"]),
            f"{row['l1_norm']:.1f}",
            f"{row['l2_norm']:.2f}",
        ]
        for row in l1l2["rows"]
    ]
    settings = l1l2["params"]
    return [
        "## 5. L1 and L2 seen",
        "",
        f"SGD lr {settings['lr']:g}, batch {settings['batch_size']}, {settings['epochs']} epochs, cosine; "
        f"sparsity = share of |w| < {l1l2['sparsity_threshold']:g}.",
        "",
        *markdown_rows(
            ["penalty", "strength", "test acc %", "sparsity %", "exact zeros %", "sum abs w", "norm w"], rows
        ),
        "L1 drives many weights (mostly the always-blank border pixels) towards zero while L2 at the same "
        "strength only shrinks them all a little; plain (sub)gradient steps make weights small, not exactly 0.",
        "",
        "![L1 vs L2 weights](figures/l1l2_weights.png)",
        "",
    ]


def sweep_section(sweep: dict, title: str = "## 3. The best linear model", inputs: str = "") -> list[str]:
    """Section 3 (and, on deskewed digits, 4): every candidate's validation accuracy, the one selected and
    its test accuracy. `inputs` qualifies the training images, e.g. ' (deskewed)'."""
    rows = []
    for index, run in enumerate(sweep["rows"]):
        mark = " **(selected)**" if index == sweep["best_index"] else ""
        batched = f"x{run['batched']}" if run.get("batched") else "alone"
        rows.append(
            [
                config_label(run) + mark,
                f"{run['objective']:.4f}",
                percent(run["train_accuracy"]),
                percent(run["val_accuracy"]),
                batched,
            ]
        )
    trained = sweep["trained_on_train"]
    best_val = sweep["rows"][sweep["best_index"]]["val_accuracy"]
    n_train, n_val = sweep["n_train"], sweep["n_val"]
    out = [
        title,
        "",
        f"Every candidate is trained on the {n_train} training{inputs} images and scored on the {n_val} validation "
        "images; the one with the highest validation accuracy is selected, and only it touches the test set. "
        "Candidates sharing optimizer, batch size and epochs train as one batched program.",
        "",
        *markdown_rows(["config", "train objective", "train acc %", "val acc %", "trained"], rows),
        f"One standard error of an accuracy near {100 * best_val:.1f} % on {n_val} validation images is "
        f"{100 * math.sqrt(best_val * (1 - best_val) / n_val):.2f} points: differences smaller than that "
        "do not separate the candidates.",
        "",
        f"Selected: `{json.dumps(sweep['best'])}`",
        "",
        f"- trained on train ({n_train}): val {percent(trained['val_accuracy'])} %, "
        f"**test {percent(trained['test_accuracy'])} %**",
    ]
    if "refit_on_train_val" in sweep:
        refit = sweep["refit_on_train_val"]
        out.append(f"- refitted on train + val ({n_train + n_val}): **test {percent(refit['test_accuracy'])} %**")
    return out + [""]


def deskew_study_section(deskewed: dict, plain: dict) -> list[str]:
    """Section 4: the best linear model on deskewed digits, beside the plain one and LeCun et al.'s linear
    classifier."""
    out = sweep_section(deskewed, "## 4. The best linear model on deskewed digits", " (deskewed)")
    out += [
        f"Inputs: {deskewed['preprocessing']} (`studies/data/prepared_deskewed`, the prepare stage with deskewing on). "
        f"Test error of the selected model: **{100 * (1 - final_test_accuracy(deskewed)):.2f} %** deskewed "
        f"against {100 * (1 - final_test_accuracy(plain)):.2f} % for the best plain model (section 3); "
        f"LeCun et al. (1998) give the linear classifier {LECUN_LINEAR_ERROR['plain']:.1f} % plain and "
        f"{LECUN_LINEAR_ERROR['deskewed']:.1f} % deskewed.",
        "",
    ]
    return out


def write_studies_report(results: str | Path, out: str | Path) -> str:
    """Write studies/report.md from every study's results/<study>.json; return the markdown."""
    results = Path(results)
    found = {name: json.loads((results / f"{name}.json").read_text()) for name in STUDIES}
    lines = [
        "# Studies: beyond the tutorial",
        "",
        f"Generated by `{COMMAND}` (studies/dvc.yaml, a DVC project of its own; params: `studies:` in params.yaml). "
        "Multinomial logistic regression on normalized pixels; no augmentation or features; section 4 on "
        "deskewed digits. Wall times are the benchmark's (bench/studies_wall.sh), not kept here: they vary "
        "run to run, these results must not.",
        "",
    ]
    optimum = found["optimum"]
    unregularized = [entry for entry in optimum["rows"] if entry["weight_decay"] == 0]
    logistic = (unregularized or optimum["rows"])[0]["sgd"]
    lines += (
        mse_section(found["mse"], logistic)
        + optimum_section(optimum)
        + sweep_section(found["sweep"])
        + deskew_study_section(found["deskew"], found["sweep"])
        + l1l2_section(found["l1l2"])
    )
    text = "\n".join(lines)
    atomic.write_text(out, text)
    return text
