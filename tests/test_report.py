"""The report stage: its prose follows params and the measured numbers; tables per variant and per class."""

from __future__ import annotations

import json
import math
import re

import pytest

from mnistlr import report
from mnistlr.data import MD5SUMS_ENV, MIRROR_ENV
from mnistlr.evaluate import evaluate
from mnistlr.params import parse_params
from mnistlr.prepare import prepare
from mnistlr.train import train

VARIANTS = {
    "full": {"fraction": 1.0, "noise": 0.0},
    "noise10": {"fraction": 1.0, "noise": 0.1},
    "noise20": {"fraction": 1.0, "noise": 0.2},
}
# one epoch at a small rate: about 95 % on the easy synthetic digits, so errors and a standard error to show
BASE = {"data": {"val_size": 200}, "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": {"sgd": 0.003}}}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, synthetic_mirror):
    """prepare, train and evaluate of three variants (clean, 10 % and 20 % label noise) on the synthetic
    mirror, through the library calls the stages make; returns the folder holding what they wrote."""
    root = tmp_path_factory.mktemp("report")
    params = parse_params({**BASE, "variants": VARIANTS})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MIRROR_ENV, str(synthetic_mirror))
        mp.setenv(MD5SUMS_ENV, str(synthetic_mirror / "MD5SUMS"))
        prepare(params, root / "data/prepared", root / "data/raw")
    train(params, root / "data/prepared", root / "models", root / "plots/train")
    evaluate(
        params,
        root / "data/prepared",
        root / "models",
        root / "plots/train",
        root / "metrics",
        root / "plots/predictions",
        root / "reports/figures",
    )
    return root


def build(root, variants: dict, **train_params) -> str:
    params = parse_params({**BASE, "variants": variants, "train": {**BASE["train"], **train_params}})
    return report.build_report(
        params,
        root / "metrics",
        root / "data/prepared/variants",
        root / "plots/predictions",
        root / "reports/report.md",
        prepared_dir=root / "data/prepared",
        experiments_dir=root / "experiments",
    )


def metrics_of(root, variant: str) -> dict:
    return json.loads((root / f"metrics/{variant}.json").read_text())


def test_report_prose_follows_the_measured_numbers(outputs):
    text = build(outputs, VARIANTS)
    assert (outputs / "reports/report.md").read_text() == text
    assert "loss: cross-entropy (logistic regression)" in text and "least squares" not in text
    full = metrics_of(outputs, "full")["test"]["accuracy"]
    n_test = 300  # the synthetic mirror's test images
    assert f"test = the {n_test} MNIST test images" in text
    se = 100 * math.sqrt(full * (1 - full) / n_test)
    assert f"on {n_test} images is {se:.2f} points." in text  # computed, not the 10k images' 0.26
    # one results row per variant, with its measured test accuracy
    for v in VARIANTS:
        acc = 100 * metrics_of(outputs, v)["test"]["accuracy"]
        assert re.search(rf"^\| {v} +\|.*\| +{round(acc, 2):g} +\|", text, re.M), v
    # every noisy variant against the clean one; the tutorial's drop only for the 10 % noise it measured
    for v, noise in (("noise10", "10%"), ("noise20", "20%")):
        drop = 100 * (full - metrics_of(outputs, v)["test"]["accuracy"])
        assert f"- `{v}` ({noise} of labels wrong) scores {drop:.2f} points below `full`" in text
    assert "below `full` (the tutorial reports a 3-4 point drop for 10% noise)." in text
    assert len(re.findall("the tutorial reports", text)) == 1
    assert "`noise20` (20% of labels wrong) scores" in text and "drop for 20% noise" not in text


def test_report_of_20_percent_noise_does_not_claim_the_tutorials_10_percent_drop(outputs):
    text = build(outputs, {"full": VARIANTS["full"], "noise20": VARIANTS["noise20"]})
    assert "`noise20` (20% of labels wrong) scores" in text
    assert "tutorial reports" not in text and "10%" not in text and "3-4 point" not in text
    assert "| noise20 " in text and "| noise10 " not in text  # the clean vs noisy table: only what params name


def test_report_of_a_least_squares_run_names_least_squares(outputs):
    text = build(outputs, VARIANTS, loss="mse", lr={"sgd": 0.002})
    assert "loss: least squares on one-hot targets (linear regression)" in text
    assert "cross-entropy (logistic regression)" not in text
    assert "optimizer **sgd** (lr 0.002, cosine schedule)" in text


def test_report_has_the_per_class_scores_of_the_reference_variant(outputs):
    from mnistlr import metrics

    text = build(outputs, VARIANTS)
    details = metrics.per_class_metrics(report.confusion_from_predictions(outputs / "plots/predictions/full.csv"))
    assert any(0 < d["recall"] < 1 for d in details.values())  # errors to show
    section = text.split("### Per-class scores of `full` (test set)", 1)[1].split("##", 1)[0]
    rows = [ln for ln in section.splitlines() if re.match(r"^\| +\d", ln)]
    assert len(rows) == 10
    for c, row in enumerate(rows):
        cells = [float(x) for x in row.strip("|").split("|")]
        assert cells[0] == c
        assert cells[1:] == pytest.approx([details[str(c)][k] for k in ("precision", "recall", "f1")], abs=5e-5)


def test_report_without_full_uses_the_first_clean_full_size_variant(outputs, tmp_path):
    # `full` under another name: copy its outputs
    for sub, ext in (("metrics", "json"), ("data/prepared/variants", "json"), ("plots/predictions", "csv")):
        (outputs / sub / f"clean.{ext}").write_bytes((outputs / sub / f"full.{ext}").read_bytes())
    text = build(outputs, {"noise10": VARIANTS["noise10"], "clean": VARIANTS["full"]})
    assert "### Per-class scores of `clean` (test set)" in text and "Top confusions of `clean`" in text
    assert "- `noise10` (10% of labels wrong) scores" in text and "below `clean`" in text


def test_standard_error_is_the_binomial_one():
    assert report.standard_error_points(0.925, 10_000) == pytest.approx(0.2634, abs=1e-4)
    assert report.standard_error_points(0.9, 100) == pytest.approx(3.0)


def test_noise_table_pairs_noisy_with_clean_of_same_size():
    params = parse_params(
        {
            "variants": {
                "full": {"fraction": 1.0, "noise": 0.0},
                "noise10": {"fraction": 1.0, "noise": 0.1},
                "frac10": {"fraction": 0.1, "noise": 0.0},
            }
        }
    )
    m = {
        n: {"val": {"accuracy": a}, "test": {"accuracy": a}}
        for n, a in (("full", 0.92), ("noise10", 0.90), ("frac10", 0.85))
    }
    t = {row["variant"]: row for row in report.noise_table(params, m)}
    assert list(t) == ["full", "noise10"]
    assert t["noise10"]["test acc vs clean (points)"] == pytest.approx(-2.0)
    assert t["full"]["test acc vs clean (points)"] == 0


def test_experiments_section_takes_the_best_of_a_lower_is_better_metric(tmp_path):
    runs = [
        {"run": "a", "optimizer": "sgd", "test.ece": 0.03},
        {"run": "b", "optimizer": "sgd", "test.ece": 0.01},
        {"run": "c", "optimizer": "adam", "test.ece": 0.02},
    ]
    (tmp_path / "compare.json").write_text(json.dumps({"variant": "full", "metric": "test.ece", "runs": runs}))
    lines = report.experiments_section(tmp_path, tmp_path / "reports")
    table = "\n".join(lines)
    assert "best test.ece" in table and "tutorial expects" not in table  # its ranges are accuracies
    rows = {
        ln.split("|")[1].strip(): ln.split("|")[2].strip()
        for ln in table.splitlines()
        if ln.startswith("| ") and "optimizer" not in ln
    }
    assert rows == {"adam": "0.0200", "sgd": "0.0100"}


def _compare_json(folder, runs: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(
        json.dumps(
            {
                "variant": "full",
                "metric": "test.accuracy",
                "differing_params": ["data.deskew", "optimizer"],
                "runs": runs,
            }
        )
    )


def test_deskew_section_sets_each_variant_plain_beside_deskewed_and_lecun(outputs, tmp_path):
    runs = [
        {
            "run": "desk-adam",
            "data.deskew": "True",
            "optimizer": "adam",
            "by_variant": {"full": 0.957, "noise10": 0.95},
        },
        {"run": "base", "data.deskew": "False", "optimizer": "sgd", "by_variant": {"full": 0.9264, "noise10": 0.9127}},
        {"run": "adam", "data.deskew": "False", "optimizer": "adam", "by_variant": {"full": 0.9263, "noise10": 0.913}},
        {"run": "deskew", "data.deskew": "True", "optimizer": "sgd", "by_variant": {"full": 0.9571, "noise10": 0.9402}},
    ]
    _compare_json(tmp_path / "experiments", runs)
    params = parse_params({**BASE, "variants": VARIANTS})
    text = "\n".join(report.deskew_section(params, tmp_path / "experiments", outputs / "data/prepared"))
    # paired on every other differing param: desk-adam with adam (the first deskewed run that has a twin)
    assert "runs `adam` and `desk-adam` differ only in `data.deskew`" in text
    rows = {
        ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:5]]
        for ln in text.splitlines()
        if ln.startswith("| ") and "variant" not in ln
    }
    assert rows["full"] == ["7.37", "4.3", "-3.07"] and rows["noise10"] == ["8.7", "5", "-3.7"]
    assert rows["LeCun et al. 1998, linear classifier (60k)"] == ["12", "8.4", "-3.6"]
    assert "noise20" not in rows  # no numbers for it in the comparison
    assert "This run's inputs: deskew off, mean 0.1307, std 0.3081" in text


def test_deskew_section_without_a_pair_says_how_to_make_one(outputs, tmp_path):
    _compare_json(
        tmp_path / "experiments",
        [
            {"run": "deskew", "data.deskew": "True", "optimizer": "adam", "by_variant": {"full": 0.957}},
            {"run": "base", "data.deskew": "False", "optimizer": "sgd", "by_variant": {"full": 0.9264}},
        ],
    )
    params = parse_params({**BASE, "variants": VARIANTS})
    text = "\n".join(report.deskew_section(params, tmp_path / "experiments", outputs / "data/prepared"))
    assert "No plain/deskewed pair of runs" in text and "dvc exp run -n deskew -S data.deskew=true" in text
    assert "12.0 % test error on plain digits and 8.4 % on deskewed ones" in text


def test_the_report_includes_the_deskew_section_and_figure(outputs):
    text = build(outputs, VARIANTS)
    assert "## Beyond the tutorial: deskewed digits" in text and "![test digits before" in text
    assert (outputs / "reports/figures/deskew.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiments_section_leaves_deskewed_runs_out_of_the_optimizer_comparison(tmp_path):
    runs = [
        {"run": "main", "data.deskew": "False", "optimizer": "sgd", "test.accuracy": 0.9264},
        {"run": "adam", "data.deskew": "False", "optimizer": "adam", "test.accuracy": 0.9263},
        {"run": "deskew", "data.deskew": "True", "optimizer": "sgd", "test.accuracy": 0.9557},
    ]
    (tmp_path / "compare.json").write_text(json.dumps({"variant": "full", "metric": "test.accuracy", "runs": runs}))
    table = "\n".join(report.experiments_section(tmp_path, tmp_path / "reports"))
    rows = {
        ln.split("|")[1].strip(): ln.split("|")[2].strip()
        for ln in table.splitlines()
        if ln.startswith("| ") and "optimizer" not in ln
    }
    assert rows == {"adam": "0.9263", "sgd": "0.9264"}  # the tutorial's SGD band is for plain digits
