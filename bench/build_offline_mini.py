"""Time `build --preset offline-mini` with the weight cache warm (the second build).

Last line: {"second_build_s": …, "target_s": 60, "ok": …}. The first build on a fresh machine
also converts Whisper (≈ 5 s) and dequantises SmolLM2's GGUF (≈ 30 s); both are cached.

    python bench/build_offline_mini.py [--smoke]   (--smoke: the tiny-random preset, same timing)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from speech_llama.presets import build_offline_mini, build_tiny_random

TARGET_S = 60.0


def timed_build(out_dir: Path, builder=build_offline_mini) -> float:
    started = time.perf_counter()
    builder(out_dir)
    return time.perf_counter() - started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="time two builds of the tiny-random preset instead (seconds; for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset, builder = ("tiny-random", build_tiny_random) if args.smoke else ("offline-mini", build_offline_mini)
    with tempfile.TemporaryDirectory() as scratch:
        first_s = timed_build(Path(scratch) / "first", builder)
        second_s = timed_build(Path(scratch) / "second", builder)
    print(f"{preset}: first build {first_s:.2f} s, second build {second_s:.2f} s (target {TARGET_S:.0f} s)")
    print(json.dumps({"first_build_s": round(first_s, 2), "second_build_s": round(second_s, 2),
                      "target_s": TARGET_S, "ok": second_s <= TARGET_S, "preset": preset}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
