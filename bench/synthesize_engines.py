"""Benchmark: the corpus engines through ``synthesize_records``, one clip per engine process and one
worker (how it ran first) vs chunks of ``SYNTHESIS_CHUNK`` texts per process in 2 workers, side by side.

Festival loads its voice at every start, which costs more than speaking one question; the
reproduction speaks ~1 200 prompts with `festival-slt` (held-out sets) and the training mix.
`same_audio` compares the festival-slt clips of both runs sample for sample (the training mix holds
Piper voices, whose noise is drawn unseeded, so only its speed is compared).
The last line printed is JSON: {"<voice>_speedup": ..., ..., "same_audio": ..., "target": 2.0, "ok": ...}.

    python bench/synthesize_engines.py [--n 32] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_llama import synthesize  # noqa: E402
from speech_llama.audio import read_wav  # noqa: E402
from synthesize import benchmark_questions  # noqa: E402  (bench/ is on sys.path as the script's folder)

TARGET_SPEEDUP = 2.0
SMOKE_N, SMOKE_CHUNK = 4, 2  # --smoke: two chunks per voice, one per worker
VOICES = ("festival-slt", synthesize.TRAINING_MIX)


def timed_run(records: list[dict], voice: str, out_dir: Path, chunk: int, workers: int) -> float:
    synthesize.SYNTHESIS_CHUNK = chunk
    start = time.perf_counter()
    synthesize.synthesize_records(records, out_dir, voice=voice, progress=False, workers=workers)
    return time.perf_counter() - start


def same_audio(first: Path, second: Path) -> bool:
    wavs = sorted((first / "audio").glob("*.wav"))
    return all(np.array_equal(read_wav(wav), read_wav(second / "audio" / wav.name)) for wav in wavs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help=f"questions per voice (default 32; --smoke: {SMOKE_N})")
    parser.add_argument("--smoke", action="store_true",
                        help=f"the same comparison on {SMOKE_N} questions in chunks of {SMOKE_CHUNK}, in seconds (for "
                             "tests); exits 0 unless the audio differs (the speed target needs the full size)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n is None:
        args.n = SMOKE_N if args.smoke else 32
    records = benchmark_questions(args.n)
    chunked = SMOKE_CHUNK if args.smoke else synthesize.SYNTHESIS_CHUNK
    result, identical = {"n": args.n, "chunk": chunked}, True
    for voice in VOICES:
        synthesize.check_voice(voice)
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as many:
            one_s = timed_run(records, voice, Path(one), chunk=1, workers=1)
            many_s = timed_run(records, voice, Path(many), chunk=chunked, workers=2)
            if voice != synthesize.TRAINING_MIX:  # the mix has Piper voices, whose noise is drawn unseeded
                identical = identical and same_audio(Path(one), Path(many))
        result.update({f"{voice}_one_by_one_s": round(one_s, 2), f"{voice}_chunked_s": round(many_s, 2),
                       f"{voice}_speedup": round(one_s / many_s, 2)})
    speedups = [result[f"{voice}_speedup"] for voice in VOICES]
    result.update({"same_audio": identical, "target": TARGET_SPEEDUP,
                   "ok": identical and min(speedups) >= TARGET_SPEEDUP})
    for voice in VOICES:
        print(f"{voice}: one by one {result[f'{voice}_one_by_one_s']} s, chunks of {chunked} in 2 workers "
              f"{result[f'{voice}_chunked_s']} s, speedup {result[f'{voice}_speedup']}x")
    print(json.dumps(result))
    if args.smoke:
        return 0 if identical else 1
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
