"""The README says what the committed run measured, and its links and the docs' links lead somewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mnistlr.data import subset_size
from mnistlr.params import load_params
from mnistlr.reference import EXPECTED_BY_OPTIMIZER, expected_range
from tests.conftest import REPO

README = REPO / "README.md"


def results_rows(text: str) -> list[list[str]]:
    """The cells of the README's results table (between its two markers), header and rule left out."""
    block = text.split("<!-- results table: tests/test_readme.py -->", 1)[1].split("<!-- end of results table -->", 1)[
        0
    ]
    lines = [ln for ln in block.strip().splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def expected_rows(repo: Path) -> list[list[str]]:
    """The table as the committed metrics/*.json and params.yaml give it."""
    params = load_params(repo / "params.yaml")
    n_train = 60_000 - params.data.val_size
    rows = []
    for name, v in params.variants.items():
        m = json.loads((repo / "metrics" / f"{name}.json").read_text())
        size = subset_size(n_train, v.fraction)
        band = expected_range(v.fraction, v.noise)
        expects = f"{band[0]:g}-{band[1]:g}" if band else "-"
        if name == params.reference_variant():
            lo, hi = EXPECTED_BY_OPTIMIZER[params.optimizer]
            expects += f" ({params.optimizer.upper()}: {lo:g}-{hi:g})"
        rows.append(
            [
                name,
                str(size),
                str(round(v.noise * size)),
                f"{100 * m['val']['accuracy']:.2f}",
                f"{100 * m['test']['accuracy']:.2f}",
                expects,
            ]
        )
    return rows


def test_the_results_table_is_the_committed_metrics():
    assert results_rows(README.read_text()) == expected_rows(REPO)


def test_the_check_fails_on_a_drifted_number(tmp_path):
    drifted = README.read_text().replace("| 92.64 |", "| 92.65 |", 1)
    assert results_rows(drifted) != expected_rows(REPO)


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 3
    broken = []
    for page in pages:
        for target, _ in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []
