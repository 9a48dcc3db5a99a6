"""The engine's three commands, runnable without the `speech-llama` entry point (e.g. under a launcher):

    python -m importance.cli importance --model DIR --data DATA --out X.safetensors
    accelerate launch --multi_gpu --num_processes 2 -m importance.cli importance …
    python -m importance.cli deactivate --model DIR --importance X.safetensors --data DATA --out R.json
    python -m importance.cli compare A.safetensors B.safetensors --out DIR

The `speech-llama` CLI (`apps.cli`) lists the same three modules in its table.
"""

from __future__ import annotations

import sys

from speech_llama.commands import main as dispatch

# command → (module, help); each module offers add_arguments(parser) and run(args).
ENGINE_COMMANDS = {
    "importance": ("importance.cli_importance", "first-order Taylor importance |θ·∂L/∂θ| → X.safetensors + X.json"),
    "deactivate": ("importance.cli_deactivate", "perplexity with the top / bottom / random fraction of parameters zeroed (Table 1)"),
    "compare": ("importance.cli_compare", "layer / module profiles, shift metrics, rank clustering, |Δθ| → JSON + PNG"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ENGINE_COMMANDS:
        print(f"usage: python -m importance.cli {{{','.join(ENGINE_COMMANDS)}}} …", file=sys.stderr)
        return 2
    return dispatch("speech-llama", ENGINE_COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
