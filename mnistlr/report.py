"""The report stage: one markdown page over all variants, measured beside the tutorial's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mnistlr import atomic, report_review
from mnistlr.evaluation import top_confusions
from mnistlr.expectations import EXPECTED_BY_FRACTION, EXPECTED_BY_NOISE, EXPECTED_BY_OPTIMIZER
from mnistlr.params import Params
from mnistlr.study_report import calibration_and_studies_lines



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


def reference_variant(params: Params) -> str:
    """The variant that stands for 'the full model': 'full', else the first clean full-size one."""
    if "full" in params.variants:
        return "full"
    clean = [n for n, v in params.variants.items() if v.fraction == 1.0 and v.noise == 0]
    return clean[0] if clean else next(iter(params.variants))


def results_table(params: Params, metrics: dict[str, dict], summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per variant: its data, its measured accuracy and the tutorial's expectation."""
    rows = []
    for name, v in params.variants.items():
        m, s = metrics[name], summaries[name]
        band = expected_range(v.fraction, v.noise)
        test_acc = 100 * m["test"]["accuracy"]
        rows.append({
            "variant": name,
            "train images": s["size"],
            "labels changed": s["labels_changed"],
            "val acc (%)": round(100 * m["val"]["accuracy"], 2),
            "test acc (%)": round(test_acc, 2),
            "test loss": round(m["test"]["loss"], 4),
            "tutorial expects (%)": f"{band[0]:g}-{band[1]:g}" if band else "-",
            "vs tutorial": verdict(test_acc, band),
            "weight sparsity": round(m["weights"]["sparsity"], 3),
        })
    return pd.DataFrame(rows)


def confusion_from_predictions(path: str | Path) -> pd.DataFrame:
    """10x10 counts (rows true, columns predicted) from an actual,predicted CSV."""
    df = pd.read_csv(path)
    return pd.crosstab(df["actual"], df["predicted"]).reindex(index=range(10), columns=range(10), fill_value=0)


def load_json_dir(folder: str | Path, names: list[str]) -> dict[str, dict]:
    """{name: parsed folder/name.json} for each name."""
    return {n: json.loads((Path(folder) / f"{n}.json").read_text()) for n in names}


def build_report(
    params: Params,
    metrics_dir: str | Path,
    summaries_dir: str | Path,
    curves_dir: str | Path,
    predictions_dir: str | Path,
    out_path: str | Path,
    figures_rel: str = "figures",
    prepared_dir: str | Path = "data/prepared",
    experiments_dir: str | Path = "experiments",
) -> str:
    """Write reports/report.md (and its summary figures beside it); return the markdown."""
    import torch

    from mnistlr import figures

    out_path = Path(out_path)
    fig_dir = out_path.parent / figures_rel
    names = list(params.variants)
    metrics = load_json_dir(metrics_dir, names)
    summaries = load_json_dir(summaries_dir, names)
    table = results_table(params, metrics, summaries)
    ref = reference_variant(params)
    ref_acc = 100 * metrics[ref]["test"]["accuracy"]
    opt_band = EXPECTED_BY_OPTIMIZER[params.optimizer]

    curves = {n: pd.read_csv(Path(curves_dir) / f"{n}.csv").to_dict("records") for n in names}
    fig = figures.learning_curves_figure(curves)
    atomic.save_figure(fig, fig_dir / "learning_curves.png")
    figures.close(fig)

    size_points = [(v.fraction, 100 * metrics[n]["test"]["accuracy"]) for n, v in params.variants.items() if v.noise == 0]
    fig = figures.data_size_figure(size_points, EXPECTED_BY_FRACTION)
    atomic.save_figure(fig, fig_dir / "data_size.png")
    figures.close(fig)

    cm = confusion_from_predictions(Path(predictions_dir) / f"{ref}.csv")
    pairs = top_confusions(torch.tensor(cm.to_numpy()), params.report.top_confusions)
    confusions = pd.DataFrame(
        [{"true": t, "predicted": p, "count": n, "share of true class (%)": round(100 * n / cm.loc[t].sum(), 2)}
         for t, p, n in pairs]
    )

    t = params.train
    lines = [
        "# mnistlr report",
        "",
        f"Multinomial logistic regression (`nn.Linear(784, 10)`, cross-entropy) on MNIST: "
        f"optimizer **{params.optimizer}** (lr {params.lr:g}, {t.schedule} schedule), {t.epochs} epochs, "
        f"batch {t.batch_size}, weight decay {t.weight_decay:g}, L1 {t.l1:g}, seed {params.seed}. "
        f"Train/val split {60000 - params.data.val_size}/{params.data.val_size} of the 60k training images; "
        "test = the 10k MNIST test images, used only here.",
        "",
        "## Results",
        "",
        table.to_markdown(index=False),
        "",
        f"The tutorial expects {opt_band[0]:g}-{opt_band[1]:g} % for {params.optimizer.upper()}; "
        f"`{ref}` measured {ref_acc:.2f} % ({verdict(ref_acc, opt_band)} that range).",
        "",
        "![learning curves](figures/learning_curves.png)",
        "",
        "## Training-set size and label noise",
        "",
        "![test accuracy against training-set size](figures/data_size.png)",
        "",
    ]
    noisy = [n for n, v in params.variants.items() if v.noise > 0]
    for n in noisy:
        v = params.variants[n]
        clean = [c for c, cv in params.variants.items() if cv.noise == 0 and cv.fraction == v.fraction]
        if clean:
            drop = 100 * (metrics[clean[0]]["test"]["accuracy"] - metrics[n]["test"]["accuracy"])
            lines.append(
                f"- `{n}` ({v.noise:.0%} of labels wrong) scores {drop:.2f} points below `{clean[0]}` "
                f"(the tutorial reports a 3-4 point drop for 10 % noise)."
            )
    if noisy:
        lines.append("")
    lines += report_review.noise_section(params, metrics, fig_dir)
    lines += [
        f"## Top confusions of `{ref}` (test set)",
        "",
        "The tutorial names 4 ↔ 9, 3 ↔ 5 or 8, and 7 ↔ 1 as MNIST's common confusions.",
        "",
        confusions.to_markdown(index=False) if len(confusions) else "No errors.",
        "",
        *report_review.confusion_examples_section(params, ref, pairs, Path(predictions_dir), Path(prepared_dir), fig_dir),
        f"![confusion matrix of {ref}](figures/{ref}/confusion.png)",
        "",
        f"## What `{ref}` learned",
        "",
        "Each class's weights as a 28×28 template: red pixels raise the class's score, blue lower it.",
        "",
        f"![per-class weights of {ref}](figures/{ref}/weights.png)",
        "",
    ]
    lines += report_review.experiments_section(Path(experiments_dir), out_path.parent)
    lines += calibration_and_studies_lines(ref, metrics[ref])
    text = "\n".join(lines)
    atomic.write_text(out_path, text)
    return text
