"""The numbers the results are held against: the tutorial's expected test accuracies, and LeCun et al.'s.

A foundation read by evaluate (its figures draw the tutorial's bands) and by report (its tables set each
measured number beside them), so neither imports the other.
"""

from __future__ import annotations

from mnistlr.params import Params

# The tutorial's expected test accuracy, in %: what users hold the results against.
EXPECTED_BY_FRACTION = {0.1: (80.0, 85.0), 0.25: (87.0, 89.0), 0.5: (90.0, 91.0), 1.0: (92.0, 93.0)}
EXPECTED_BY_NOISE = {0.1: (88.0, 89.0)}  # on the full training set
EXPECTED_NOISE_DROP = {0.1: (3.0, 4.0)}  # points lost to that noise
EXPECTED_BY_OPTIMIZER = {"sgd": (91.0, 92.0), "adam": (92.0, 93.0)}

# LeCun et al. (1998), "Gradient-based learning applied to document recognition", table of test error
# rates: the linear classifier ("1-layer NN") on plain and on deskewed digits, in %.
LECUN_LINEAR_ERROR = {"plain": 12.0, "deskewed": 8.4}


def expected_range(fraction: float, noise: float) -> tuple[float, float] | None:
    """The tutorial's expected test accuracy (%) for a variant, when it gives one."""
    if noise == 0:
        return EXPECTED_BY_FRACTION.get(fraction)
    if fraction == 1.0:
        return EXPECTED_BY_NOISE.get(noise)
    return None


def noise_rows(params: Params, scores: dict[str, dict]) -> list[dict]:
    """The tutorial's label-noise comparison as this run measured it: each noisy variant after the clean one
    of the same size, with its label noise and val and test accuracy (%)."""
    rows, seen = [], set()
    for name in params.variants:
        clean = params.clean_twin(name)
        if clean is None:
            continue
        for variant in (clean, name):
            if variant in seen:
                continue
            seen.add(variant)
            rows.append(
                {
                    "variant": variant,
                    "label noise": params.variants[variant].noise,
                    "val acc (%)": round(100 * scores[variant]["val"]["accuracy"], 2),
                    "test acc (%)": round(100 * scores[variant]["test"]["accuracy"], 2),
                }
            )
    return rows
