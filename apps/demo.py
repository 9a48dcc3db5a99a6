"""`speech-llama demo`: serve the Gradio Space (spaces_demo/) on this machine.

On first start the artifact folder is filled with the default content (offline-mini and its
text-input importance, a few minutes on a small CPU; progress in the page and in this log); later
starts only read it and serve within seconds. The URL is printed once the server is up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spaces_demo.content import DEFAULT_SAMPLES
from spaces_demo.folder import DEFAULT_ARTIFACTS
from speech_llama.remote_code import add_trust_argument

DEFAULT_PORT = 7860


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to serve on (default {DEFAULT_PORT}; 0: the first free one from {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to serve the network)")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS,
                        help=f"the Space's folder: the only place it reads artifacts from (default {DEFAULT_ARTIFACTS})")
    parser.add_argument("--model", type=Path,
                        help="model folder for 'Try it' and the default importance (default: build offline-mini into the artifact folder)")
    add_trust_argument(parser)
    parser.add_argument("--records", type=Path, help="records for the default importance (default: data/general_knowledge_qa.jsonl)")
    parser.add_argument("--importance-samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"records used for the default importance estimate (default {DEFAULT_SAMPLES}, batch 8)")


def plan_from_args(args: argparse.Namespace):
    from spaces_demo.content import ContentPlan

    samples = args.importance_samples
    if samples < 1:
        raise ValueError(f"--importance-samples must be >= 1, got {samples}")
    if args.model is not None and not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model}: not a model folder (no config.json); build one with `speech-llama build`")
    if args.model is not None:
        from speech_llama.remote_code import load_processor, trust_folder

        if args.trust_remote_code:
            trust_folder(args.model)  # the Space's loaders ask the consent registry
        load_processor(args.model)  # a folder that cannot load without its own code fails here, not in the page
    elif args.trust_remote_code:
        raise ValueError("--trust-remote-code applies to a --model folder; the default model needs no code of its own")
    if args.records is not None and not args.records.is_file():
        raise FileNotFoundError(f"--records {args.records}: no such file")
    return ContentPlan(folder=args.artifacts, model_dir=args.model, records=args.records, samples=samples)


def run(args: argparse.Namespace) -> str:
    """Serve until interrupted (Ctrl-C); returns the URL it served on."""
    from spaces_demo.app import configure_logging, launch

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0 … 65535, got {args.port}")
    configure_logging()
    plan = plan_from_args(args)
    try:
        _, url = launch(plan, host=args.host, port=args.port or None)
    except KeyboardInterrupt:
        print("speech-llama demo: stopped")
        return ""
    except OSError as error:  # e.g. the port is taken
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {error}") from error
    return url


def main(argv: list[str] | None = None) -> int:
    """``python -m apps.demo …`` (the same as ``speech-llama demo …``)."""
    import sys

    from speech_llama.commands import main as dispatch

    argv = sys.argv[1:] if argv is None else list(argv)
    return dispatch("speech-llama", {"demo": (__name__, __doc__.splitlines()[0])}, ["demo", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
