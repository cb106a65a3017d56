"""Report sections added for reviewing results (issue 3), kept apart from report.py's core page:
label noise clean vs noisy, misclassified digits of the top confusions, and the committed
experiment comparison."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mnistlr import atomic
from mnistlr.expectations import EXPECTED_BY_OPTIMIZER
from mnistlr.params import Params

NOISE_FIGURE = "noise.png"
EXAMPLES_FIGURE = "confusion_examples.png"
EXAMPLES_PER_PAIR = 6


def noise_table(params: Params, metrics: dict[str, dict]) -> pd.DataFrame:
    """Each noisy variant beside the clean variant of the same size: accuracies and the change."""
    rows = []
    for name, v in params.variants.items():
        if v.noise == 0:
            continue
        clean = next((c for c, cv in params.variants.items() if cv.noise == 0 and cv.fraction == v.fraction), None)
        if clean is None:
            continue
        for variant, noise in ((clean, 0.0), (name, v.noise)):
            m = metrics[variant]
            rows.append({
                "variant": variant,
                "label noise": noise,
                "val acc (%)": round(100 * m["val"]["accuracy"], 2),
                "test acc (%)": round(100 * m["test"]["accuracy"], 2),
                "test acc vs clean (points)": round(100 * (m["test"]["accuracy"] - metrics[clean]["test"]["accuracy"]), 2),
            })
    return pd.DataFrame(rows).drop_duplicates("variant") if rows else pd.DataFrame()


def noise_section(params: Params, metrics: dict[str, dict], fig_dir: Path) -> list[str]:
    """Markdown lines and figures/noise.png (a placeholder figure when there is no noisy variant,
    so the stage's declared output always exists)."""
    from mnistlr import review_figures

    table = noise_table(params, metrics)
    if len(table):
        fig = review_figures.noise_figure(table)
    else:
        fig = review_figures.message_figure("no noisy variant (with a clean one of the same size) in params.yaml")
    atomic.save_figure(fig, fig_dir / NOISE_FIGURE)
    review_figures.close(fig)
    if not len(table):
        return []
    return ["### Clean vs noisy labels", "", table.to_markdown(index=False), "",
            f"![clean vs noisy training labels](figures/{NOISE_FIGURE})", ""]


def misclassified_images(predictions_csv: Path, test_pt: Path, pairs: list[tuple[int, int, int]],
                         mean: float, std: float, per_pair: int = EXAMPLES_PER_PAIR) -> list[tuple[int, int, np.ndarray]]:
    """For each (true, predicted, count): the first `per_pair` such test digits as [k, 28, 28] in [0, 1]."""
    import torch

    pred = pd.read_csv(predictions_csv)
    x = torch.load(test_pt, weights_only=True)["x"]
    out = []
    for true, predicted, _ in pairs:
        idx = pred.index[(pred["actual"] == true) & (pred["predicted"] == predicted)][:per_pair].to_numpy().copy()
        # the prepared pixels are (p - mean) / std: undo it to show the digit as scanned
        images = (x[torch.as_tensor(idx, dtype=torch.long)] * std + mean).clamp(0, 1).reshape(-1, 28, 28).numpy()
        out.append((true, predicted, images))
    return out


def confusion_examples_section(params: Params, ref: str, pairs: list[tuple[int, int, int]],
                               predictions_dir: Path, prepared_dir: Path, fig_dir: Path) -> list[str]:
    """figures/confusion_examples.png: a few misclassified test digits per top confusion pair."""
    from mnistlr import review_figures

    examples = misclassified_images(Path(predictions_dir) / f"{ref}.csv", Path(prepared_dir) / "test.pt",
                                    pairs, params.data.mean, params.data.std)
    fig = (review_figures.confusion_examples_figure(examples, EXAMPLES_PER_PAIR) if examples
           else review_figures.message_figure("no misclassified test digits"))
    atomic.save_figure(fig, fig_dir / EXAMPLES_FIGURE)
    review_figures.close(fig)
    if not examples:
        return []
    return [f"Up to {EXAMPLES_PER_PAIR} misclassified test digits of each pair above, first in test order:", "",
            f"![misclassified digits of the top confusions](figures/{EXAMPLES_FIGURE})", ""]


def experiments_section(experiments_dir: Path, report_dir: Path) -> list[str]:
    """Summary of the committed `mnistlr compare` output (experiments/compare.json), when there is one."""
    path = Path(experiments_dir) / "compare.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    runs = pd.DataFrame(data["runs"])
    metric = data["metric"]
    link = Path(os.path.relpath(Path(experiments_dir) / "compare.md", report_dir)).as_posix()
    lines = ["## Experiments", "",
             f"From `mnistlr compare` (variant `{data['variant']}`); full table and curves: [{link}]({link}).", ""]
    if "optimizer" in runs.columns and runs["optimizer"].nunique() > 1:
        best = max if not metric.endswith("loss") else min
        by_opt = runs.groupby("optimizer")[metric].agg([best, "count"]).reset_index()
        by_opt.columns = ["optimizer", f"best {metric}", "runs"]
        if metric == "test.accuracy":  # the tutorial's ranges are test accuracies
            by_opt["tutorial expects (%)"] = [
                "{:g}-{:g}".format(*EXPECTED_BY_OPTIMIZER[o]) if o in EXPECTED_BY_OPTIMIZER else "-" for o in by_opt["optimizer"]
            ]
        lines += ["Optimizer comparison:", "", by_opt.to_markdown(index=False, floatfmt=".4f"), ""]
    else:
        lines += [runs.to_markdown(index=False, floatfmt=".4f"), ""]
    return lines
