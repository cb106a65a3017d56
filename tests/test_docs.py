"""Every shell block of the README and of docs/, run as written.

Each page's fenced ```sh blocks run in order, command by command, in a new shell (`bash -e`) that has only
what a reader's new terminal has: HOME, a PATH without the venv, MNISTLR_MNIST_DIR naming the MNIST
files (here the synthetic mirror, with its MD5SUMS), DVC_NO_ANALYTICS, a git identity and a TMPDIR. The shell
starts in a copy of the small synthetic project whose pipeline has run, cloned from an `origin`, with `.venv`
linked to the venv these tests run under (its install stamp fresh, so `make repro` only runs `dvc repro`:
checked with `make -n` first). The README's blocks run as the page orders them; a docs page's shell first runs
the README's block marked `every new shell`, as its reader did. A command that fails fails the page; so does
a `# -> TEXT` comment on a command whose output lacks TEXT.

An HTML comment on the line before a block (blank lines between are allowed) says how to run it:

    <!-- doc-test: skip (REASON) -->          not run
    <!-- doc-test: skip "CMD" (REASON) -->    the block's commands that begin with CMD are not run
    <!-- doc-test: needs s3 -->               run with a real S3 server (SeaweedFS, the `s3_storage` fixture);
                                              where there is none, this block and the page's later ones are not
    <!-- doc-test: teammate -->               run in a teammate's shell: a fresh clone of origin in which the
                                              page's `dvc remote modify --local` lines have been run
    <!-- doc-test: every new shell -->        (README) what every new shell runs first

`pytest tests/test_docs.py -rs` lists every block and command not run, with its reason. Placeholders a reader
replaces are filled in: /absolute/path/to/mnist and /path/to/mnist (the mirror); in `needs s3` blocks BUCKET,
https://s3.example.com, KEY_ID and SECRET (the test server's). What a page assumes of its reader is given
before its shell starts (PRECONDITIONS): a param edited before the team's commit recipe, the digit images
that predict.md classifies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import queue
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mnistlr.data import MD5SUMS_ENV, MIRROR_ENV, file_md5
from mnistlr.review import exp_show
from tests.conftest import REPO, copy_project, dvc, run, skip_unless_ci, synthetic_digits

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")
EXPECT = re.compile(r"\s#\s*->\s*(.+?)\s*$")
COMMAND_TIMEOUT_S = 300
RESOURCES = ("s3",)
NEW_SHELL = "every new shell"


# --- the pages' blocks ---------------------------------------------------------------------------------


@dataclass
class Command:
    line: int  # in the page, 1-based
    text: str
    expect: list[str]


@dataclass
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    commands: list[Command]
    skip: str | None = None  # the reason the block is not run
    skip_commands: dict[str, str] = field(default_factory=dict)  # command prefix -> reason
    needs: list[str] = field(default_factory=list)
    teammate: bool = False
    new_shell: bool = False

    def where(self, line: int | None = None) -> str:
        return f"{self.page}:{line or self.line}"


def apply_mark(block: Block, mark: str) -> None:
    """One `doc-test:` directive onto its block; an unknown one is an error (a typo would silently run)."""
    if m := re.fullmatch(r'skip\s+"([^"]+)"\s+\((.+)\)', mark):
        block.skip_commands[m.group(1)] = m.group(2)
    elif m := re.fullmatch(r"skip\s+\((.+)\)", mark):
        block.skip = m.group(1)
    elif m := re.fullmatch(r"needs\s+(\w+)", mark):
        if m.group(1) not in RESOURCES:
            raise ValueError(f"{block.where()}: needs {m.group(1)!r}; known: {', '.join(RESOURCES)}")
        block.needs.append(m.group(1))
    elif mark == "teammate":
        block.teammate = True
    elif mark == NEW_SHELL:
        block.new_shell = True
    else:
        raise ValueError(f"{block.where()}: unknown doc-test directive {mark!r}")


def commands(lines: list[str], first_line: int) -> list[Command]:
    """The block's commands: continuation lines joined, blank and comment-only lines left out."""
    out: list[Command] = []
    text, start = "", 0
    for i, raw in enumerate(lines):
        if not text and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if not text:
            start = first_line + i
        text += raw + "\n"
        if raw.rstrip().endswith("\\"):
            continue
        logical = text.rstrip("\n")
        out.append(Command(start, logical, EXPECT.findall(logical.splitlines()[-1])))
        text = ""
    return out


def page_blocks(page: Path) -> list[Block]:
    """Every ```sh block of a page with the doc-test directives right before it."""
    rel = page.relative_to(REPO).as_posix()
    lines = page.read_text().splitlines()
    blocks, marks, i = [], [], 0
    while i < len(lines):
        stripped = lines[i].strip()
        if m := MARK.fullmatch(stripped):
            marks.append((i + 1, m.group(1)))
        elif stripped.startswith("```"):
            end = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
            if stripped[3:].strip() == "sh":
                block = Block(rel, i + 1, commands(lines[i + 1 : end], i + 2))
                for _, mark in marks:
                    apply_mark(block, mark)
                blocks.append(block)
            elif marks:
                raise ValueError(f"{rel}:{marks[0][0]}: a doc-test directive before a block that is not ```sh")
            marks, i = [], end
        elif stripped and marks:
            raise ValueError(f"{rel}:{marks[0][0]}: a doc-test directive must come right before its ```sh block")
        i += 1
    return blocks


def all_blocks() -> dict[str, list[Block]]:
    return {page.relative_to(REPO).as_posix(): page_blocks(page) for page in PAGES}


def not_run() -> list[tuple[str, str]]:
    """(where, why) of every block and command the pages mark as not run."""
    out = []
    for blocks in all_blocks().values():
        for b in blocks:
            if b.skip:
                out.append((b.where(), f"skip: {b.skip}"))
                continue
            for prefix, reason in b.skip_commands.items():
                out += [
                    (b.where(c.line), f"skip {c.text.split('#')[0].strip()!r}: {reason}")
                    for c in b.commands
                    if c.text.startswith(prefix)
                ]
    return out


def test_every_directive_is_known_and_every_page_has_its_blocks():
    blocks = all_blocks()
    assert sum(len(b) for b in blocks.values()) >= 15
    new_shell = [b for b in blocks["README.md"] if b.new_shell]
    assert len(new_shell) == 1 and new_shell[0].commands[0].text.startswith("source .venv/bin/activate"), new_shell
    for b in (b for bs in blocks.values() for b in bs):
        assert b.commands or b.skip, f"{b.where()}: a block without a command"
        for prefix in b.skip_commands:
            assert any(c.text.startswith(prefix) for c in b.commands), f"{b.where()}: no command starts {prefix!r}"


INSTALLS = re.compile(r"\bpip3?\s+install\b|\buv\s+pip\b")


def installs(block: Block, command: Command) -> bool:
    """A command that would install packages into the venv these tests run under, and is not marked skip."""
    skipped = block.skip or any(command.text.startswith(p) for p in block.skip_commands)
    return not skipped and bool(INSTALLS.search(command.text.split(" #")[0]))


def test_no_block_that_runs_installs_packages():
    found = [b.where(c.line) for bs in all_blocks().values() for b in bs for c in b.commands if installs(b, c)]
    assert found == [], f"these would install into the venv the tests run under; mark them skip: {found}"


def test_a_misplaced_or_unknown_directive_is_an_error(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    page.write_text("<!-- doc-test: skp (typo) -->\n```sh\nls\n```\n")
    with pytest.raises(ValueError, match="unknown doc-test directive 'skp"):
        page_blocks(page)
    page.write_text("<!-- doc-test: skip (why) -->\ntext\n```sh\nls\n```\n")
    with pytest.raises(ValueError, match="must come right before"):
        page_blocks(page)
    page.write_text("<!-- doc-test: skip (why) -->\n\n```sh\nls   # -> a b\nmake x \\\n  y\n# c\n```\n")
    (block,) = page_blocks(page)
    assert block.skip == "why" and [(c.line, c.text, c.expect) for c in block.commands] == [
        (4, "ls   # -> a b", ["a b"]),
        (5, "make x \\\n  y", []),
    ]


@pytest.mark.parametrize(("where", "why"), not_run() or [("-", "-")], ids=[w for w, _ in not_run()] or ["-"])
def test_blocks_the_pages_say_are_not_run(where, why):
    """Reported, not run: each with the reason its page gives (`pytest -rs` lists them)."""
    pytest.skip(f"{where}: {why}")


# --- a reader's shell ------------------------------------------------------------------------------------


class Shell:
    """`bash -e` fed one command at a time: each runs from a file, stdin from /dev/null, so a command that
    reads stdin cannot eat the ones after it; its output (stdout and stderr) is read up to a marker."""

    def __init__(self, cwd: Path, env: dict, scratch: Path):
        self.scratch, self.n = scratch, 0
        self.token = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            ["bash", "-e", "-s"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int | None, str]:
        """(exit status, output); the status is None when the command did not end within timeout_s."""
        self.n += 1
        script = self.scratch / f"command-{self.n}.sh"
        script.write_text(command + "\n")
        self.proc.stdin.write(f". {script} </dev/null\nprintf '\\n{self.token} 0\\n'\n")
        self.proc.stdin.flush()
        out, deadline = [], time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None, "".join(out)
            if line is None:  # bash -e left: the command failed
                return self.proc.wait(), "".join(out)
            if line.startswith(self.token):
                return 0, "".join(out).removesuffix("\n")
            out.append(line)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def reader_path() -> str:
    """PATH without any folder that has dvc or mnistlr in it: a new shell has not activated the venv."""
    keep = [
        d
        for d in os.environ["PATH"].split(os.pathsep)
        if d and not any(Path(d, n).exists() for n in ("dvc", "mnistlr"))
    ]
    return os.pathsep.join(keep or ["/usr/local/bin", "/usr/bin", "/bin"])


def reader_env(root: Path, mirror: str, md5sums: str) -> dict:
    home, tmp = root / "home", root / "tmp"
    home.mkdir()
    tmp.mkdir()
    return {
        "HOME": str(home),
        "PATH": reader_path(),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        MIRROR_ENV: mirror,
        MD5SUMS_ENV: md5sums,
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "reader",
        "GIT_COMMITTER_NAME": "reader",
        "GIT_AUTHOR_EMAIL": "reader@example.com",
        "GIT_COMMITTER_EMAIL": "reader@example.com",
    }


def link_venv(project: Path) -> None:
    """project/.venv: every entry of this test run's venv linked, and a fresh install stamp of its own, so make
    neither recreates it nor reinstalls into the venv it links to; `make -n repro` must show dvc repro alone."""
    venv = project / ".venv"
    venv.mkdir()
    stamp = re.search(r"^STAMP\s*:?=\s*\$\(VENV\)/(\S+)", (project / "Makefile").read_text(), flags=re.M)
    stamp_name = stamp.group(1) if stamp else ".installed-stamp"
    for entry in Path(sys.prefix).iterdir():
        if entry.name != stamp_name:
            (venv / entry.name).symlink_to(entry)
    (venv / stamp_name).touch()
    # under `make test` the nested make also prints its "Entering/Leaving directory" lines
    planned = [
        ln for ln in run(["make", "-n", "repro"], project).stdout.strip().splitlines() if not ln.startswith("make[")
    ]
    assert len(planned) == 1 and planned[0].endswith("/dvc repro"), f"make repro would run: {planned}"


def stop_background(project: Path) -> None:
    """What a page left running in the project (DVC's queue workers and the experiments they run, the server of
    `make storage-up`): every process whose working folder is inside it."""
    inside = str(project.resolve())
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(inside):
                os.kill(int(proc.name), signal.SIGKILL)


# --- what each page assumes of its reader -----------------------------------------------------------------


def edited_param(project: Path) -> None:
    """A change to share: a smaller SGD learning rate, as a reader edits params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["lr"]["sgd"] = params["train"]["lr"]["sgd"] / 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def digit_images(project: Path) -> None:
    """The reader's own digit images that predict.md names: digit.png, a.png and b.jpg."""
    from PIL import Image

    images, _ = synthetic_digits(3, seed=11)
    for name, image in zip(("digit.png", "a.png", "b.jpg"), images, strict=True):
        Image.fromarray(image).save(project / name)


PRECONDITIONS = {"docs/team.md": edited_param, "docs/predict.md": digit_images}


# --- a page, run ---------------------------------------------------------------------------------------


def fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = re.sub(rf"(?<![\w-]){re.escape(placeholder)}(?![\w-])", value, text)
    return text


@dataclass
class Reader:
    """A page's reader: the project, their shell, and a teammate's once a block asks for one."""

    root: Path
    project: Path
    origin: Path
    env: dict
    new_shell: list[str]
    shell: Shell | None = None
    teammate: Shell | None = None
    teammate_clone: Path | None = None
    log: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # command as written -> what it printed
    values: dict[str, str] = field(default_factory=dict)  # the placeholders filled in (S3 ones once a block needs them)

    def start(self, cwd: Path, name: str) -> Shell:
        scratch = self.root / f"scratch-{name}"
        scratch.mkdir()
        shell = Shell(cwd, self.env, scratch)
        for command in self.new_shell:
            self.check(shell, Command(0, command, []), "(the README's every-new-shell block)")
        return shell

    def check(self, shell: Shell, command: Command, where: str, values: dict[str, str] | None = None) -> str:
        text = fill(command.text, values or {})
        t0 = time.monotonic()
        status, out = shell.run(text)
        self.log.append(f"{where} ({time.monotonic() - t0:.1f} s): {text.splitlines()[0]}")
        shown = f"{where}: {text}\n--- output ---\n{out[-4000:]}"
        assert status is not None, f"no end within {COMMAND_TIMEOUT_S} s: {shown}"
        assert status == 0, f"exit {status}: {shown}"
        for expected in command.expect:
            assert fill(expected, values or {}) in out, f"the page promises {expected!r}: {shown}"
        self.outputs[command.text] = out
        return out

    def in_teammate_clone(self, local_lines: list[str], values: dict[str, str]) -> Shell:
        if self.teammate is None:
            self.teammate_clone = self.root / "teammate"
            run(["git", "clone", "-q", str(self.origin), str(self.teammate_clone)], self.root, self.env)
            (self.teammate_clone / ".venv").symlink_to(self.project / ".venv")
            self.teammate = self.start(self.teammate_clone, "teammate")
            for line in local_lines:
                self.check(
                    self.teammate, Command(0, line, []), "(the page's --local lines, as a teammate runs them)", values
                )
        return self.teammate

    def close(self) -> None:
        for shell in (self.shell, self.teammate):
            if shell:
                shell.close()
        for clone in (self.project, self.teammate_clone):
            if clone:
                stop_background(clone)


def s3_client(endpoint: str, key_id: str, secret: str):
    import botocore.session  # comes with dvc-s3

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1"
    )


def s3_values(storage) -> dict[str, str]:
    """The test server's endpoint and keys, and a bucket of the page's own: the server is shared with other tests,
    which count what their remote holds."""
    bucket = f"doc-test-{uuid.uuid4().hex[:12]}"
    s3_client(storage.endpoint, storage.access_key, storage.secret_key).create_bucket(Bucket=bucket)
    return {
        "https://s3.example.com": storage.endpoint,
        "BUCKET": bucket,
        "KEY_ID": storage.access_key,
        "SECRET": storage.secret_key,
    }


PAGES_WITH_BLOCKS = [page for page, blocks in all_blocks().items() if any(not b.skip for b in blocks)]


@pytest.fixture
def reader(request, tmp_path, reproduced):
    """A reader of one page: a copy of the reproduced project cloned from origin, its precondition, a new shell."""
    project = copy_project(reproduced, tmp_path / "mnistlr")
    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(project), str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["git", "fetch", "-q", "origin"], project)
    run(["git", "branch", "-q", "-u", "origin/main"], project)
    link_venv(project)
    env = reader_env(tmp_path, reproduced[1][MIRROR_ENV], reproduced[1][MD5SUMS_ENV])
    new_shell = [c.text for b in all_blocks()["README.md"] if b.new_shell for c in b.commands]
    r = Reader(tmp_path, project, origin, env, new_shell)
    yield r
    r.close()


@pytest.mark.parametrize("page", PAGES_WITH_BLOCKS)
def test_the_pages_blocks_run_as_written(page, reader, request):
    if page in PRECONDITIONS:
        PRECONDITIONS[page](reader.project)
    if page == "README.md":
        reader.new_shell = []  # its reader meets the block in its place
    reader.shell = reader.start(reader.project, "reader")
    if page == "README.md":  # a new shell has no dvc: the README must say how to get it
        assert reader.shell.run("command -v dvc mnistlr || true")[1].strip() == ""
    mirror = {"/absolute/path/to/mnist": reader.env[MIRROR_ENV], "/path/to/mnist": reader.env[MIRROR_ENV]}
    s3: dict[str, str] = {}
    local_lines: list[str] = []
    missing = None
    blocks = all_blocks()[page]
    assert not any(installs(b, c) for b in blocks for c in b.commands), "see test_no_block_that_runs_installs_packages"
    for block in blocks:
        if block.skip:
            continue
        if "s3" in block.needs and not s3:
            try:
                s3 = s3_values(request.getfixturevalue("s3_storage"))
            except pytest.skip.Exception as exc:
                missing = f"from {block.where()} on: needs s3 ({exc})"
                break
        values = {**mirror, **(s3 if block.needs else {})}
        shell = reader.in_teammate_clone(local_lines, {**mirror, **s3}) if block.teammate else reader.shell
        for command in block.commands:
            if any(command.text.startswith(p) for p in block.skip_commands):
                continue
            reader.check(shell, command, block.where(command.line), values)
            if command.text.startswith("dvc remote modify --local"):
                local_lines.append(command.text)
    print(f"\n{page}:\n  " + "\n  ".join(reader.log))
    reader.values = {**mirror, **s3}
    if page in AFTERWARDS:
        AFTERWARDS[page](reader)
    if missing:
        skip_unless_ci(f"{page}: ran up to the block that needs what is missing; {missing}")


# --- DVC's own habits after `make repro` ---------------------------------------------------------------


def tty_output(argv: list[str], cwd: Path, env: dict, columns: int = 120) -> str:
    """What `argv` draws on a terminal `columns` wide (a pseudo-terminal; colours and cursor codes stripped)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**env, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    text = b"".join(chunks).decode(errors="replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]", "", text)


def readme_command(prefix: str) -> str:
    """The one command of the README's blocks that starts with `prefix`."""
    found = [c.text for b in all_blocks()["README.md"] for c in b.commands if c.text.startswith(prefix)]
    assert len(found) == 1, f"the README should give one `{prefix}...` command: {found}"
    return re.sub(r"\s#.*$", "", found[0])


def queue_done(project: Path, env: dict, timeout_s: float = 180) -> str:
    """`dvc queue status` once nothing is queued or running (asked every 2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = run(["dvc", "queue", "status"], project, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status) or time.monotonic() > deadline:
            return status
        time.sleep(2)


def the_readmes_dvc_exp_show_reads_at_120_columns(reader: Reader) -> dict[str, dict]:
    """After the README's daily loop (a finished experiment, then a grid through the queue): DVC pages a table drawn
    at its full width, which is what it prints to a pipe (`less -S` cuts what passes the terminal's edge), and with
    --no-pager squeezes it into the terminal, cutting cells to `…`. Once no run is running (while one runs, DVC
    cannot read its params and shows them all, as the README says), the README's form fits 120 columns either way
    and shows each run's number; plain `dvc exp show --only-changed` does not fit."""
    command = readme_command("dvc exp show")
    argv = shlex.split(re.sub(r"\s#.*$", "", command))
    env = {**reader.env, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{reader.env['PATH']}"}
    # the grid's runs that have not started are dropped, the running one interrupted (Ctrl-C): the check needs
    # finished runs and none running, not all four of the grid
    run(["dvc", "queue", "remove", "--queued"], reader.project, env)
    running = re.findall(r"^(\w+)\s.*\bRunning\b", run(["dvc", "queue", "status"], reader.project, env).stdout, re.M)
    if running:
        run(["dvc", "queue", "kill", *running], reader.project, env, check=False)  # it may have just finished
    status = queue_done(reader.project, env)
    table = exp_show([], cwd=reader.project)
    runs = {
        r["name"]: r["data"]
        for c in table
        for e in c.get("experiments") or []
        if (e.get("executor") or {}).get("state") in (None, "success")
        for r in e["revs"]
    }
    assert len(runs) == 1 + status.count("Success"), (runs, status)  # the loop's first experiment too
    finished = {n: d["metrics"]["metrics/full.json"]["data"]["test"]["accuracy"] for n, d in runs.items()}
    # the params the loop changed that differ among the rows (the baseline's and the finished runs')
    baseline = next(c["data"] for c in table if c["rev"] != "workspace")
    values = {
        key: {get(d["params"]["params.yaml"]["data"]) for d in (baseline, *runs.values())}  # as values: 0 == 0.0
        for key, get in (
            ("optimizer", lambda p: p["optimizer"]),
            ("train.weight_decay", lambda p: p["train"]["weight_decay"]),
        )
    }
    changed = {key for key, seen in values.items() if len(seen) > 1}
    assert "optimizer" in changed, values  # adam, the loop's first experiment
    paged = run(argv, reader.project, env).stdout
    squeezed = tty_output([*argv, "--no-pager"], reader.project, env)
    for shown in (paged, squeezed):
        lines = [ln for ln in shown.splitlines() if ln.strip()]
        assert all(len(ln) <= 120 for ln in lines) and "…" not in shown, shown
        header = lines[1].split()
        assert header[0] == "Experiment" and "metrics/full.json:test.accuracy" in header, shown
        assert changed <= set(header), shown
        for name, acc in finished.items():
            row = next(ln for ln in shown.splitlines() if f"[{name}]" in ln)
            assert f"{acc:g}" in row.split(), (name, acc, row)
    plain = ["dvc", "exp", "show", "--only-changed"]
    assert max(map(len, run(plain, reader.project, env).stdout.splitlines())) > 120
    assert "…" in tty_output([*plain, "--no-pager"], reader.project, env)
    return runs  # the finished experiments, by name: their `dvc exp show --json` data


def the_readmes_first_experiment_ran_from_train_and_its_diffs_show_it(reader: Reader, finished: list[dict]) -> None:
    """The daily loop's first command reruns train, evaluate and report (not prepare) with adam; `dvc metrics
    diff main` lists what changed in each variant and `dvc plots diff main` draws the curves and confusion matrix."""
    out = next(o for c, o in reader.outputs.items() if c.startswith("dvc exp run -S optimizer=adam"))
    assert re.findall(r"Running stage '([^']+)'", out) == ["train", "evaluate", "report"], out
    diff = next(o for c, o in reader.outputs.items() if c.startswith("dvc metrics diff main"))
    for variant in ("full", "noise10"):  # (the easy synthetic digits give both optimizers the same accuracy)
        assert re.search(rf"^metrics/{variant}\.json\s+test\.loss\s", diff, re.M), diff
    page = (reader.project / "dvc_plots" / "index.html").read_text()
    for title in ("Loss of full (train vs val)", "Validation accuracy per epoch", "Confusion matrix (test set)"):
        assert title in page, title
    adam = [
        d
        for d in finished
        if d["params"]["params.yaml"]["data"]["optimizer"] == "adam"
        and d["params"]["params.yaml"]["data"]["train"]["weight_decay"] == 0
    ]
    assert adam and all(0.5 < d["metrics"]["metrics/full.json"]["data"]["test"]["accuracy"] <= 1 for d in adam), adam


def the_readmes_loop(reader: Reader) -> None:
    runs = the_readmes_dvc_exp_show_reads_at_120_columns(reader)  # first: it stops the grid's queue
    the_readmes_first_experiment_ran_from_train_and_its_diffs_show_it(reader, list(runs.values()))


def the_team_round_trip_kept_the_keys_local_and_moved_the_exact_bytes(reader: Reader) -> None:
    """After docs/team.md: the credentials never reached a commit, `dvc exp push` sent the experiment's outputs
    to the remote, and the teammate's applied and pulled experiment is, byte for byte, what it trained."""
    a, b, v, env = reader.project, reader.teammate_clone, reader.values, reader.env
    url = "s3://" + v["BUCKET"] + "/mnistlr"
    shared, local = (a / ".dvc" / "config").read_text(), (a / ".dvc" / "config.local").read_text()
    assert url in shared and v["https://s3.example.com"] in shared  # the remote is shared through git ...
    assert v["KEY_ID"] not in shared and v["SECRET"] not in shared  # ... its credentials are not
    assert v["KEY_ID"] in local and v["SECRET"] in local
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], a, env, check=False).returncode == 0
    assert run(["git", "ls-files", ".dvc"], a, env).stdout.split() == [".dvc/.gitignore", ".dvc/config"]
    history = run(["git", "log", "--all", "-p", "--", ".dvc"], reader.origin, env).stdout  # all that reached origin
    assert url in history and v["KEY_ID"] not in history and v["SECRET"] not in history
    assert ".dvc/config.local" not in run(["git", "log", "--all", "--name-only"], reader.origin, env).stdout
    # the experiment: its ref on origin, its outputs in the remote (sent by `dvc exp push` itself) ...
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], reader.origin, env).stdout.split()
    (ref,) = [r for r in refs if r.endswith("/adam-trial")]
    lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], a, env).stdout)
    (models_md5,) = [o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "models"]
    cached = a / ".dvc" / "cache" / "files" / "md5" / models_md5[:2] / models_md5[2:]
    files = {e["relpath"]: e["md5"] for e in json.loads(cached.read_text())}
    listing = s3_client(v["https://s3.example.com"], v["KEY_ID"], v["SECRET"]).get_paginator("list_objects_v2")
    pages = listing.paginate(Bucket=v["BUCKET"], Prefix="mnistlr/files/md5/")
    remote = {"".join(o["Key"].split("/")[-2:]) for page in pages for o in page.get("Contents", [])}
    assert {models_md5, *files.values()} <= remote, (models_md5, files, len(remote))
    again = dvc("push", cwd=a, env=env)  # as the page says: nothing left to send
    assert "Everything is up to date" in again.stdout + again.stderr, again.stdout + again.stderr
    # ... and the teammate's workspace holds exactly it: params, metrics and every model's bytes
    assert yaml.safe_load((b / "params.yaml").read_text())["optimizer"] == "adam"
    for name, md5 in files.items():
        assert file_md5(b / "models" / name) == md5, name
    for metrics in ("metrics/full.json", "metrics/noise10.json"):
        assert (b / metrics).read_text() == run(["git", "show", f"{ref}:{metrics}"], a, env).stdout, metrics
    assert "up to date" in dvc("status", "dvc.yaml", cwd=b, env=env).stdout  # the root pipeline (not studies/)


def the_deskew_experiment_reran_from_prepare_and_its_models_carry_it(reader: Reader) -> None:
    """After docs/predict.md's `dvc exp run -n deskew -S data.deskew=true` (as typed): every stage reran, and the
    data, each model (which predict applies to raw images) and the report say the digits were deskewed."""
    from mnistlr.model import load_model

    project = reader.project
    out = next(o for c, o in reader.outputs.items() if c.startswith("dvc exp run -n deskew -S data.deskew=true"))
    assert re.findall(r"Running stage '([^']+)'", out) == ["prepare", "train", "evaluate", "report"], out
    record = json.loads((project / "data/prepared/preprocessing.json").read_text())
    assert record["deskew"] is True and record["mean_std_from"].startswith("measured on the")
    for v in ("full", "noise10"):
        model = load_model(project / "models" / f"{v}.npz")
        assert model.deskew and (model.mean, model.std) == (record["mean"], record["std"]), v
    assert "This run's inputs: deskew on" in (project / "reports/report.md").read_text()
    assert json.loads((project / "metrics/full.json").read_text())["test"]["accuracy"] > 0.9


def the_swept_points_dvc_exp_run_restored_train_and_evaluate(reader: Reader) -> None:
    """After docs/sweeps.md: `dvc exp run` of a point the sweep recorded finds train's and evaluate's runs in the
    run cache (the sweep put them there) and starts neither."""
    out = next(o for c, o in reader.outputs.items() if c.startswith("dvc exp run -S train.lr.sgd=0.2"))
    for stage in ("train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run" in out, out
    assert not {"prepare", "train", "evaluate"} & set(re.findall(r"Running stage '([^']+)'", out)), out


AFTERWARDS = {
    "README.md": the_readmes_loop,
    "docs/team.md": the_team_round_trip_kept_the_keys_local_and_moved_the_exact_bytes,
    "docs/predict.md": the_deskew_experiment_reran_from_prepare_and_its_models_carry_it,
    "docs/sweeps.md": the_swept_points_dvc_exp_run_restored_train_and_evaluate,
}


def test_push_and_pull_without_a_remote_say_what_the_readme_quotes(tmp_path, reproduced):
    env = reproduced[1]
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(reproduced[0]), str(clone)], tmp_path, env)  # no remote, no cache
    push = dvc("push", cwd=clone, env=env, check=False)
    pull = dvc("pull", cwd=clone, env=env, check=False)
    assert push.returncode != 0 and pull.returncode != 0
    readme = " ".join((REPO / "README.md").read_text().split())
    said_by_push = "Create a default remote with dvc remote add -d <remote name> <remote url>"
    assert said_by_push in " ".join((push.stdout + push.stderr).split())
    assert f"`{said_by_push}`" in readme
    for said_by_pull in ("No remote provided and no default remote set", "Checkout failed"):
        assert said_by_pull in pull.stdout + pull.stderr
        assert f"`{said_by_pull}`" in readme
    assert "`dvc remote add -d NAME URL`" in readme and "[docs/team.md](docs/team.md)" in readme
