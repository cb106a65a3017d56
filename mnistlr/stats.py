"""Is a change real? Exact statistics of two models' predictions on the same test images.

Both exact tests come from scipy.special's regularized incomplete beta function and its inverse, the
functions under scipy.stats' binomial distribution: the same values as scipy.stats.binomtest(k, n).pvalue
and .proportion_ci(method="exact"), without importing scipy.stats, which takes about a second. scipy.special
itself is imported only when a test is computed. read_predictions parses the predictions those tests read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnistlr.errors import MnistlrError

CONFIDENCE = 0.95


def mcnemar_p(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: under 'no difference' the images the two models disagree on
    split as Binomial(fixed + broken, 1/2), so p = 2 P(X <= min(fixed, broken)), at most 1.
    1 when they disagree on none."""
    from scipy import special

    d = fixed + broken
    if d == 0:
        return 1.0
    k = min(fixed, broken)
    return min(1.0, 2 * float(special.betainc(d - k, k + 1, 0.5)))  # P(X <= k) = I_{1-p}(d - k, k + 1)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion after k successes in n trials: the p
    where P(X >= k) falls to (1 - confidence) / 2 and the p where P(X <= k) does, which are quantiles of
    beta distributions. The bound is 0 on the side of no successes, 1 on the side of no failures."""
    from scipy import special

    alpha = 1 - confidence
    lower = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, alpha / 2))
    upper = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 1 - alpha / 2))
    return lower, upper


def change_interval(fixed: int, broken: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact interval for the accuracy change (fixed - broken) / n: the Clopper-Pearson interval for the
    share of disagreements the new model wins, scaled by the disagreements. [0, 0] when there are none."""
    d = fixed + broken
    if d == 0:
        return 0.0, 0.0
    lower, upper = clopper_pearson(fixed, d, confidence)
    return (2 * lower - 1) * d / n, (2 * upper - 1) * d / n


@dataclass(frozen=True)
class PairedChange:
    """One variant's test predictions, base against workspace, image by image."""

    variant: str
    n: int
    base_accuracy: float
    new_accuracy: float
    fixed: int  # wrong in base, right in the workspace
    broken: int  # right in base, wrong in the workspace

    @property
    def change(self) -> float:
        return self.new_accuracy - self.base_accuracy

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.fixed, self.broken)

    @property
    def interval(self) -> tuple[float, float]:
        return change_interval(self.fixed, self.broken, self.n)

    def describe(self) -> str:
        lo, hi = self.interval
        return (
            f"{self.variant} test accuracy {self.base_accuracy:.4f} -> {self.new_accuracy:.4f} "
            f"({100 * self.change:+.2f} points, {CONFIDENCE:.0%} CI [{100 * lo:+.2f}, {100 * hi:+.2f}], "
            f"McNemar p = {self.p_value:.3g}; {self.fixed} fixed, {self.broken} broken)"
        )


def read_predictions(text: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(actual, predicted) from an evaluate stage's actual,predicted CSV; `source` names it in the error."""
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    try:
        table = np.array(rows, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise MnistlrError(f"{source}: not an actual,predicted CSV of integers") from None
    return table[:, 0], table[:, 1]


def paired_change(
    variant: str, base: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]
) -> PairedChange:
    """Compare two models' (actual, predicted) labels of one variant; both must be of the same test images, in
    the same order."""
    (actual, old_pred), (actual_new, new_pred) = base, new
    if actual.shape != actual_new.shape or not np.array_equal(actual, actual_new):
        raise MnistlrError(
            f"{variant}: the base and workspace predictions are not of the same test images "
            f"({actual.size} vs {actual_new.size} labels, or in another order)"
        )
    old_ok, new_ok = old_pred == actual, new_pred == actual
    return PairedChange(
        variant,
        int(actual.size),
        float(old_ok.mean()),
        float(new_ok.mean()),
        int((~old_ok & new_ok).sum()),
        int((old_ok & ~new_ok).sum()),
    )
