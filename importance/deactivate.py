"""Validate importance by deactivation: zero the top / bottom / random fraction, measure perplexity.

Selection is exact: exactly k = round(fraction · N) entries of the N analysed values (or
round(fraction · n_i) per matrix). The k-th largest (smallest) importance is found by bisection
over float32 bit patterns — for non-negative floats the bit pattern, read as an integer, orders
like the value — counting ``x > t`` (``x < t``) tensor by tensor, so no concatenated second copy
of the importances is ever built (≈ 31 counting passes over one copy). Ties at the threshold
are broken deterministically: entries equal to the threshold are taken in artifact order
(tensor order, then flat index) until k is reached.

Zeroing keeps only the zeroed entries' flat indices and original values (12 bytes per zeroed
entry) and writes them back afterwards, so the weights are restored bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Selection = Literal["global", "per_matrix"]
Which = Literal["top", "bottom"]
# Bit patterns of non-negative finite float32 lie in [0, 0x7F7FFFFF]; +inf is 0x7F800000.
_MAX_FINITE_BITS = 0x7F7FFFFF


def _bits_to_float(bits: int) -> float:
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0])


def _count_beyond(tensors: Iterator[torch.Tensor], threshold: float, which: Which) -> int:
    """How many entries are strictly beyond ``threshold``: > for top, < for bottom."""
    if which == "top":
        return sum(int((tensor > threshold).sum()) for tensor in tensors)
    return sum(int((tensor < threshold).sum()) for tensor in tensors)


def kth_threshold(tensors: Mapping[str, torch.Tensor], k: int, which: Which) -> float:
    """The k-th largest (top) or k-th smallest (bottom) value over all tensors, exactly.

    Args:
        tensors: name → non-negative finite fp32 tensor (any shapes).
        k: 1 ≤ k ≤ total number of entries.
    Returns:
        t such that fewer than k entries lie strictly beyond t and at least k lie at or beyond.
    Bisects over integer bit patterns b ∈ [0, 0x7F7FFFFF]: the number of entries beyond
    float(b) is monotone in b, and consecutive patterns are consecutive floats, so the result is
    a value that occurs in the data.
    """
    total = sum(tensor.numel() for tensor in tensors.values())
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    low, high = 0, _MAX_FINITE_BITS
    if which == "top":
        # Smallest b with count(x > b) < k: then count(x ≥ b) ≥ k, i.e. b is the k-th largest.
        while low < high:
            middle = (low + high) // 2
            if _count_beyond(iter(tensors.values()), _bits_to_float(middle), "top") < k:
                high = middle
            else:
                low = middle + 1
    else:
        # Largest b with count(x < b) < k: then count(x ≤ b) ≥ k, i.e. b is the k-th smallest.
        while low < high:
            middle = (low + high + 1) // 2
            if _count_beyond(iter(tensors.values()), _bits_to_float(middle), "bottom") < k:
                low = middle
            else:
                high = middle - 1
    return _bits_to_float(low)


def select_extreme(tensors: Mapping[str, torch.Tensor], k: int, which: Which) -> dict[str, torch.Tensor]:
    """Exactly k entries with the largest (top) or smallest (bottom) values over all tensors.

    Returns:
        name → sorted int64 flat indices (tensors with no selected entry are omitted).
    Ties at the threshold are filled in tensor order, then by flat index (deterministic).
    """
    if k == 0:
        return {}
    threshold = kth_threshold(tensors, k, which)
    need_ties = k - _count_beyond(iter(tensors.values()), threshold, which)
    selected = {}
    for name, tensor in tensors.items():  # one tensor's mask at a time: no second full copy
        beyond = (tensor > threshold) if which == "top" else (tensor < threshold)
        chosen = beyond.reshape(-1).nonzero().squeeze(1)
        if need_ties > 0:
            ties = (tensor.reshape(-1) == threshold).nonzero().squeeze(1)[:need_ties]
            need_ties -= ties.numel()
            chosen = torch.cat([chosen, ties]).sort().values
        if chosen.numel():
            selected[name] = chosen
    return selected


def select_random(sizes: Mapping[str, int], k: int, seed: int) -> dict[str, torch.Tensor]:
    """k entries drawn uniformly without replacement from all tensors together.

    How many fall in each tensor is drawn tensor by tensor from the hypergeometric law (the exact
    marginal of a uniform k-subset), then that many distinct flat indices are drawn inside it —
    the same law as one draw over the concatenation, without materialising N indices.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    remaining_total, remaining_k = sum(sizes.values()), k
    selected = {}
    for name, size in sizes.items():
        others = remaining_total - size
        take = int(rng.hypergeometric(size, others, remaining_k)) if remaining_k and others else remaining_k
        take = min(take, size)
        if take:
            selected[name] = torch.randperm(size, generator=generator)[:take].sort().values
        remaining_total, remaining_k = others, remaining_k - take
    return selected


def fraction_count(fraction: float, size: int) -> int:
    """round(fraction · size), the number of entries to zero (half-up, so 0.5 → 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(size, int(math.floor(fraction * size + 0.5)))


def build_selection(
    importances: Mapping[str, torch.Tensor], fraction: float, kind: str, selection: Selection = "global", seed: int = 0
) -> dict[str, torch.Tensor]:
    """Flat indices to zero for ``kind`` ∈ {top, bottom, random} and a ``selection`` scope.

    global: k = round(fraction · N) over all analysed values; per_matrix: round(fraction · n_i)
    inside each tensor (random per matrix uses seed + the tensor's position).
    """
    if kind not in ("top", "bottom", "random"):
        raise ValueError(f"kind must be top, bottom or random, got {kind!r}")
    if selection not in ("global", "per_matrix"):
        raise ValueError(f"selection must be 'global' or 'per_matrix', got {selection!r}")
    if selection == "global":
        k = fraction_count(fraction, sum(t.numel() for t in importances.values()))
        if kind == "random":
            return select_random({name: t.numel() for name, t in importances.items()}, k, seed)
        return select_extreme(importances, k, kind)
    selected = {}
    for position, (name, tensor) in enumerate(importances.items()):
        k = fraction_count(fraction, tensor.numel())
        if kind == "random":
            part = select_random({name: tensor.numel()}, k, seed + position)
        else:
            part = select_extreme({name: tensor}, k, kind)
        selected.update(part)
    return selected


@dataclass
class ZeroedEntries:
    """What `zeroed` overwrote: per parameter, the flat indices and their original values."""

    indices: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return sum(index.numel() for index in self.indices.values())


@contextmanager
def zeroed(model: torch.nn.Module, selection: Mapping[str, torch.Tensor]):
    """Zero the selected entries of the model's parameters; restore them bit-exactly on exit.

    Args:
        selection: parameter name → int64 flat indices (as from `build_selection`).
    Yields:
        `ZeroedEntries` (the saved originals).
    """
    parameters = dict(model.named_parameters())
    saved = ZeroedEntries(indices={}, values={})
    try:
        with torch.no_grad():
            for name, indices in selection.items():
                if name not in parameters:
                    raise ValueError(f"selection names {name!r}, which is not a parameter of the model")
                flat = parameters[name].data.view(-1)  # parameters are contiguous: a view, not a copy
                saved.values[name] = flat[indices].clone()
                saved.indices[name] = indices
                flat[indices] = 0
        yield saved
    finally:
        with torch.no_grad():
            for name, indices in saved.indices.items():
                parameters[name].data.view(-1)[indices] = saved.values[name]
