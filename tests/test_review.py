"""Unit tests of mnistlr.review: the gate's verdicts, the experiment tables, the review page; and the
HTML localizing of the Chromium helper. dvc itself is replaced by recorded JSON here; the end-to-end
tests (test_review_e2e.py, test_sweep_e2e.py) run it for real."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from mnistlr import review, stats
from mnistlr.errors import MnistlrError
from mnistlr.metrics import higher_is_better
from mnistlr.review import Run
from tests import html_render


def diff(**accs):
    """A `dvc metrics diff --all --json`-shaped dict: variant=(old, new) test accuracies."""
    return {
        f"metrics/{v}.json": {
            "test.accuracy": {"old": o, "new": n, "diff": None if o is None else n - o},
            "test.loss": {"old": 0.3, "new": 0.3, "diff": 0.0},
        }
        for v, (o, n) in accs.items()
    }


def verdict(d: dict, metric: str = "test.accuracy", max_drop: float = 0.002) -> tuple[bool, str]:
    return review.gate_verdict(review.changes(d, metric), metric, max_drop, "main")


# --- the gate --------------------------------------------------------------------------------------


def test_gate_fails_with_one_line_naming_variant_and_both_values():
    ok, line = verdict(diff(full=(0.925, 0.91), noise10=(0.90, 0.901)))
    assert not ok and "\n" not in line
    assert "full" in line and "0.9250" in line and "0.9100" in line and "noise10" not in line


def test_gate_passes_within_allowance():
    ok, line = verdict(diff(full=(0.925, 0.9235), noise10=(0.90, 0.90)))
    assert ok and line.startswith("gate passed") and "\n" not in line
    assert "2 variant(s)" in line and "full 0.9250 -> 0.9235" in line  # the largest drop, named


def test_gate_names_a_variant_new_on_the_branch_in_the_passing_line():
    ok, line = verdict(diff(full=(0.925, 0.9235), frac75=(None, 0.5)))
    assert ok and line.startswith("gate passed") and "\n" not in line
    assert re.search(r"new on this branch \(no main value\): frac75$", line), line
    assert "1 variant(s)" in line  # only `full` has two sides to compare
    ok, line = verdict(diff(full=(0.925, 0.9235)))
    assert ok and "new on this branch" not in line


def test_gate_names_a_new_variant_when_it_fails_too():
    ok, line = verdict(diff(full=(0.925, 0.90), frac75=(None, 0.5)))
    assert not ok and "full" in line and line.endswith("new on this branch (no main value): frac75")


@pytest.mark.parametrize("metric", ["test.ece", "test.loss", "val.loss"])
def test_gate_fails_when_a_lower_is_better_metric_rises(metric):
    assert not higher_is_better(metric)
    worse = {"metrics/full.json": {metric: {"old": 0.010, "new": 0.020}}}
    better = {"metrics/full.json": {metric: {"old": 0.020, "new": 0.010}}}
    ok, line = verdict(worse, metric, 0.005)
    assert not ok and "0.0100" in line and "0.0200" in line and "drop 0.0100" in line, line
    assert verdict(better, metric, 0.005)[0]  # falling is an improvement, however far


def test_gate_on_accuracy_passes_a_rise_of_any_size():
    assert verdict(diff(full=(0.80, 0.95)))[0]


def test_gate_unknown_metric_names_accepted_ones():
    with pytest.raises(MnistlrError, match="'test.acc'.*accepted: test.accuracy, test.loss"):
        review.changes(diff(full=(0.9, 0.9)), "test.acc")


def test_gate_rejects_a_negative_allowance():
    with pytest.raises(MnistlrError, match="--max-drop -0.1 is negative"):
        review.run_gate("main", "test.accuracy", -0.1)


# --- compare ---------------------------------------------------------------------------------------


def exp_show():
    """A trimmed `dvc exp show --json` as dvc 3 writes it during a queue: the workspace, a baseline commit, two
    finished experiments (one run by the queue, one in the workspace: no executor), and one queued, one running and
    one failed experiment. As in dvc's own output, the running one carries the metrics of the folder it runs in (here
    the best numbers of all) and the failed one its baseline's; each run has two variants."""

    def data(rev, opt, wd, acc):
        metrics = {
            f"metrics/{v}.json": {
                "data": {
                    "test": {"accuracy": a, "loss": round(1 - a, 6), "ece": 0.01},
                    "val": {"accuracy": a, "loss": round(1 - a, 6)},
                    "weights": {"sparsity": 0.2},
                }
            }
            for v, a in (("full", acc), ("noise10", round(acc - 0.031234, 6)))
        }
        return {
            "rev": rev,
            "params": {
                "params.yaml": {"data": {"seed": 42, "optimizer": opt, "train": {"weight_decay": wd, "epochs": 2}}}
            },
            "metrics": metrics,
        }

    def executor(state):
        return {"state": state, "name": "dvc-task", "local": {"root": None, "pid": 1, "returncode": None}}

    def exp(rev, name, state, d, error=None):
        entry = {"rev": rev, "name": name, "data": d, "error": error, "experiments": None}
        return {"revs": [entry], "executor": executor(state) if state else None, "name": name}

    queued = data("e" * 40, "sgd", 0.001, 0.9)
    queued["metrics"] = {}  # dvc drops a queued run's metrics
    return [
        {"rev": "workspace", "name": None, "data": data("workspace", "sgd", 0.0, 0.9)},
        {
            "rev": "a" * 40,
            "name": "main",
            "data": data("a" * 40, "sgd", 0.0, 0.9),
            "experiments": [
                exp("f" * 40, "busy", "running", data("f" * 40, "sgd", 0.0001, 0.97)),
                exp("b" * 40, "exp-adam", "success", data("b" * 40, "adam", 0, 0.93)),
                exp("c" * 40, "exp-wd", None, data("c" * 40, "sgd", 0.0001, 0.89)),
                exp("e" * 40, "waiting", "queued", queued),
                exp("d" * 40, "broken", "failed", data("d" * 40, "sgd", 0.01, 0.9), {"msg": "Experiment run failed"}),
            ],
        },
    ]


def test_runs_from_exp_show_keep_every_variants_metrics():
    runs = review.finished(review.runs_from_exp_show(exp_show()))
    assert [r.name for r in runs] == ["main", "exp-adam", "exp-wd"]  # workspace and unfinished ones left out
    assert set(runs[1].metrics) == {"full", "noise10"}
    assert runs[1].metrics["full"]["test.accuracy"] == 0.93
    assert runs[1].metrics["noise10"]["test.accuracy"] == pytest.approx(0.898766)
    assert runs[1].rev == "b" * 40 and runs[1].params["optimizer"] == "adam"


def test_queued_running_and_failed_runs_are_listed_by_state_without_the_metrics_dvc_shows_for_them():
    runs = review.runs_from_exp_show(exp_show())
    states = {r.name: r.state for r in runs}
    assert states == {
        "main": "done",
        "busy": "running",
        "exp-adam": "done",
        "exp-wd": "done",
        "waiting": "queued",
        "broken": "failed",
    }
    for r in runs:
        assert (r.metrics == {}) == (r.state != "done"), r
    # their params are theirs: the overrides they run with
    assert {r.name: r.params["train.weight_decay"] for r in runs if r.state != "done"} == {
        "busy": 0.0001,
        "waiting": 0.001,
        "broken": 0.01,
    }
    # the comparison table holds finished runs only: the running one's borrowed 0.97 is not its result
    table = review.comparison_table(runs, "full", "test.accuracy")
    assert list(table["run"]) == ["exp-adam", "main", "exp-wd"] and 0.97 not in list(table["test.accuracy"])


def test_terminal_summary_shows_the_state_of_unfinished_runs_in_place_of_numbers():
    text = review.terminal_table(review.runs_from_exp_show(exp_show()))
    lines = text.splitlines()
    rows = {ln.split()[0]: ln.split() for ln in lines[2:-1]}
    assert rows["busy"][-2:] == ["running", "running"]
    assert rows["waiting"][-2:] == ["queued", "queued"]
    assert rows["broken"][-2:] == ["failed", "failed"]
    assert rows["exp-adam"][-2:] == ["0.9300", "0.8988"]
    assert "0.9700" not in text and "0.9388" not in text  # the running run's borrowed numbers, nowhere
    assert lines[-1] == "broken failed: `dvc queue logs broken` shows why"


def test_compare_table_keeps_differing_params_and_sorts_best_first():
    runs = review.runs_from_exp_show(exp_show())
    assert review.differing_params(runs) == ["optimizer", "train.weight_decay"]  # 0 and 0.0 read alike
    table = review.comparison_table(runs, "full", "test.accuracy")
    assert list(table["run"]) == ["exp-adam", "main", "exp-wd"]
    assert list(table.columns[:4]) == ["run", "rev", "optimizer", "train.weight_decay"]
    assert list(table["rev"]) == ["b" * 7, "a" * 7, "c" * 7]
    noisy = review.comparison_table(runs, "noise10", "test.accuracy")  # the other variant's numbers
    assert list(noisy["test.accuracy"]) == pytest.approx([0.898766, 0.868766, 0.858766])
    md = review.comparison_markdown(table, ["optimizer", "train.weight_decay"], "full", "test.accuracy", "compare.png")
    assert "| exp-adam" in md and "0.9300" in md and "| 0.0001 " in md and "sweep grid" in md


def run_with(name: str, ece: float, acc: float) -> Run:
    return Run(
        name=name,
        rev=name * 40,
        params={"optimizer": "sgd", "train.lr.sgd": 0.1},
        metrics={"full": {"test.accuracy": acc, "test.ece": ece, "test.loss": 0.3, "val.accuracy": acc}},
    )


def test_compare_by_a_lower_is_better_metric_sorts_ascending():
    runs = [run_with("a", 0.030, 0.93), run_with("b", 0.010, 0.90), run_with("c", 0.020, 0.92)]
    by_ece = review.comparison_table(runs, "full", "test.ece")
    assert list(by_ece["run"]) == ["b", "c", "a"]  # smallest calibration error first
    assert list(by_ece["test.ece"]) == [0.010, 0.020, 0.030]
    assert list(review.comparison_table(runs, "full", "test.accuracy")["run"]) == ["a", "c", "b"]
    # the grid of a two-param sweep keeps the best (the smallest) ECE per cell
    table = by_ece.assign(x=["1", "1", "2"], y=["p", "p", "q"])
    grid = review.grid_markdown(table, ["x", "y"], "test.ece")
    assert "0.0100" in grid and "0.0200" not in grid


def test_terminal_summary_has_every_variants_accuracy_in_full():
    runs = review.finished(review.runs_from_exp_show(exp_show()))
    text = review.terminal_table(runs)
    lines = text.splitlines()
    assert lines[0] == "test.accuracy of every variant:"
    header = lines[1].split()
    assert header == ["run", "optimizer", "train.weight_decay", "full", "noise10"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert set(rows) == {"main", "exp-adam", "exp-wd"}
    for r in runs:
        for v in ("full", "noise10"):
            assert rows[r.name][header.index(v)] == f"{r.metrics[v]['test.accuracy']:.4f}"
    assert rows["exp-adam"][1:3] == ["adam", "0"] and rows["exp-wd"][1:3] == ["sgd", "0.0001"]
    assert "…" not in text and "..." not in text


def test_terminal_summary_marks_a_variant_a_run_lacks():
    runs = [
        run_with("a", 0.03, 0.93),
        Run(
            "b",
            "b" * 40,
            {"optimizer": "adam", "train.lr.sgd": 0.1},
            {"full": {"test.accuracy": 0.9}, "frac10": {"test.accuracy": 0.81}},
        ),
    ]
    lines = review.terminal_table(runs).splitlines()
    assert lines[1].split() == ["run", "optimizer", "full", "frac10"]
    assert lines[2].split() == ["a", "sgd", "0.9300", "-"] and lines[3].split() == ["b", "adam", "0.9000", "0.8100"]


def test_compare_without_runs_or_metric_is_a_user_error():
    with pytest.raises(MnistlrError, match="no committed run or experiment has metrics/full.json"):
        review.comparison_table([], "full", "test.accuracy")
    runs = review.runs_from_exp_show(exp_show())
    with pytest.raises(MnistlrError, match="metrics/frac10.json"):
        review.comparison_table(runs, "frac10", "test.accuracy")
    with pytest.raises(MnistlrError, match="'nope'.*accepted: test.accuracy, test.ece, test.loss"):
        review.comparison_table(runs, "full", "nope")


def only_baseline(*experiments) -> list[dict]:
    """`dvc exp show --json` of a workspace and its baseline `main`, with the given experiment ranges."""
    show = exp_show()
    show[1]["experiments"] = list(experiments) or None
    return show


def test_nothing_to_compare_is_one_line_saying_how_to_run_experiments():
    with pytest.raises(MnistlrError) as caught:
        review.check_comparable(review.runs_from_exp_show(only_baseline()))
    assert str(caught.value).startswith("no experiments to compare: run some with dvc exp run")
    waiting = exp_show()[1]["experiments"][3]  # the queued one
    with pytest.raises(MnistlrError, match=r"no finished experiment to compare yet: waiting \(queued\); "):
        review.check_comparable(review.runs_from_exp_show(only_baseline(waiting)))
    review.check_comparable(review.runs_from_exp_show(exp_show()))  # three finished runs: fine


def fake_dvc(monkeypatch, answers: list) -> list[tuple]:
    """Replace review's dvc_json: each call takes the next answer (an exception is raised); returns the calls."""
    calls = []

    def dvc_json(*args, cwd="."):
        calls.append(args)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(review, "dvc_json", dvc_json)
    return calls


VANISHED = (
    "`dvc exp show --json` failed: ERROR: unexpected error - '/home/u/p/.dvc/tmp/exps/tmpk3j2x9f1/.dvc' does not exist"
)


EMPTY_REPO = "`dvc exp show --json` failed: ERROR: unexpected error - Empty git repo"
RUN_INFO_GONE = (
    "`dvc exp show --json` failed: ERROR: unexpected error - [Errno 2] No such file or directory: "
    "'/home/u/p/.dvc/tmp/exps/run/7aee0e79d544473c920fbc193f7355e6c5540bce/7aee0e79d544473c920fbc193f7355e6c5540bce.run'"
)


def test_exp_show_asks_again_when_it_met_a_queued_runs_temp_folder(monkeypatch):
    monkeypatch.setattr(review.time, "sleep", lambda s: None)
    calls = fake_dvc(monkeypatch, [MnistlrError(VANISHED), MnistlrError(EMPTY_REPO), exp_show()])
    assert review.exp_show([]) == exp_show()
    assert calls == [("exp", "show")] * 3
    calls = fake_dvc(monkeypatch, [MnistlrError(RUN_INFO_GONE), exp_show()])
    assert review.exp_show([]) == exp_show()
    assert calls == [("exp", "show")] * 2
    calls = fake_dvc(monkeypatch, [MnistlrError(VANISHED)] * review.QUEUE_RACE_TRIES)
    with pytest.raises(MnistlrError, match="does not exist"):  # every time: it is not transient, say so
        review.exp_show([])
    assert len(calls) == review.QUEUE_RACE_TRIES
    calls = fake_dvc(monkeypatch, [MnistlrError("`dvc exp show --json` failed: ERROR: not a git repository")])
    with pytest.raises(MnistlrError, match="not a git repository"):
        review.exp_show([])
    assert len(calls) == 1  # any other failure is reported at once


def test_compare_writes_files_only_when_given_a_folder(monkeypatch, tmp_path):
    y = np.arange(300) % 10
    monkeypatch.setattr(review, "predictions_at", lambda rev, variant, cwd=".": (y, y))
    curve = pd.DataFrame({"epoch": [1, 2], "val_loss": [0.5, 0.4], "val_accuracy": [0.9, 0.92]})
    monkeypatch.setattr(review, "curves_at", lambda rev, variant, cwd=".": curve)
    monkeypatch.chdir(tmp_path)
    fake_dvc(monkeypatch, [exp_show()])
    table, summary = review.compare_experiments(variant="full", cwd=tmp_path)
    assert list(table["run"]) == ["exp-adam", "main", "exp-wd"]
    assert "busy" in summary and list(tmp_path.iterdir()) == []  # printed, nothing written
    fake_dvc(monkeypatch, [exp_show()])
    review.compare_experiments(tmp_path / "out", variant="full", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.json", "compare.md", "compare.png"]
    page = (tmp_path / "out" / "compare.md").read_text()
    assert "Not finished when compared, so not in the table: busy (running), waiting (queued), broken (failed)." in page
    assert "| busy" not in page


# --- the review page -------------------------------------------------------------------------------


def full_diff() -> dict:
    """`dvc metrics diff main --all --json` of three variants, one of them new on the branch."""

    def entry(old, new):
        return {"old": old, "new": new, "diff": None if old is None else round(new - old, 6)}

    return {
        "diff": {
            "metrics/frac10.json": {"test.accuracy": entry(0.81, 0.815), "test.loss": entry(0.6, 0.58)},
            "metrics/full.json": {"test.accuracy": entry(0.925, 0.93), "test.loss": entry(0.3, 0.29)},
            "metrics/noise20.json": {"test.accuracy": entry(None, 0.87), "test.loss": entry(None, 0.5)},
        }
    }


def test_review_headline_table_shows_base_and_workspace_values():
    md = review.headline_table(full_diff()["diff"], "main")
    assert "| full | test.accuracy | 0.9250 | 0.9300 | +0.0050 |" in md
    assert "| noise20 | test.loss | - | 0.5000 | - |" in md


def test_review_headline_table_rows_do_not_follow_dvcs_key_order():
    d = full_diff()["diff"]
    shuffled = {path: dict(reversed(list(entries.items()))) for path, entries in reversed(list(d.items()))}
    md = review.headline_table(shuffled, "main")
    assert md == review.headline_table(d, "main")
    assert [tuple(c.strip() for c in ln.split("|")[1:3]) for ln in md.splitlines()[2:4]] == [
        ("frac10", "test.accuracy"),
        ("frac10", "test.loss"),
    ]


def test_accuracy_table_has_one_row_per_variant_full_first():
    rows = review.accuracy_table(full_diff()["diff"], "main").splitlines()
    assert rows[0] == (
        "| variant | test accuracy (main) | test accuracy (workspace) | change (points) | "
        "95% CI (points) | McNemar p | fixed | broken |"
    )
    assert rows[2:] == [
        "| full | 0.9250 | 0.9300 | +0.50 | - | - | - | - |",
        "| frac10 | 0.8100 | 0.8150 | +0.50 | - | - | - | - |",
        "| noise20 | - | 0.8700 | - | - | - | - | - |",
    ]
    paired = {"full": stats.PairedChange("full", 1000, 0.925, 0.930, fixed=10, broken=5)}
    row = review.accuracy_table(full_diff()["diff"], "main", paired).splitlines()[2]
    lo, hi = stats.change_interval(10, 5, 1000)
    assert (
        row == f"| full | 0.9250 | 0.9300 | +0.50 | [{100 * lo:+.2f}, {100 * hi:+.2f}] "
        f"| {stats.mcnemar_p(10, 5):.3g} | 10 | 5 |"
    )


@pytest.fixture
def recorded_dvc(monkeypatch):
    """Replace dvc with recorded output: `dvc params diff --md` and `dvc metrics diff --all --json`
    (the returned dict's "diff", which a test may change)."""
    recorded = {"diff": full_diff()}

    def run_dvc(*args, cwd="."):
        assert args[:2] == ("params", "diff"), args
        return "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | optimizer | sgd | adam |\n"

    def dvc_json(*args, cwd="."):
        assert args[:2] == ("metrics", "diff"), args
        return recorded["diff"]

    monkeypatch.setattr(review, "run_dvc", run_dvc)
    monkeypatch.setattr(review, "dvc_json", dvc_json)
    return recorded


def test_review_page_opens_with_the_verdict_then_every_variants_accuracy(recorded_dvc, tmp_path):
    figures = tmp_path / "reports" / "figures"
    (figures / "full").mkdir(parents=True)
    (figures / "learning_curves.png").write_bytes(b"png")
    (figures / "confusion.png").write_bytes(b"png")
    (figures / "full" / "weights.png").write_bytes(b"png")  # not a figure the pipeline draws
    out = tmp_path / "reports" / "review.md"
    text = review.build_review("main", out, figures_dir=figures, cwd=tmp_path)  # no git here: no predictions
    assert out.read_text() == text
    lines = text.splitlines()
    assert lines[0] == review.MARKER
    assert lines[1].startswith("**Passed** against `main`: gate passed: test.accuracy of 2 variant(s)")
    assert lines[1].endswith("new on this branch (no main value): noise20")
    table = lines[lines.index("") + 1 :]
    rows = [ln for ln in table[: table.index("")] if ln.startswith("| ") and not ln.startswith("| variant")]
    assert [r.split("|")[1].strip() for r in rows] == ["full", "frac10", "noise20"]
    assert rows[0] == "| full | 0.9250 | 0.9300 | +0.50 | - | - | - | - |"
    assert "| params.yaml | optimizer | sgd | adam |" in text
    figure_lines = text[text.index("### Figures") :].splitlines()[2:]
    assert figure_lines == [
        "![learning curves (all variants)](figures/learning_curves.png)",
        "![confusion matrix of the reference variant](figures/confusion.png)",
    ]
    assert "weights.png" not in text  # only figures that exist are linked


def test_figure_links_point_at_the_three_pipeline_figures_relative_to_the_page(tmp_path):
    figures = tmp_path / "reports" / "figures"
    figures.mkdir(parents=True)
    assert review.figure_links(tmp_path / "reports", figures) == []
    for name in ("learning_curves.png", "confusion.png", "weights.png", "noise.png"):
        (figures / name).write_bytes(b"png")
    assert review.figure_links(tmp_path / "reports", figures) == [
        "![learning curves (all variants)](figures/learning_curves.png)",
        "![confusion matrix of the reference variant](figures/confusion.png)",
        "![per-class weights (all variants)](figures/weights.png)",
    ]
    # a page elsewhere links the same files by their path from its own folder
    links = review.figure_links(tmp_path / "out" / "pr", figures)
    assert links[2] == "![per-class weights (all variants)](../../reports/figures/weights.png)"


def test_review_page_says_failed_first_when_the_gate_fails(recorded_dvc, tmp_path):
    recorded_dvc["diff"]["diff"]["metrics/full.json"]["test.loss"] = {"old": 0.30, "new": 0.35, "diff": 0.05}
    text = review.build_review(
        "main", tmp_path / "review.md", metric="test.loss", max_drop=0.01, figures_dir=tmp_path, cwd=tmp_path
    )
    lines = text.splitlines()
    assert lines[0] == review.MARKER
    assert lines[1].startswith(
        "**FAILED** against `main`: gate FAILED (max drop 0.01): full test.loss worsened "
        "from 0.3000 (main) to 0.3500 (workspace)"
    ), lines[1]
    assert "frac10" not in lines[1]  # its loss fell
    assert "| full | 0.9250 | 0.9300 | +0.50 |" in text  # the accuracy table is there all the same
    # the same page gated on accuracy, which rose everywhere, passes
    text = review.build_review("main", tmp_path / "review.md", figures_dir=tmp_path, cwd=tmp_path)
    assert text.splitlines()[1].startswith("**Passed** against `main`")


# --- is a change real? ---------------------------------------------------------------------------


def _preds(actual, predicted):
    return np.asarray(actual), np.asarray(predicted)


def test_identical_predictions_change_nothing_with_p_one_and_a_zero_interval():
    y = np.arange(50) % 10
    pred = np.where(np.arange(50) % 7 == 0, (y + 1) % 10, y)
    c = stats.paired_change("full", _preds(y, pred), _preds(y, pred))
    assert (c.fixed, c.broken, c.change, c.p_value, c.interval) == (0, 0, 0.0, 1.0, (0.0, 0.0))


def _exact_mcnemar_p(fixed: int, broken: int) -> float:
    """The two-sided exact McNemar p in whole numbers: 2 * #{splits at least as uneven} / 2^d."""
    d = fixed + broken
    tail = sum(math.comb(d, i) for i in range(min(fixed, broken) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**d)))


@pytest.mark.parametrize(
    "fixed,broken",
    [(10, 2), (2, 10), (0, 1), (0, 3), (1, 4), (7, 8), (5, 5), (0, 40), (130, 100), (60, 100), (300, 250), (900, 1000)],
)
def test_mcnemar_p_is_the_exact_binomial_tail(fixed, broken):
    assert stats.mcnemar_p(fixed, broken) == pytest.approx(_exact_mcnemar_p(fixed, broken), rel=1e-12)
    assert stats.mcnemar_p(fixed, broken) == stats.mcnemar_p(broken, fixed)


def test_mcnemar_p_of_known_tables():
    # 12 disagreements, 10 won by the new model: p = 2 * P(Binomial(12, 1/2) <= 2) = 2 * 79 / 4096
    assert stats.mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-14)
    assert stats.mcnemar_p(0, 3) == pytest.approx(0.25, rel=1e-14)  # 2 * (1/2)^3
    assert stats.mcnemar_p(0, 40) == pytest.approx(2.0**-39, rel=1e-14)
    assert stats.mcnemar_p(5, 5) == 1.0 and stats.mcnemar_p(0, 1) == 1.0 and stats.mcnemar_p(0, 0) == 1.0


# Clopper-Pearson 95 % bounds evaluated in 40-digit arithmetic (the beta quantiles at (1 - 0.95) / 2 as
# a double and its complement), to 18 digits.
CLOPPER_PEARSON_95 = {
    (10, 12): (0.515862251314032895, 0.979137474539907614),
    (1, 20): (0.00126508949794980483, 0.248732762772027736),
    (150, 280): (0.475400624022007502, 0.595264163488637315),
    (600, 1000): (0.568878445955893102, 0.630531012451087547),
}


@pytest.mark.parametrize("k,n", sorted(CLOPPER_PEARSON_95))
def test_clopper_pearson_bounds_equal_reference_values(k, n):
    lo, hi = stats.clopper_pearson(k, n)
    want_lo, want_hi = CLOPPER_PEARSON_95[(k, n)]
    assert lo == pytest.approx(want_lo, rel=1e-14) and hi == pytest.approx(want_hi, rel=1e-14)


@pytest.mark.parametrize("n", [1, 8, 50])
def test_clopper_pearson_with_no_successes_or_no_failures_has_its_closed_form(n):
    # P(X = 0) = (1 - p)^n and P(X = n) = p^n reach 0.025 at these bounds; the other bound is 0 or 1
    assert stats.clopper_pearson(0, n) == pytest.approx((0.0, 1 - 0.025 ** (1 / n)), rel=1e-14)
    assert stats.clopper_pearson(n, n) == pytest.approx((0.025 ** (1 / n), 1.0), rel=1e-14)


@pytest.mark.parametrize("k,n", [(3, 10), (10, 12), (1, 20), (17, 30)])
def test_clopper_pearson_bounds_put_exactly_the_tail_mass_outside(k, n):
    # the binomial tails at the bounds, summed in exact fractions of the returned doubles
    def tail(p: float, ks: range) -> float:
        q = Fraction(p)
        return float(sum(math.comb(n, i) * q**i * (1 - q) ** (n - i) for i in ks))

    lo, hi = stats.clopper_pearson(k, n)
    assert tail(lo, range(k, n + 1)) == pytest.approx(0.025, rel=1e-13)  # P(X >= k) at the lower bound
    assert tail(hi, range(k + 1)) == pytest.approx(0.025, rel=1e-13)  # P(X <= k) at the upper bound
    lo90, hi90 = stats.clopper_pearson(k, n, confidence=0.90)
    assert lo < lo90 < k / n < hi90 < hi


def test_exact_tests_agree_with_scipy_binomtest():
    from scipy.stats import binomtest

    for fixed, broken in [(10, 2), (0, 3), (7, 8), (130, 100), (60, 100), (1, 499), (2000, 1800)]:
        ref = binomtest(fixed, fixed + broken)
        assert stats.mcnemar_p(fixed, broken) == pytest.approx(ref.pvalue, rel=1e-12)
        ci = ref.proportion_ci(method="exact")
        assert stats.clopper_pearson(fixed, fixed + broken) == pytest.approx((ci.low, ci.high), abs=1e-11)


def test_review_and_stats_load_scipy_special_only_when_testing_and_never_scipy_stats():
    probe = (
        "import sys\n"
        "from mnistlr import review, stats\n"
        "print('scipy' in sys.modules)\n"
        "stats.mcnemar_p(10, 2), stats.change_interval(10, 2, 1000)\n"
        "print('scipy.special' in sys.modules, 'scipy.stats' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "False"]


def test_change_interval_scales_the_share_of_disagreements_won():
    # the Clopper-Pearson 95 % interval of 10/12 is [0.5159, 0.9791]: the change is (2 pi - 1) * 12 / n
    lo, hi = stats.change_interval(10, 2, 1000)
    want_lo, want_hi = CLOPPER_PEARSON_95[(10, 12)]
    assert lo == pytest.approx((2 * want_lo - 1) * 12 / 1000, rel=1e-13)
    assert hi == pytest.approx((2 * want_hi - 1) * 12 / 1000, rel=1e-13)
    # all disagreements one way: the bound on that side is exactly the observed change
    lo, hi = stats.change_interval(8, 0, 100)
    assert hi == 0.08 and 0 < lo < 0.08
    assert stats.change_interval(0, 8, 100)[0] == -0.08
    assert stats.change_interval(0, 0, 100) == (0.0, 0.0)


def test_paired_change_counts_fixed_and_broken_images():
    y = np.array([0, 1, 2, 3, 4, 5])
    old = np.array([0, 1, 9, 9, 4, 5])  # 2 and 3 wrong
    new = np.array([0, 9, 2, 3, 4, 5])  # fixes 2 and 3, breaks 1
    c = stats.paired_change("full", _preds(y, old), _preds(y, new))
    assert (c.fixed, c.broken, c.n) == (2, 1, 6)
    assert c.change == pytest.approx(1 / 6)
    assert "full test accuracy 0.6667 -> 0.8333 (+16.67 points" in c.describe() and "2 fixed, 1 broken" in c.describe()


def test_predictions_of_other_test_images_are_a_user_error():
    with pytest.raises(MnistlrError, match="not of the same test images"):
        stats.paired_change("full", _preds([0, 1, 2], [0, 1, 2]), _preds([0, 2, 1], [0, 1, 2]))


def _change(variant, base, new, n=10000):
    """A PairedChange whose accuracies move from base to new by breaking (or fixing) images only."""
    k = round(abs(new - base) * n)
    return stats.PairedChange(variant, n, base, new, fixed=k if new > base else 0, broken=k if new < base else 0)


def test_significance_gate_passes_a_drop_the_test_set_cannot_tell_from_noise():
    noisy = stats.PairedChange("full", 10000, 0.9250, 0.9220, fixed=100, broken=130)  # -0.30 points, p ~ 0.06
    passed, line = review.significance_verdict({"full": noisy}, max_drop=0.002, alpha=0.05, base="main")
    assert passed and line.startswith(
        "gate passed (max drop 0.002, significance 0.05): drops not significant: "
        "full test accuracy 0.9250 -> 0.9220 (-0.30 points"
    ), line
    assert f"McNemar p = {noisy.p_value:.3g}" in line and noisy.p_value > 0.05


def test_significance_gate_fails_a_significant_drop_naming_variant_accuracies_interval_and_p():
    real = _change("frac10", 0.9100, 0.8900)
    fine = _change("full", 0.9250, 0.9260)
    passed, line = review.significance_verdict({"full": fine, "frac10": real}, 0.002, 0.05, "main")
    lo, hi = real.interval
    assert not passed and "\n" not in line
    assert line == (
        "gate FAILED (max drop 0.002, significance 0.05): frac10 test accuracy 0.9100 -> 0.8900 "
        f"(-2.00 points, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}], McNemar p = {real.p_value:.3g}; "
        "0 fixed, 200 broken)"
    )
    assert hi < 0 and real.p_value < 1e-10


def test_significance_gate_keeps_max_drop_a_significant_but_small_drop_passes():
    small = stats.PairedChange("full", 10000, 0.9250, 0.9240, fixed=0, broken=10)  # p ~ 0.002, -0.1 points
    passed, line = review.significance_verdict({"full": small}, 0.002, 0.05, "main")
    assert passed and "within 0.002 of main" in line


@pytest.mark.parametrize(
    "args,match",
    [((0.002, 1.5), "--significance 1.5 is not accepted"), ((0.002, 0.0), "--significance 0.0 is not accepted")],
)
def test_significance_must_be_a_level(args, match):
    with pytest.raises(MnistlrError, match=match):
        review.run_gate("main", "test.accuracy", *args)


def test_significance_applies_to_test_accuracy_only():
    with pytest.raises(MnistlrError, match="--metric 'test.loss' is not accepted with it; accepted: test.accuracy"):
        review.run_gate("main", "test.loss", 0.01, 0.05)


def test_compare_marks_runs_the_test_set_cannot_tell_from_the_best(monkeypatch):
    y = np.arange(1000) % 10
    wrong = lambda k: np.where(np.arange(1000) < k, (y + 1) % 10, y)  # noqa: E731 - first k images wrong
    preds = {"best": wrong(50), "close": wrong(53), "far": wrong(120)}
    monkeypatch.setattr(review, "predictions_at", lambda rev, variant, cwd=".": _preds(y, preds[rev]))
    runs = [
        Run(name, name, {"optimizer": "sgd"}, {"full": {"test.accuracy": 1 - k / 1000}})
        for name, k in (("far", 120), ("best", 50), ("close", 53))
    ]
    table = review.mark_indistinguishable(review.comparison_table(runs, "full", "test.accuracy"), runs, "full")
    assert list(table["run"]) == ["best", "close", "far"]
    assert list(table["same as best"]) == ["yes", "yes", "no"]
    assert table["p vs best"].iloc[0] == 1.0 and table["p vs best"].iloc[1] == pytest.approx(
        stats.mcnemar_p(0, 3), abs=1e-4
    )
    assert table["p vs best"].iloc[2] < 1e-10


# --- the Chromium helper ---------------------------------------------------------------------------


def test_localize_scripts_rewrites_the_vega_cdn_tags(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(
        '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
        '<script src="https://cdn.jsdelivr.net/npm/vega-lite@5.2.0"></script>'
        '<script src="https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"></script>'
    )
    assert html_render.localize_scripts(page, tmp_path / "js") == 3
    text = page.read_text()
    assert "cdn.jsdelivr" not in text and "js/vega-lite.min.js" in text and "js/vega-embed.min.js" in text
