"""The engine's three commands, runnable without the `speech-llama` entry point (e.g. under a launcher):

    python -m importance.cli importance --model DIR --data DATA --out X.safetensors
    accelerate launch --multi_gpu --num_processes 2 -m importance.cli importance …
    python -m importance.cli deactivate --model DIR --importance X.safetensors --data DATA --out R.json
    python -m importance.cli compare A.safetensors B.safetensors --out DIR

The project dispatcher (`speech_llama.cli`) parses and runs them; this module only limits it to
the engine's commands.
"""

from __future__ import annotations

import sys

from speech_llama.cli import main as dispatch

ENGINE_COMMANDS = ("importance", "deactivate", "compare")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ENGINE_COMMANDS:
        print(f"usage: python -m importance.cli {{{','.join(ENGINE_COMMANDS)}}} …", file=sys.stderr)
        return 2
    return dispatch(argv)


if __name__ == "__main__":
    sys.exit(main())
