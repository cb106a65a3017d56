"""The house: stage deps complete by construction, imports flowing one way, torch only where a gradient is computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_project, dvc, run
from tests.imports import import_closure, imported_modules, module_file

# Lower floors never import higher ones; a module may import its own floor's neighbours only if listed earlier.
FLOORS = [
    "errors",
    "atomic",
    "repo",
    "stats",
    "params",
    "data",
    "prepare",
    "model",
    "metrics",
    "reference",
    "figures",
    "train",
    "evaluate",
    "report",
    "studies_page",
    "record",
    "grid",
    "review",
    "sweep",
    "studies",
    "predict",
    "cli",
]


def _pipelines() -> list[tuple[Path, dict]]:
    return [
        (REPO / "dvc.yaml", yaml.safe_load((REPO / "dvc.yaml").read_text())),
        (REPO / "studies" / "dvc.yaml", yaml.safe_load((REPO / "studies" / "dvc.yaml").read_text())),
    ]


def _stages() -> list[tuple[str, str, list[str]]]:
    """(pipeline:stage, entry point, deps) for every stage, deps relative to the repository root."""
    out = []
    for path, spec in _pipelines():
        for name, stage in spec["stages"].items():
            body = stage.get("do", stage)
            wdir = (path.parent / body.get("wdir", ".")).resolve()
            entry = next(tok for tok in body["cmd"].split() if tok.endswith(".py"))
            deps = [(wdir / d).resolve().relative_to(REPO).as_posix() for d in body["deps"] if "${" not in d]
            out.append(
                (f"{path.relative_to(REPO)}:{name}", (wdir / entry).resolve().relative_to(REPO).as_posix(), deps)
            )
    return out


@pytest.mark.parametrize("stage,entry,deps", _stages(), ids=[s[0] for s in _stages()])
def test_stage_deps_list_exactly_the_code_it_imports(stage, entry, deps):
    needed = import_closure(REPO / entry)
    listed = {d for d in deps if d.endswith(".py")}
    assert not needed - listed, f"{stage} imports but does not list in deps: {sorted(needed - listed)}"
    assert not listed - needed, f"{stage} lists code it never imports: {sorted(listed - needed)}"


def test_the_studies_are_a_dvc_project_that_writes_only_inside_studies():
    """studies/ has a .dvc of its own, so the root project's dvc commands never list its stages; it reads the
    root project's files through ../ and writes nothing outside studies/ (DVC keeps an output outside a
    project out of its run cache)."""
    assert (REPO / "studies" / ".dvc" / "config").is_file()
    studies = REPO / "studies"
    for name, stage in yaml.safe_load((studies / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        assert "wdir" not in body, f"studies/dvc.yaml:{name} runs outside studies/"
        written = [
            next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots")
            for o in body.get(key, [])
        ]
        assert written, name
        for path in written:
            assert (studies / path).resolve().is_relative_to(studies), f"studies/dvc.yaml:{name} writes {path}"
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert not [d for s in root.values() for d in s.get("deps", []) if d.startswith("studies/")]


def test_the_report_stages_read_no_figure_model_or_evaluate_code():
    """The pages read the tutorial's numbers from mnistlr/reference.py, so drawing code is none of their deps."""
    drawing = {"mnistlr/evaluate.py", "mnistlr/figures.py", "mnistlr/model.py", "mnistlr/train.py"}
    for stage, _, deps in _stages():
        if stage.endswith(":report"):
            assert not drawing & set(deps), f"{stage} depends on {sorted(drawing & set(deps))}"


def test_editing_figures_reruns_evaluate_and_finds_the_report_up_to_date(reproduced, tmp_path):
    """evaluate draws with figures.py, the report only reads evaluate's metrics and predictions: after an edit of
    figures.py that leaves those the same, dvc reruns evaluate and skips the report."""
    dest = copy_project(reproduced, tmp_path / "p")
    env = reproduced[1]
    figures = dest / "mnistlr" / "figures.py"
    figures.write_text(figures.read_text() + "\n# an edit that draws nothing differently\n")
    status = json.loads(dvc("status", "--json", "dvc.yaml", cwd=dest, env=env).stdout)  # the studies never ran here
    assert sorted(status) == ["evaluate"], status
    assert {"changed deps": {"mnistlr/figures.py": "modified"}} in status["evaluate"], status
    out = dvc("repro", cwd=dest, env=env).stdout
    assert "Running stage 'evaluate'" in out, out
    assert "Stage 'report' didn't change, skipping" in out and "Running stage 'report'" not in out, out
    assert json.loads(dvc("status", "--json", "dvc.yaml", cwd=dest, env=env).stdout) == {}


def test_the_closure_follows_imports_inside_functions_and_packages(tmp_path):
    pkg = tmp_path / "mnistlr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from mnistlr import b\n")
    (pkg / "b.py").write_text("import mnistlr.c\n")
    (pkg / "c.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    (tmp_path / "entry.py").write_text("from mnistlr.a import f\n")
    assert import_closure(tmp_path / "entry.py", tmp_path) == {
        "entry.py",
        "mnistlr/__init__.py",
        "mnistlr/a.py",
        "mnistlr/b.py",
        "mnistlr/c.py",
    }


def test_every_module_has_a_floor_and_imports_only_below_it():
    modules = sorted(p.stem for p in (REPO / "mnistlr").glob("*.py") if p.stem != "__init__")
    assert sorted(modules) == sorted(FLOORS), "a module was added or removed: give it a floor in FLOORS"
    for name in modules:
        for dep in imported_modules(REPO / "mnistlr" / f"{name}.py"):
            target = dep.split(".")[1] if dep.startswith("mnistlr.") else None
            if target in FLOORS:
                assert FLOORS.index(target) < FLOORS.index(name), (
                    f"mnistlr.{name} imports mnistlr.{target}, a floor above it"
                )


def test_only_the_training_modules_import_torch():
    importers = {
        p.stem
        for p in (REPO / "mnistlr").glob("*.py")
        if any(m == "torch" or m.startswith("torch.") for m in imported_modules(p))
    }
    assert importers == {"train", "studies"}


def test_dvc_reads_yaml_with_ruamels_c_parser():
    """dvc parses dvc.lock, dvc.yaml and params.yaml through YAML(typ="safe") dozens of times a run;
    ruamel.yaml >= 0.19.1 leaves its C parser out unless ruamel.yaml.clib is installed (pyproject.toml)."""
    from ruamel.yaml import YAML, main

    assert main.CParser is not None, "ruamel.yaml has no C parser: install ruamel.yaml.clib"
    assert YAML(typ="safe").Parser is main.CParser


def test_stages_hold_no_logic():
    """An entry point parses arguments and calls mnistlr: no function of its own but main."""
    import ast

    for path in (REPO / "stages").glob("*.py"):
        tree = ast.parse(path.read_text())
        functions = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        assert functions == ["main"], f"{path.name} defines {functions}"
        assert all(module_file(m) is None or m.startswith("mnistlr") for m in imported_modules(path))


# --- torch stays out of the processes that compute no gradient ------------------------------------

PROBE = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    if sys.argv[0].endswith('.py'):\n"
    "        runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "    else:\n"
    "        from mnistlr.cli import app\n"
    "        sys.argv = ['mnistlr', *sys.argv]\n"
    "        app()\n"
    "except SystemExit as exc:\n"
    "    code = exc.code\n"
    "else:\n"
    "    code = 0\n"
    "print('TORCH-LOADED' if 'torch' in sys.modules else 'TORCH-ABSENT', code)\n"
)


def _probe(cwd: Path, env: dict, *argv: str) -> subprocess.CompletedProcess:
    proc = run([sys.executable, "-c", PROBE, *argv], cwd, env=env)
    assert proc.stdout.strip().splitlines()[-1] == "TORCH-ABSENT 0", proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def small_project(tmp_path_factory, reproduced):
    """A copy of the session's reproduced project, with one experiment (a param of evaluate and report only:
    what the torch-free commands read is the same whatever trained the model)."""
    dest = copy_project(reproduced, tmp_path_factory.mktemp("house") / "p")
    env = reproduced[1]
    dvc("exp", "run", "-n", "fewer-confusions", "-S", "report.top_confusions=2", cwd=dest, env=env)
    return dest, env


def test_no_gradient_stages_never_import_torch(small_project):
    dest, env = small_project
    _probe(dest, env, "stages/prepare.py", "--out", "data/prepared", "--raw", "data/raw")
    _probe(dest, env, "stages/evaluate.py")
    _probe(dest, env, "stages/report.py", "--out", "reports/report.md")
    assert json.loads((dest / "metrics" / "full.json").read_text())["test"]["accuracy"] > 0.5


def test_review_commands_never_import_torch(small_project):
    dest, env = small_project
    out = _probe(dest, env, "compare", "--out", "experiments").stdout
    assert "fewer-confusions" in out and "report.top_confusions" in out, out
    _probe(dest, env, "gate", "--base", "HEAD", "--max-drop", "1")
    _probe(dest, env, "review", "--base", "HEAD", "--out", "reports/review.md")
    assert (dest / "reports" / "review.md").read_text().startswith("<!-- mnistlr-review -->")


def test_predict_never_imports_torch(small_project, tmp_path):
    import numpy as np
    from PIL import Image

    dest, env = small_project
    img = np.zeros((28, 28), dtype=np.uint8)
    img[5:23, 13:16] = 255
    Image.fromarray(img).save(tmp_path / "one.png")
    out = _probe(dest, env, "predict", str(tmp_path / "one.png"), "--model", "models/full.npz").stdout
    assert "one.png:" in out
