"""Bootstrap confidence intervals over questions: one accuracy, and the paired difference of two.

Both resample the questions (with replacement, seeded), so a paired difference keeps each
question's two outcomes together: its interval is what says whether method A beats method B on
this test set, not the two accuracies' separate intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 10_000


def _outcomes(values: Sequence[float | bool], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: need a non-empty list of per-question outcomes, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: per-question outcomes must be finite numbers")
    return array


def _interval(outcomes: np.ndarray, level: float, samples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean over `samples` seeded resamplings of the questions."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, outcomes.size, size=(samples, outcomes.size))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(outcomes[picks].mean(axis=1), [tail, 1.0 - tail])
    return round(float(low), 4), round(float(high), 4)


def bootstrap_interval(values: Sequence[float | bool], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> dict:
    """{"mean", "low", "high"}: the mean of per-question outcomes (1 correct, 0 not) and its percentile interval."""
    outcomes = _outcomes(values, "bootstrap_interval")
    low, high = _interval(outcomes, level, samples, seed)
    return {"mean": round(float(outcomes.mean()), 4), "low": low, "high": high, "level": level, "n": int(outcomes.size)}


def paired_difference(a: Sequence[float | bool], b: Sequence[float | bool], level: float = 0.95,
                      samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """{"difference", "low", "high", "excludes_zero"}: mean(a) − mean(b) over the same questions, paired bootstrap."""
    first, second = _outcomes(a, "paired_difference (a)"), _outcomes(b, "paired_difference (b)")
    if first.size != second.size:
        raise ValueError(f"paired_difference: the two methods were scored on {first.size} and {second.size} "
                         "questions; a paired interval needs the same questions in the same order")
    differences = first - second
    low, high = _interval(differences, level, samples, seed)
    return {"difference": round(float(differences.mean()), 4), "low": low, "high": high, "level": level,
            "n": int(differences.size), "excludes_zero": bool(low > 0 or high < 0)}


__all__ = ["BOOTSTRAP_SAMPLES", "bootstrap_interval", "paired_difference"]
