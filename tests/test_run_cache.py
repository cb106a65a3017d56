"""DVC's run cache: a config that already ran restores train's and evaluate's outputs without starting them."""

from __future__ import annotations

from tests.conftest import copy_project, dvc, run

# Loaded by every Python process of the run (PYTHONPATH): each stage process appends its entry point
# to a log, so a test sees which stages actually started a process, not what dvc printed.
STAGE_LOGGER = """
import os, sys
if sys.argv and os.path.basename(os.path.dirname(os.path.abspath(sys.argv[0]))) == "stages":
    with open(os.environ["MNISTLR_TEST_STAGE_LOG"], "a") as log:
        log.write(os.path.basename(sys.argv[0]) + "\\n")
"""
OUTPUTS = ("models", "metrics", "plots", "reports")


def output_bytes(project) -> dict[str, bytes]:
    """Every file under the pipeline's output folders, by path."""
    return {
        str(p.relative_to(project)): p.read_bytes()
        for folder in OUTPUTS
        for p in sorted((project / folder).rglob("*"))
        if p.is_file()
    }


def test_a_config_already_run_starts_no_training_or_evaluation_and_restores_the_same_bytes(tmp_path, reproduced):
    project = copy_project(reproduced, tmp_path / "proj")  # sgd, reproduced and committed
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STAGE_LOGGER)
    log = tmp_path / "stages.log"
    env = {**reproduced[1], "PYTHONPATH": str(hook), "MNISTLR_TEST_STAGE_LOG": str(log)}

    def started(*args: str) -> list[str]:
        log.write_text("")
        dvc(*args, cwd=project, env=env)
        return log.read_text().split()

    sgd = output_bytes(project)
    assert started("repro") == []  # the hook sees nothing when nothing runs...
    assert started("exp", "run", "-S", "optimizer=adam") == ["train.py", "evaluate.py", "report.py"]  # ...and this
    adam = output_bytes(project)
    assert adam["metrics/full.json"] != sgd["metrics/full.json"]
    # back to a config that already ran: DVC's run cache restores train's and evaluate's outputs without
    # starting them; only the report, a page committed to git that is neither a metric nor a plot, reruns
    assert started("exp", "run", "-S", "optimizer=sgd") == ["report.py"]
    assert output_bytes(project) == sgd
    assert started("exp", "run", "-S", "optimizer=adam") == ["report.py"]
    assert output_bytes(project) == adam
    assert (
        run(["git", "status", "--porcelain", "--untracked-files=no"], project, env).stdout.strip() != ""
    )  # adam, not HEAD
