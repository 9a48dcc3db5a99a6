"""Whether this CPU runs bfloat16 natively, and the precision to pick by default.

bf16 is a speed-up only where the CPU has bf16 instructions (AVX512-BF16 or AMX): measured on such
a CPU, QA generation ran 2-3x faster and response perplexity 1.9x. Where it has none (AVX2 only),
torch emulates bf16 and the same generation ran 6x *slower* than float32 (SmolLM2, 64 prompts x 10
tokens: 14.6 s float32, 87.9 s bfloat16). So defaults that mean "the fast precision" are resolved
here, per machine, and recorded where they are used.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cpu_runs_bfloat16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def fast_dtype_name(device: str = "cpu") -> str:
    """"bfloat16" on an accelerator or a CPU that runs it natively, else "float32"."""
    return "bfloat16" if device != "cpu" or cpu_runs_bfloat16() else "float32"


def resolve_dtype_name(name: str, device: str = "cpu") -> str:
    """`name` itself, or for "auto" the fast precision of this machine (`fast_dtype_name`)."""
    return fast_dtype_name(device) if name == AUTO else name


__all__ = ["AUTO", "cpu_runs_bfloat16", "fast_dtype_name", "resolve_dtype_name"]
