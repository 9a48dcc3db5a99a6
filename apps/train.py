"""`speech-llama train CONFIG.yaml [--key value …]`: Stage-1 training in this process.

The same arguments as ``accelerate launch trainers/run.py CONFIG.yaml [--key value …]`` (our keys
and every `TrainingArguments` field; see `trainers.run`); one process, so for several use the
launcher. Prints the run's summary (output folders, steps, loss) as JSON.
"""

from __future__ import annotations

import argparse
import json

# The dispatcher hands the words after `train` over unparsed: trainers.arguments parses them.
PASS_THROUGH = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="CONFIG.yaml and --key value overrides (see trainers/run.py)")


def run(args: argparse.Namespace) -> dict:
    from trainers import run as trainers_run

    if args.argv in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\n" + (trainers_run.__doc__ or "").strip())
        return {}
    summary = trainers_run.main(list(args.argv))
    print(json.dumps(summary))
    return summary
