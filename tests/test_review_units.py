"""Unit tests of the review tooling: gate verdicts, experiment tables, review/report helpers, HTML localizing."""

from __future__ import annotations

import pandas as pd
import pytest

from mnistlr import compare, gate, html_render, review
from mnistlr.errors import MnistlrError
from mnistlr.params import parse_params
from mnistlr.report_review import noise_table


def diff(**accs):
    """A `dvc metrics diff --all --json`-shaped dict: variant=(old, new) test accuracies."""
    return {f"metrics/{v}.json": {"test.accuracy": {"old": o, "new": n, "diff": None if o is None else n - o},
                                  "test.loss": {"old": 0.3, "new": 0.3, "diff": 0.0}}
            for v, (o, n) in accs.items()}


def test_gate_fails_with_one_line_naming_variant_and_both_values():
    ok, line = gate.verdict(gate.changes(diff(full=(0.925, 0.91), noise10=(0.90, 0.901)), "test.accuracy"),
                            "test.accuracy", 0.002, "main")
    assert not ok and "\n" not in line
    assert "full" in line and "0.9250" in line and "0.9100" in line and "noise10" not in line


def test_gate_passes_within_allowance_and_for_new_variants():
    ok, line = gate.verdict(gate.changes(diff(full=(0.925, 0.9235), extra=(None, 0.5)), "test.accuracy"),
                            "test.accuracy", 0.002, "main")
    assert ok and line.startswith("gate passed")


@pytest.mark.parametrize("metric", ["test.ece", "val.nll"])
def test_gate_treats_calibration_error_and_nll_as_lower_is_better(metric):
    worse = {"metrics/full.json": {metric: {"old": 0.010, "new": 0.020}}}
    better = {"metrics/full.json": {metric: {"old": 0.020, "new": 0.010}}}
    assert not gate.verdict(gate.changes(worse, metric), metric, 0.005, "main")[0]
    assert gate.verdict(gate.changes(better, metric), metric, 0.005, "main")[0]


def test_gate_treats_loss_as_lower_is_better():
    d = {"metrics/full.json": {"test.loss": {"old": 0.30, "new": 0.35}}}
    ok, line = gate.verdict(gate.changes(d, "test.loss"), "test.loss", 0.01, "main")
    assert not ok and "0.3000" in line and "0.3500" in line


def test_gate_unknown_metric_names_accepted_ones():
    with pytest.raises(MnistlrError, match="'test.acc'.*accepted: test.accuracy, test.loss"):
        gate.changes(diff(full=(0.9, 0.9)), "test.acc")


def exp_show():
    """A trimmed `dvc exp show --json`: the workspace, a baseline commit and two experiments (one queued)."""
    def data(rev, opt, wd, acc):
        return {"rev": rev, "params": {"params.yaml": {"data": {"seed": 42, "optimizer": opt,
                                                                "train": {"weight_decay": wd, "epochs": 2}}}},
                "metrics": {"metrics/full.json": {"data": {"test": {"accuracy": acc, "loss": 1 - acc},
                                                           "val": {"accuracy": acc}}}}}
    return [
        {"rev": "workspace", "name": None, "data": data("workspace", "sgd", 0.0, 0.9)},
        {"rev": "a" * 40, "name": "main", "data": data("a" * 40, "sgd", 0.0, 0.9), "experiments": [
            {"revs": [{"rev": "b" * 40, "name": "exp-adam", "data": data("b" * 40, "adam", 0, 0.93)}]},
            {"revs": [{"rev": "c" * 40, "name": "exp-wd", "data": data("c" * 40, "sgd", 0.0001, 0.89)}]},
            {"revs": [{"rev": "d" * 40, "name": "queued", "data": {"rev": "d" * 40, "params": {}, "metrics": {}}}]},
        ]},
    ]


def test_compare_table_keeps_differing_params_and_sorts_best_first():
    runs = compare.runs_from_exp_show(exp_show(), "full")
    assert [r.name for r in runs] == ["main", "exp-adam", "exp-wd"]  # workspace and queued left out
    assert compare.differing_params(runs) == ["optimizer", "train.weight_decay"]  # 0 and 0.0 read alike
    table = compare.comparison_table(runs, "test.accuracy")
    assert list(table["run"]) == ["exp-adam", "main", "exp-wd"]
    assert list(table.columns[:4]) == ["run", "rev", "optimizer", "train.weight_decay"]
    md = compare.to_markdown(table, ["optimizer", "train.weight_decay"], "full", "test.accuracy", "compare.png")
    assert "| exp-adam" in md and "0.9300" in md and "| 0.0001 " in md and "sweep grid" in md


def test_compare_without_runs_or_metric_is_a_user_error():
    with pytest.raises(MnistlrError, match="no experiments"):
        compare.comparison_table([], "test.accuracy")
    with pytest.raises(MnistlrError, match="'nope'.*accepted"):
        compare.comparison_table(compare.runs_from_exp_show(exp_show(), "full"), "nope")


def test_review_headline_table_shows_base_and_workspace_values():
    md = review.headline_table(diff(full=(0.925, 0.93)), "main")
    assert "| full | test.accuracy | 0.9250 | 0.9300 | +0.0050 |" in md


def test_noise_table_pairs_noisy_with_clean_of_same_size():
    params = parse_params({"variants": {"full": {"fraction": 1.0, "noise": 0.0}, "noise10": {"fraction": 1.0, "noise": 0.1},
                                        "frac10": {"fraction": 0.1, "noise": 0.0}}})
    m = {n: {"val": {"accuracy": a}, "test": {"accuracy": a}} for n, a in (("full", 0.92), ("noise10", 0.90), ("frac10", 0.85))}
    t = noise_table(params, m)
    assert list(t["variant"]) == ["full", "noise10"]
    assert t.loc[t["variant"] == "noise10", "test acc vs clean (points)"].item() == pytest.approx(-2.0)
    assert isinstance(t, pd.DataFrame)


def test_localize_scripts_rewrites_the_vega_cdn_tags(tmp_path):
    page = tmp_path / "index.html"
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
                    '<script src="https://cdn.jsdelivr.net/npm/vega-lite@5.2.0"></script>'
                    '<script src="https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"></script>')
    assert html_render.localize_scripts(page, tmp_path / "js") == 3
    text = page.read_text()
    assert "cdn.jsdelivr" not in text and "js/vega-lite.min.js" in text and "js/vega-embed.min.js" in text
