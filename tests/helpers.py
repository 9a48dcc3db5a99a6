"""Small helpers shared by the tests (importable as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np


def noise_clip(seconds: float, seed: int = 0) -> np.ndarray:
    """A deterministic 16 kHz float32 clip; content does not matter for shape/plumbing tests."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
