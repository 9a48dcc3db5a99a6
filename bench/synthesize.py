"""Benchmark: spoken questions per second through ``synthesize_records`` (Piper → 16 kHz wav).

Times the full pipeline a user runs (TTS, 22 050 → 16 000 Hz resampling, atomic wav writes,
data.jsonl) on N distinct questions. Start-up — loading the voice and Piper's first call, which
initialises the phonemizer and ONNX Runtime (≈ 2 s, once per process) — is timed apart and also
folded into an end-to-end rate, so both the steady rate and what a short run sees are printed.
The last line printed is JSON: {"questions_per_s": ..., "end_to_end_questions_per_s": ...,
"startup_s": ..., "target": 5, "ok": ...}; `ok` judges the steady rate.

    python bench/synthesize.py [--n 36] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_llama.synthesize import synthesize_records, synthesize_text  # noqa: E402
from speech_llama.tts import tts_voice  # noqa: E402

TARGET_QUESTIONS_PER_S = 5.0
SMOKE_N = 3

SUBJECTS = [
    "the capital of Australia", "the largest desert on Earth", "the author of Pride and Prejudice",
    "the speed of light", "the tallest animal", "the longest river in Europe",
    "the inventor of the telephone", "the smallest planet", "the national animal of Scotland",
    "the boiling point of water", "the first emperor of Rome", "the language of Mexico",
]
TEMPLATES = ["What is {}?", "Can you tell me about {}?", "Who or what is {}, exactly?"]


def benchmark_questions(count: int) -> list[dict]:
    """``count`` distinct, question-like records (varied length, like spoken QA data)."""
    questions = [t.format(s) for t in TEMPLATES for s in SUBJECTS]
    if count > len(questions):
        raise SystemExit(f"--n must be at most {len(questions)}")
    return [{"question": q, "answer": "n/a"} for q in questions[:count]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help=f"questions to synthesise (≥ 30; default 36, --smoke: {SMOKE_N})")
    parser.add_argument("--smoke", action="store_true", help=f"the same run on {SMOKE_N} questions, in seconds (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n is None:
        args.n = SMOKE_N if args.smoke else 36

    start = time.perf_counter()
    tts_voice()
    load_s = time.perf_counter() - start
    synthesize_text("Warming up the voice.")
    startup_s = time.perf_counter() - start

    records = benchmark_questions(args.n)
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        synthesize_records(records, out_dir, progress=False)
        elapsed = time.perf_counter() - start
        audio_s = sum(f.stat().st_size - 44 for f in Path(out_dir, "audio").glob("*.wav")) / 32_000

    rate = len(records) / elapsed
    end_to_end = len(records) / (elapsed + startup_s)
    print(f"voice load: {load_s:.2f} s, start-up with the first call: {startup_s:.2f} s")
    print(f"synthesised {len(records)} questions ({audio_s:.1f} s of audio) in {elapsed:.2f} s")
    print(f"{rate:.2f} questions/s, real-time factor {elapsed / audio_s:.3f}")
    print(json.dumps({"questions_per_s": round(rate, 2), "end_to_end_questions_per_s": round(end_to_end, 2),
                      "startup_s": round(startup_s, 2), "target": TARGET_QUESTIONS_PER_S,
                      "ok": rate >= TARGET_QUESTIONS_PER_S}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
