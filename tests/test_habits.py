"""A DVC user's habits right after `dvc repro`: `dvc status`, `dvc exp save`, `dvc exp show`.

The studies are a DVC project of their own (studies/), so none of these sees their stages or outputs.
"""

from __future__ import annotations

import json

import yaml

from tests.conftest import copy_project, dvc, run

UP_TO_DATE = "Data and pipelines are up to date."


def edit_optimizer(project, value: str) -> None:
    """A plain edit of params.yaml, as a user makes it (one line changed, the rest as it was)."""
    path = project / "params.yaml"
    text = path.read_text()
    old = next(line for line in text.splitlines() if line.startswith("optimizer:"))
    path.write_text(text.replace(old + "\n", f"optimizer: {value}\n", 1))


def locked(project, stage: str, key: str):
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["params"]["params.yaml"][key]


def test_after_repro_status_is_clean_and_exp_save_records_a_reproduced_edit(reproduced, tmp_path):
    project, env = copy_project(reproduced, tmp_path / "p"), reproduced[1]
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    before = locked(project, "train", "optimizer")
    after = "adam" if before == "sgd" else "sgd"
    edit_optimizer(project, after)
    stale = json.loads(dvc("status", "--json", cwd=project, env=env).stdout)
    assert "train" in stale and "prepare" not in stale, stale  # the edit, and only what reads it
    assert not [s for s in stale if s.startswith("studies")], stale
    dvc("repro", cwd=project, env=env)
    saved = dvc("exp", "save", "-n", "x", cwd=project, env=env)
    assert "Experiment has been saved as: x" in saved.stdout, saved.stdout + saved.stderr
    assert locked(project, "train", "optimizer") == after
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    shown = json.loads(dvc("exp", "show", "--json", cwd=project, env=env).stdout)
    names = [exp.get("name") for row in shown for exp in row.get("experiments") or [] for exp in exp["revs"]]
    assert "x" in names, names


def test_exp_save_without_repro_records_the_edit_beside_the_old_models(reproduced, tmp_path):
    """DVC's `dvc exp save` commits every stage as the workspace stands (`dvc commit --force`): after an edit
    that was not reproduced, dvc.lock and the run cache say the old models were trained with the new value,
    and a later run of that value restores them without training. The README's advice (`dvc repro` before
    `dvc exp save`, or `dvc exp run`) rests on this; the day DVC stops doing it, this
    test fails and the advice can go."""
    project, env = copy_project(reproduced, tmp_path / "p"), reproduced[1]
    models = {p.name: p.read_bytes() for p in (project / "models").iterdir()}
    before = locked(project, "train", "optimizer")
    after = "adam" if before == "sgd" else "sgd"
    edit_optimizer(project, after)
    dvc("exp", "save", "-n", "unreproduced", cwd=project, env=env)  # succeeds: nothing outside this project
    assert locked(project, "train", "optimizer") == after
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    assert {p.name: p.read_bytes() for p in (project / "models").iterdir()} == models

    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], project, env)
    cached = dvc("exp", "run", "-S", f"optimizer={after}", cwd=project, env=env).stdout
    assert "Stage 'train' is cached - skipping run" in cached, cached
    assert {p.name: p.read_bytes() for p in (project / "models").iterdir()} == models
