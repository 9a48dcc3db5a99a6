"""Keep freed tensor memory in the process (Linux, glibc).

glibc serves each allocation above its mmap threshold (adaptive, at most 32 MiB) with fresh pages from
the kernel and hands them back on free; torch's CPU allocator caches nothing, so a training step that
allocates its ~100 MB logits again faults every page in anew. Measured on the CTC alignment stage:
35 % of its CPU time was kernel time (stime 319 s of 900 s). Serving large blocks from the heap and
not trimming it keeps that memory for the next step. (PyTorch's CPU guides suggest jemalloc or
tcmalloc via LD_PRELOAD for the same reason; this needs no system package.)

The opposite holds for FSDP on CPU processes (`release_freed_memory`): there the blocks freed every
step are the units' gathered parameters, and keeping them costs more memory than sharding saves.
`choose_freed_memory_policy` picks one; the CLI and trainers/run.py call it at start.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_LARGE = 1 << 30


def _glibc_mallopt():
    """glibc's `mallopt`, or None off Linux / off glibc (musl, …)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; returns False (and changes nothing) elsewhere."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGE)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGE))


_SMALL = 128 * 1024  # glibc's default mmap threshold


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 128 KiB (setting it turns its adaptive raise off): blocks above it
    are mapped on allocation and handed back on free. Returns False (and changes nothing) off glibc.

    For FSDP on CPU processes: every step gathers and frees each unit's parameters twice, and heap-kept
    blocks of those sizes (`reuse_freed_memory`, or glibc's own adaptive threshold) grow the resident
    set past what sharding saves (measured on offline-mini: +0.9 GB after one forward).
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _SMALL))


def choose_freed_memory_policy() -> str:
    """`release_freed_memory` under an FSDP launch without GPUs, else `reuse_freed_memory`; returns which."""
    import torch

    from .fsdp import fsdp_settings

    if fsdp_settings() is not None and not torch.cuda.is_available():
        release_freed_memory()
        return "release"
    reuse_freed_memory()
    return "reuse"
