"""Record a grid point as a DVC experiment of this repository from outputs computed elsewhere.

`dvc exp run -S <point>` edits params.yaml, reruns the stages whose deps changed, saves their outputs
to the DVC cache and their runs to the run cache, then commits params.yaml, dvc.lock and the stages'
git-tracked outputs on top of the baseline commit, under refs/exps/<baseline>/<name>. `Recorder` does
the same for outputs a sweep computed in one pass, without starting a stage, through DVC's own code:
params.yaml is edited by DVC's Hydra override writer, dvc.lock and the caches by `Repo.commit` and the
run cache's `save`, the commit message by DVC's experiment hash. The experiment is then what
`dvc exp run -S <point>` gives: `dvc exp show`, `apply`, `push` and the run cache treat it alike.

All of it happens in a detached git worktree of the baseline inside .dvc/tmp/, sharing this
repository's DVC cache, so the user's workspace is never touched. A point is recorded by one ref
update, its last step: a sweep killed at any moment leaves no partial experiment, only a stale
worktree that the next sweep removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mnistlr import atomic
from mnistlr.errors import MnistlrError
from mnistlr.repo import git_answer, run_dvc, run_git

WORKTREES = Path(".dvc") / "tmp" / "sweeps"  # under the repository root; git and DVC both ignore .dvc/tmp
PIPELINE = "dvc.yaml"
LOCK = "dvc.lock"
PARAMS = "params.yaml"


def exp_ref(baseline: str, name: str) -> str:
    """The ref of experiment `name` of `baseline`, as DVC names it (refs/exps/ab/cdef.../name)."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def recorded(root: Path, baseline: str) -> set[str]:
    """Names of the experiments of `baseline` already in this repository."""
    prefix = exp_ref(baseline, "")
    out = run_git("for-each-ref", "--format=%(refname)", prefix, cwd=root)
    return {line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)}


def point_params(params_text: str, overrides: list[str], scratch: Path) -> str:
    """params.yaml as `dvc exp run -S` writes it for these overrides: DVC's own Hydra override writer,
    applied to a copy, so every byte matches (YAML 1.2 floats such as 1e-05 included)."""
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides

    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / PARAMS
    atomic.write_text(path, params_text)
    try:
        apply_overrides(path, overrides)
    except DvcException as exc:
        cause = exc.__cause__ or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise MnistlrError(f"cannot set {' '.join(overrides)}: {first}") from None
    return path.read_text()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_worktrees(root: Path) -> None:
    """Worktrees of sweeps that were killed: their process is gone."""
    folder = root / WORKTREES
    for wt in folder.glob("wt-*") if folder.is_dir() else ():
        pid = wt.name.removeprefix("wt-")
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(wt, ignore_errors=True)
    run_git("worktree", "prune", cwd=root)


def pipeline_stages(root: Path) -> dict[str, dict]:
    """The stages of the project's dvc.yaml, by name, in file order."""
    return (yaml.safe_load((root / PIPELINE).read_text()) or {}).get("stages") or {}


class Recorder:
    """A worktree of `baseline` in which grid points are laid out and recorded one at a time.

    Use as a context manager. For each group of points that share their data: `prepare(params_text)`
    makes data/prepared what that group's params give (from the cache when it was made before); then for
    each point `record(name, params_text, outputs)` moves the point's computed outputs into place and
    records the experiment.
    """

    def __init__(self, root: str | Path, baseline: str) -> None:
        self.root = Path(root).resolve()
        self.baseline = baseline
        self.wt = self.root / WORKTREES / f"wt-{os.getpid()}"
        self._pipeline = pipeline_stages(self.root)
        self.stages = list(self._pipeline)
        self._repo: Any = None
        self._base_lock: dict = {}
        self._outputs: list[str] = []
        self._prepared_key: str | None = None  # the params of the data the worktree holds (prepare)

    # --- the worktree --------------------------------------------------------------------------------

    def __enter__(self) -> Recorder:
        logging.getLogger("dvc").setLevel(logging.WARNING)  # not DVC's "Updating lock file" for every point
        self.wt.parent.mkdir(parents=True, exist_ok=True)
        # one process at a time adds or prunes worktrees (a sweep's pool processes each add their own)
        with _locked(self.wt.parent / ".lock"):
            remove_stale_worktrees(self.root)
            if self.wt.exists():
                shutil.rmtree(self.wt)
            run_git("worktree", "add", "--detach", "--quiet", str(self.wt), self.baseline, cwd=self.root)
        # The worktree shares this repository's cache (and so its run cache); links keep checkouts cheap.
        cache = run_dvc("cache", "dir", cwd=self.root).strip()
        atomic.write_text(
            self.wt / ".dvc" / "config.local", f'[cache]\n    dir = {cache}\n    type = "reflink,hardlink,copy"\n'
        )
        # read as DVC reads it (YAML 1.2, every value as written: `0.0` stays `0.0` when it is written back)
        from dvc.utils.serialize import parse_yaml_for_update

        lock = self.wt / LOCK
        self._base_lock = (parse_yaml_for_update(lock.read_text(), str(lock)) or {}).get("stages", {})
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None
        shutil.rmtree(self.wt, ignore_errors=True)
        with _locked(self.wt.parent / ".lock"):
            run_git("worktree", "prune", cwd=self.root)

    @property
    def prepared(self) -> Path:
        return self.wt / "data" / "prepared"

    def prepare(self, params_text: str, first: str = "prepare") -> None:
        """Make the worktree's data what `params_text` gives, as `dvc repro <first>` does: restored from
        the cache or the run cache when this data was made before, else made here. Nothing to do when the
        params `first` reads are those of the last call (the code is the baseline's throughout)."""
        key = self._stage_params(first, params_text)
        if key is not None and key == self._prepared_key:
            return
        atomic.write_text(self.wt / PARAMS, params_text)
        run_dvc("repro", first, cwd=self.wt)
        if self._repo is None:
            from dvc.repo import Repo

            self._repo = Repo(str(self.wt))
        self._outputs = self._git_outputs()
        self._prepared_key = key

    def _stage_params(self, stage: str, params_text: str) -> str | None:
        """The values of the params.yaml keys that `stage` lists under `params:`, as one string; None when it
        lists another params file (then only `dvc repro` can tell)."""
        from ruamel.yaml import YAML

        listed = self._pipeline[stage].get("params") or []
        if not all(isinstance(key, str) for key in listed):
            return None
        raw = YAML(typ="safe").load(params_text)
        values = {}
        for key in listed:
            node = raw
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            values[key] = node
        return json.dumps(values, sort_keys=True, default=str)

    def _target(self, stage: str) -> str:
        # DVC resolves a bare stage name against the process's working directory, not the repo's root
        return f"{self.wt / PIPELINE}:{stage}"

    def _git_outputs(self) -> list[str]:
        """Paths, relative to the worktree, of every output the stages after the first write."""
        self._repo._reset()
        paths = []
        for name in self.stages:
            for stage in self._repo.stage.collect(self._target(name)):
                if stage.name == "prepare":
                    continue
                paths += [os.path.relpath(out.fs_path, self.wt) for out in stage.outs]
        return paths

    # --- one point ---------------------------------------------------------------------------------------

    def record(self, name: str, params_text: str, outputs: Path) -> str:
        """Record `outputs` (a folder laid out like the worktree: models/, metrics/, ...) as experiment
        `name` with this params.yaml; returns its commit. `outputs` is consumed (moved)."""
        from dvc.repo.experiments.executor.base import BaseExecutor
        from dvc.stage.utils import _get_stage_files

        ref = exp_ref(self.baseline, name)
        atomic.write_text(self.wt / PARAMS, params_text)
        for rel in self._outputs:
            target, source = self.wt / rel, outputs / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
        repo = self._repo
        repo._reset()  # params.yaml and the outputs changed under it
        logging.getLogger("dvc").setLevel(logging.WARNING)  # Repo() may have set it up again
        committed: list = []
        with _cwd(self.wt):  # DVC builds run-cache stages relative to the working directory
            # Saves each stage's outputs to the cache and its run to the run cache. One call for the last stage
            # and its upstream: DVC rewrites dvc.lock once per call (a YAML round trip: most of the cost).
            for stage_name in reversed(self.stages):
                if stage_name not in {s.name for s in committed}:
                    committed += repo.commit(self._target(stage_name), with_deps=True, force=True, relink=False)
        entries = {s.name: _lock_entry(s) for s in committed}
        changed = [s for s in committed if entries[s.name] != self._base_lock.get(s.name)]
        # A stage whose entry equals the baseline's as values (deps, outs, params: 0 == 0.0) is one `dvc exp run`
        # skips: it leaves that entry as the baseline wrote it. Repo.commit rewrote it from params.yaml's text,
        # which may write a value otherwise (0 for 0.0).
        unchanged = set(entries) - {s.name for s in changed}
        self._keep_base_entries([n for n in unchanged if _as_written(entries[n]) != _as_written(self._base_lock[n])])
        exp_hash = BaseExecutor.hash_exp(changed)
        paths = sorted({p for s in committed for p in _get_stage_files(s)} | set(_top_level_paths(repo)))
        run_git("add", "--update", cwd=self.wt)
        run_git("add", "--", *[p for p in paths if (self.wt / p).exists()], cwd=self.wt)
        tree = run_git("write-tree", cwd=self.wt).strip()
        commit = run_git(
            "commit-tree", tree, "-p", self.baseline, "-m", f"dvc: commit experiment {exp_hash}", cwd=self.wt
        ).strip()
        # create-only: a ref that appeared meanwhile (another sweep) is not overwritten
        if git_answer("update-ref", ref, commit, "", cwd=self.wt) is None:
            existing = git_answer("rev-parse", "--verify", "-q", ref, cwd=self.wt)
            if not existing:
                run_git("update-ref", ref, commit, "", cwd=self.wt)  # raises with git's own line
            return existing.strip()
        return commit

    def _keep_base_entries(self, names: list[str]) -> None:
        from dvc.utils.serialize import modify_yaml

        if names:
            with modify_yaml(str(self.wt / LOCK)) as data:
                for name in names:
                    data["stages"][name] = self._base_lock[name]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (an empty lock file, created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _lock_entry(stage: Any) -> dict:
    from dvc.stage.serialize import to_single_stage_lockfile

    return to_single_stage_lockfile(stage)


def _as_written(entry: Any) -> str:
    """A lock entry with each value's type in its text (0 and 0.0 differ), as YAML writes them."""
    return json.dumps(entry, sort_keys=True)


def _top_level_paths(repo: Any) -> list[str]:
    from dvc.repo.experiments.executor.base import BaseExecutor

    return BaseExecutor._get_top_level_paths(repo)
