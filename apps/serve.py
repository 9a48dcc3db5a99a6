"""`speech-llama serve`: an OpenAI-compatible chat endpoint (typed and spoken questions, streaming)
over one model folder, with continuous batching across requests (docs/serving.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from speech_llama.generate import add_dtype_argument
from speech_llama.remote_code import add_trust_argument

DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (speech-llama build)")
    parser.add_argument("--served-model-name", help="the model id clients name (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded at once (default 8)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting beyond those; one more is answered 429 (default 64)")
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="largest request body, 413 above (default 10)")
    parser.add_argument("--max-audio-seconds", type=float, default=30.0,
                        help="longest spoken question (default 30, the encoder's limit)")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="a request's time from arrival to its last token, 504 after (default 120)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="answer length when a request names no max_tokens, and the most it may name (default 256)")
    add_dtype_argument(parser)
    add_trust_argument(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (info: one line per request)")


def config_from_args(args: argparse.Namespace):
    from speech_llama.serving import ServeConfig

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0 … 65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be > 0, got {args.max_body_mb:g}")
    return ServeConfig(
        model_name=args.served_model_name or args.model.resolve().name, max_batch=args.max_batch,
        max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * 2**20), max_audio_seconds=args.max_audio_seconds,
        timeout_s=args.timeout_s, max_new_tokens=args.max_new_tokens,
    )


def run(args: argparse.Namespace) -> str:
    """Serve until interrupted (Ctrl-C); returns the base URL it served on."""
    from speech_llama.generate import load_model
    from speech_llama.remote_code import load_processor
    from speech_llama.serving import create_app, serve_forever
    from speech_llama.serving.server import base_url, bind

    config = config_from_args(args)
    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model}: not a model folder (no config.json); build one with `speech-llama build`")
    processor = load_processor(args.model, args.trust_remote_code)
    config.check(processor)  # before the weights load
    model, processor = load_model(args.model, dtype=args.dtype, processor=processor)
    app = create_app(model, processor, config)
    try:
        sock = bind(args.host, args.port)
    except OSError as error:
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {error}") from error
    url = base_url(sock)
    print(f"speech-llama serve: {config.model_name} at {url}/v1 (max batch {config.max_batch}, queue {config.max_queue})",
          flush=True)
    try:
        serve_forever(app, sock, log_level=args.log_level)
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then raises the Ctrl-C it caught again
        print("speech-llama serve: stopped", flush=True)
    return url
