"""Regression gate: fail when a metric of any variant drops more than allowed against a base revision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnistlr.dvc_cli import dvc_json
from mnistlr.errors import MnistlrError


@dataclass(frozen=True)
class Change:
    variant: str
    old: float | None
    new: float | None
    higher_is_better: bool = True

    @property
    def drop(self) -> float:
        """How much worse the new value is (negative: better); 0 when either side is missing."""
        if self.old is None or self.new is None:
            return 0.0
        return (self.old - self.new) if self.higher_is_better else (self.new - self.old)


LOWER_IS_BETTER = ("loss", "ece", "nll")


def higher_is_better(metric: str) -> bool:
    """Losses and calibration errors fall when things improve; accuracy, F1 and the rest rise."""
    return not metric.endswith(LOWER_IS_BETTER)


def variant_of(metrics_path: str) -> str:
    """'metrics/full.json' -> 'full'."""
    return Path(metrics_path).stem


def changes(diff: dict, metric: str) -> list[Change]:
    """One Change per metrics file that has `metric`, from `dvc metrics diff --all --json` output."""
    out = []
    for path, entries in sorted(diff.get("diff", diff).items()):
        if metric in entries:
            e = entries[metric]
            out.append(Change(variant_of(path), e.get("old"), e.get("new"), higher_is_better(metric)))
    if not out:
        known = sorted({k for entries in diff.get("diff", diff).values() for k in entries})
        raise MnistlrError(f"metric {metric!r} is in no metrics file; accepted: {', '.join(known) or 'none found'}")
    return out


def verdict(found: list[Change], metric: str, max_drop: float, base: str) -> tuple[bool, str]:
    """(passed, one-line reason). A variant new on the branch (no base value) passes."""
    failed = sorted((c for c in found if c.drop > max_drop + 1e-12), key=lambda c: -c.drop)
    if failed:
        parts = [f"{c.variant} {metric} worsened from {c.old:.4f} ({base}) to {c.new:.4f} (workspace), "
                 f"drop {c.drop:.4f}" for c in failed]
        return False, f"gate FAILED (max drop {max_drop:g}): " + "; ".join(parts)
    worst = max(found, key=lambda c: c.drop)
    detail = (f"largest drop {worst.variant} {worst.old:.4f} -> {worst.new:.4f}"
              if worst.old is not None and worst.new is not None else "no base values to compare")
    return True, f"gate passed: {metric} of {len(found)} variant(s) within {max_drop:g} of {base} ({detail})"


def run_gate(base: str, metric: str, max_drop: float, cwd: str | Path = ".") -> tuple[bool, str]:
    """Compare the workspace's metrics with `base`'s through `dvc metrics diff`."""
    if max_drop < 0:
        raise MnistlrError(f"--max-drop {max_drop} is negative; accepted: a number >= 0")
    return verdict(changes(dvc_json("metrics", "diff", base, "--all", cwd=cwd), metric), metric, max_drop, base)

