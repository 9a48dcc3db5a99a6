"""The engine's three commands, runnable without the project dispatcher (e.g. under a launcher):

    python -m importance.cli importance --model DIR --data DATA --out X.safetensors
    accelerate launch --num_processes 2 --cpu -m importance.cli importance …
    python -m importance.cli deactivate --model DIR --importance X.safetensors --data DATA --out R.json
    python -m importance.cli compare A.safetensors B.safetensors --out DIR

`speech-llama` wires the same modules (COMMANDS below) into its own dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "importance": ("importance.cli_importance", "Taylor parameter importance |θ·∂L/∂θ| over a data set → X.safetensors + X.json"),
    "deactivate": ("importance.cli_deactivate", "perplexity with the top / bottom / random fraction of analysed parameters zeroed"),
    "compare": ("importance.cli_compare", "layer / module profiles, shift metrics, rank clustering and heatmaps of artifacts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m importance.cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        importlib.import_module(args._module).run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"{args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
