"""Bootstrap confidence intervals over questions: one accuracy, and the paired difference of two.

Both resample the questions (with replacement, seeded), so a paired difference keeps each
question's two outcomes together: its interval is what says whether method A beats method B on
this test set, not the two accuracies' separate intervals.

Pooled over training seeds (`pooled_interval`, `pooled_paired_difference`): outcomes form a
seeds × questions grid, and each bootstrap sample draws the seeds and the questions with
replacement (a two-way bootstrap), so the interval carries both the test set's and the training
runs' variation. A grid of one seed is the plain question bootstrap, number for number.
`seed_interval` is a Student-t interval over per-seed values that have no questions (e.g. a
layer-profile divergence).
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


def _grid(runs: Sequence[Sequence[float | bool]], name: str) -> np.ndarray:
    """Per-seed outcome lists → a seeds × questions array (every seed scored on the same questions)."""
    rows = [_outcomes(run, f"{name}, seed {index}") for index, run in enumerate(runs)]
    if not rows:
        raise ValueError(f"{name}: need the outcomes of at least one seed")
    if len({row.size for row in rows}) > 1:
        raise ValueError(f"{name}: the seeds were scored on {sorted({row.size for row in rows})} questions; "
                         "pooling needs every seed on the same questions in the same order")
    return np.stack(rows)


def _grid_interval(grid: np.ndarray, level: float, samples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the grid's mean, seeds and questions drawn with replacement."""
    if grid.shape[0] == 1:
        return _interval(grid[0], level, samples, seed)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, grid.shape[1], size=(samples, grid.shape[1]))
    per_seed = np.stack([row[picks].mean(axis=1) for row in grid], axis=1)  # samples × seeds
    seed_picks = rng.integers(0, grid.shape[0], size=(samples, grid.shape[0]))
    means = np.take_along_axis(per_seed, seed_picks, axis=1).mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return round(float(low), 4), round(float(high), 4)


def pooled_interval(runs: Sequence[Sequence[float | bool]], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> dict:
    """{"mean", "low", "high", "seeds", "n"}: the mean over seeds and questions, two-way bootstrap interval."""
    grid = _grid(runs, "pooled_interval")
    low, high = _grid_interval(grid, level, samples, seed)
    return {"mean": round(float(grid.mean()), 4), "low": low, "high": high, "level": level,
            "seeds": int(grid.shape[0]), "n": int(grid.shape[1])}


def pooled_paired_difference(a_runs: Sequence[Sequence[float | bool]], b_runs: Sequence[Sequence[float | bool]],
                             level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """`paired_difference` pooled over seeds: seed i of A is paired with seed i of B (same data order),
    question q with question q; the interval draws seeds and questions with replacement."""
    first, second = _grid(a_runs, "pooled_paired_difference (a)"), _grid(b_runs, "pooled_paired_difference (b)")
    if first.shape != second.shape:
        raise ValueError(f"pooled_paired_difference: {first.shape[0]} seeds × {first.shape[1]} questions against "
                         f"{second.shape[0]} × {second.shape[1]}; pairing needs the same seeds and questions")
    differences = first - second
    low, high = _grid_interval(differences, level, samples, seed)
    return {"difference": round(float(differences.mean()), 4), "low": low, "high": high, "level": level,
            "seeds": int(differences.shape[0]), "n": int(differences.shape[1]), "excludes_zero": bool(low > 0 or high < 0)}


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """{"mean", "low", "high", "sd", "seeds"}: Student-t interval of the mean of per-seed values
    (one value per training seed, at least two)."""
    from scipy import stats  # imported here: the bootstrap helpers above are used without it

    array = _outcomes(values, "seed_interval")
    if array.size < 2:
        raise ValueError(f"seed_interval: an interval over seeds needs at least 2 seeds, got {array.size}")
    mean, sd = float(array.mean()), float(array.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2.0, array.size - 1) * sd / np.sqrt(array.size))
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "level": level, "seeds": int(array.size),
            "excludes_zero": bool(mean - half > 0 or mean + half < 0)}


__all__ = ["BOOTSTRAP_SAMPLES", "bootstrap_interval", "paired_difference", "pooled_interval", "pooled_paired_difference",
           "seed_interval"]
