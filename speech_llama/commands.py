"""Subcommand dispatch shared by every entry point (`speech-llama`, ``python -m importance.cli``).

A command is a module offering ``add_arguments(parser)`` and ``run(args)``; a table maps each
command name to ``(module name, help)``. Only the chosen command's module is imported (each pulls
in torch / transformers). A module that sets ``PASS_THROUGH = True`` parses its own arguments:
``run`` gets ``args.argv``, the words after the command name, unparsed (argparse cannot pass on
words that look like options).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .memory import choose_freed_memory_policy

# command → (module, help)
CommandTable = Mapping[str, tuple[str, str]]
# What a command may raise for bad input: reported in one line (no traceback), exit status 2.
# OSError covers a missing or unreadable path, a Hub id that does not resolve, a full disk.
USER_ERRORS = (ValueError, OSError, ImportError)


def one_line(error: BaseException) -> str:
    """An error's message on one line (transformers' and others' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def build_parser(prog: str, commands: CommandTable, command: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported and adds its arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        # argparse %-formats help (not descriptions): a literal "95 %" would crash `--help`.
        subparser = subparsers.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)
        subparser.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def parse(prog: str, commands: CommandTable, argv: Sequence[str], description: str | None = None) -> argparse.Namespace:
    """Parse ``argv`` (command first). A pass-through command gets the rest as ``args.argv``."""
    argv = list(argv)
    command = argv[0] if argv and argv[0] in commands else None
    parser = build_parser(prog, commands, command, description)
    if command is not None and getattr(importlib.import_module(commands[command][0]), "PASS_THROUGH", False):
        args = parser.parse_args([command])
        args.argv = argv[1:]
        return args
    return parser.parse_args(argv)


def run_parsed(args: argparse.Namespace) -> Any:
    """Run a parsed command in-process and return what its ``run`` returns; errors propagate."""
    return importlib.import_module(args._module).run(args)


def exit_status(where: str, work: Callable[[], Any]) -> int:
    """Run `work`; bad input becomes one line ``WHERE: error: …`` on stderr and status 2, success 0."""
    try:
        work()
    except USER_ERRORS as error:
        print(f"{where}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def main(prog: str, commands: CommandTable, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Parse and run one command; bad input is reported as ``PROG COMMAND: error: …`` (status 2)."""
    args = parse(prog, commands, sys.argv[1:] if argv is None else argv, description)
    choose_freed_memory_policy()
    return exit_status(f"{prog} {args.command}", lambda: run_parsed(args))


__all__ = ["USER_ERRORS", "build_parser", "exit_status", "main", "one_line", "parse", "run_parsed"]
