"""Render an HTML page (e.g. `dvc plots show`'s) in headless Chromium: DOM, screenshot, console errors.

DVC's page loads vega, vega-lite and vega-embed from a CDN. Offline (CI
sandboxes) that fails, so `localize_scripts` can point those tags at local
copies (the npm packages' build/ folders) before rendering.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mnistlr import atomic

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# The flags keep Chromium from making (failing) network calls of its own.
QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)
CDN_SCRIPT = re.compile(r'src="https://cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@[^"]*"')
CONSOLE = re.compile(r"CONSOLE\(\d+\)\] \"(.*)\", source: (\S*)")


def find_chromium() -> str | None:
    """Path of a Chromium-like browser on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def localize_scripts(html_path: Path, js_dir: Path) -> int:
    """Rewrite the CDN vega script tags to `js_dir/<name>.min.js`; return how many were rewritten."""
    text = html_path.read_text()
    new, n = CDN_SCRIPT.subn(lambda m: f'src="{(js_dir / (m.group(1) + ".min.js")).resolve().as_uri()}"', text)
    atomic.write_text(html_path, new)
    return n


@dataclass
class Rendered:
    dom: str
    console: list[str]  # every console message, as "message (source)"
    screenshot: Path

    def errors(self) -> list[str]:
        """Console messages that are errors (uncaught exceptions, failed loads, undefined names)."""
        bad = re.compile(r"error|uncaught|failed|not defined", re.I)
        return [c for c in self.console if bad.search(c)]


def render(
    html_path: Path,
    screenshot: Path,
    chromium: str | None = None,
    budget_ms: int = 8000,
    size: tuple[int, int] = (1400, 4000),
) -> Rendered:
    """Load the page twice (DOM dump, then screenshot), letting scripts run for `budget_ms` virtual time."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH")
    url = html_path.resolve().as_uri()
    common = [*QUIET_FLAGS, f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}"]
    with tempfile.TemporaryDirectory() as profile:
        dump = subprocess.run(
            [exe, *common, f"--user-data-dir={profile}/a", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shot = subprocess.run(
            [exe, *common, f"--user-data-dir={profile}/b", f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    console = [f"{m.group(1)} ({m.group(2)})" for m in CONSOLE.finditer(dump.stderr + shot.stderr)]
    return Rendered(dom=dump.stdout, console=console, screenshot=screenshot)
