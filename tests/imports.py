"""The project files a Python entry point imports, transitively, read from the code (AST), not from memory.

`python -m tests.imports stages/train.py` prints a stage's closure: what its `deps:` must list.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mnistlr"


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every module imported anywhere in the file (module level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from mnistlr import figures` imports the module mnistlr.figures
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The project file of a dotted module name, or None for anything outside the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def import_closure(entry: Path, root: Path = REPO) -> set[str]:
    """Repo-relative paths of the entry file and every project file it imports, transitively.

    Importing `mnistlr.x` also runs `mnistlr/__init__.py`, so it belongs to every closure that
    reaches the package.
    """
    seen: set[Path] = set()
    todo = [entry.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # parents run first: mnistlr/__init__.py
                found = module_file(".".join(parts[:i]), root)
                if found is not None:
                    todo.append(found.resolve())
    return {p.relative_to(root.resolve()).as_posix() for p in seen}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg)
        for rel in sorted(import_closure(REPO / arg)):
            print("  -", rel)
