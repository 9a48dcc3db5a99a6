"""Keep freed tensor memory in the process (Linux, glibc).

glibc serves each allocation above its mmap threshold (adaptive, at most 32 MiB) with fresh pages from
the kernel and hands them back on free; torch's CPU allocator caches nothing, so a training step that
allocates its ~100 MB logits again faults every page in anew. Measured on the CTC alignment stage:
35 % of its CPU time was kernel time (stime 319 s of 900 s). Serving large blocks from the heap and
not trimming it keeps that memory for the next step. (PyTorch's CPU guides suggest jemalloc or
tcmalloc via LD_PRELOAD for the same reason; this needs no system package.)
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_LARGE = 1 << 30


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; returns False (and changes nothing) elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, …)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGE)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGE))
