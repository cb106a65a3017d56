"""pyproject.toml's ranges and requirements/lock.txt agree.

The lock (`make lock`, pip-compile) pins every package `make install` installs, with its hashes. Each requirement
of pyproject.toml, its extras included, must have a pin in the lock that its specifier admits (where its marker
applies here), and each package the lock marks as required by pyproject.toml must still be there. A change to
pyproject.toml's dependencies without `make lock` fails here.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements" / "lock.txt"
# pip-compile's "# via" annotation for a requirement it read from pyproject.toml
DIRECT = re.compile(r"^#\s+(?:via\s+)?(\S+) \(pyproject\.toml\)$")


def pyproject_requirements(text: str) -> tuple[str, dict[str, list[Requirement]]]:
    """The project's name and its requirements by group: "" for the dependencies, else the extra's name."""
    project = tomllib.loads(text)["project"]
    groups = {"": project.get("dependencies", []), **project.get("optional-dependencies", {})}
    return project["name"], {group: [Requirement(r) for r in reqs] for group, reqs in groups.items()}


def lock_entries(text: str) -> tuple[list[tuple[str, int]], set[str]]:
    """Each entry of the lock as (requirement text, number of hashes), and the names annotated as pyproject's."""
    entries: list[tuple[str, int]] = []
    direct: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            match = DIRECT.match(stripped)
            if match and entries:
                direct.add(canonicalize_name(Requirement(entries[-1][0]).name))
        elif stripped.startswith("--hash="):
            entries[-1] = (entries[-1][0], entries[-1][1] + 1)
        elif stripped:
            entries.append((stripped.removesuffix("\\").strip(), 0))
    return entries, direct


def lock_problems(pyproject_text: str, lock_text: str) -> list[str]:
    """Every way the lock and pyproject.toml disagree, one line each; [] when they agree."""
    name, groups = pyproject_requirements(pyproject_text)
    entries, direct = lock_entries(lock_text)
    problems: list[str] = []
    pins: dict[str, str] = {}
    for text, hashes in entries:
        req = Requirement(text)
        spec = list(req.specifier)
        if req.url or len(spec) != 1 or spec[0].operator != "==":
            problems.append(f"lock entry {text!r} is not a plain name==version pin")
        elif hashes == 0:
            problems.append(f"lock entry {text!r} has no --hash")
        elif req.marker is None or req.marker.evaluate():  # pip-compile keeps a direct requirement's marker
            pins[canonicalize_name(req.name)] = spec[0].version
    wanted: set[str] = set()
    for group, reqs in groups.items():
        where = f"the {group!r} extra" if group else "the dependencies"
        for req in reqs:
            key = canonicalize_name(req.name)
            wanted.add(key)
            if key == canonicalize_name(name):
                problems.append(f"{where}: {req} names the project itself (pip-compile would lock a file:// path)")
            elif req.marker is not None and not req.marker.evaluate({"extra": group}):
                continue
            elif key not in pins:
                problems.append(f"{where}: {req} has no pin in the lock (run `make lock`)")
            elif not req.specifier.contains(pins[key], prereleases=True):
                problems.append(f"{where}: {req} does not admit the locked {req.name}=={pins[key]} (run `make lock`)")
    problems += [
        f"the lock pins {key} as a requirement of pyproject.toml, which no longer names it (run `make lock`)"
        for key in sorted(direct - wanted)
    ]
    cluster, test = groups.get("cluster", []), {str(r) for r in groups.get("test", [])}
    problems += [f"the 'test' extra lacks the 'cluster' extra's {r}" for r in cluster if str(r) not in test]
    return problems


def test_the_lock_pins_every_requirement_of_pyproject_within_its_range():
    assert lock_problems(PYPROJECT.read_text(), LOCK.read_text()) == []


def test_every_direct_requirement_is_annotated_in_the_lock():
    """The 'lock names a requirement pyproject dropped' check reads pip-compile's annotations: they must be there."""
    _, groups = pyproject_requirements(PYPROJECT.read_text())
    _, direct = lock_entries(LOCK.read_text())
    assert direct == {canonicalize_name(r.name) for reqs in groups.values() for r in reqs}


def test_the_check_fails_when_pyproject_and_the_lock_disagree(tmp_path):
    pyproject, lock = PYPROJECT.read_text(), LOCK.read_text()
    assert '"numpy>=2.4"' in pyproject and '"tabulate>=0.9",' in pyproject
    edited = tmp_path / "pyproject.toml"
    edited.write_text(
        pyproject.replace('"numpy>=2.4"', '"numpy>=99"', 1)  # a range the pin leaves
        .replace('"tabulate>=0.9",', '"rich-click>=1",', 1)  # tabulate dropped, a package the lock lacks added
        .replace('"distributed>=2024.8",\n]', '"mnistlr[cluster]",\n]', 1)  # the test extra: a self-reference
    )
    problems = lock_problems(edited.read_text(), lock)
    assert any(p.startswith("the dependencies: numpy>=99 does not admit the locked numpy==") for p in problems)
    assert "the dependencies: rich-click>=1 has no pin in the lock (run `make lock`)" in problems
    assert any("pins tabulate as a requirement of pyproject.toml, which no longer names it" in p for p in problems)
    assert any("mnistlr[cluster] names the project itself" in p for p in problems)
    assert "the 'test' extra lacks the 'cluster' extra's distributed>=2024.8" in problems
    assert len(problems) == 5, problems


def test_the_check_fails_on_a_lock_entry_without_pin_or_hash():
    lock = LOCK.read_text()
    pin = re.search(r"^tabulate==(\S+) \\\n(    --hash=\S+(?: \\)?\n)+", lock, re.M)
    assert pin, "tabulate's entry in the lock"
    unhashed = lock.replace(pin[0], f"tabulate=={pin[1]}\n", 1)
    assert lock_problems(PYPROJECT.read_text(), unhashed) == [
        f"lock entry 'tabulate=={pin[1]}' has no --hash",
        "the dependencies: tabulate>=0.9 has no pin in the lock (run `make lock`)",
    ]
    with_path = lock + "mnistlr @ file:///somewhere/mnistlr\n    # via mnistlr (pyproject.toml)\n"
    problems = lock_problems(PYPROJECT.read_text(), with_path)
    assert problems == [
        "lock entry 'mnistlr @ file:///somewhere/mnistlr' is not a plain name==version pin",
        "the lock pins mnistlr as a requirement of pyproject.toml, which no longer names it (run `make lock`)",
    ]
