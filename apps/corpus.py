"""`speech-llama corpus`: build (or finish) the cached speech corpus the aligned preset is aligned on."""

from __future__ import annotations

import argparse
from pathlib import Path

from alignment.corpus import (CORPUS_NAME, DEFAULT_CLIPS, LIST_HEARINGS, LIST_WORDS, LLM_QUESTIONS, LLM_SENTENCES,
                              build_corpus, default_corpus_dir)
from speech_llama.presets import ALIGNED_BASE_PRESET, offline_mini_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help=f"corpus folder (default $SPEECH_LLAMA_CACHE/{CORPUS_NAME} for offline-mini, {CORPUS_NAME}-base for offline-mini-base)")
    parser.add_argument("--model", type=Path, help="model folder whose frozen encoder is cached (default: --preset's)")
    parser.add_argument("--preset", default=ALIGNED_BASE_PRESET, choices=("offline-mini", "offline-mini-base"),
                        help=f"offline preset whose encoder is cached: offline-mini (Whisper tiny.en, {CORPUS_NAME}) or "
                             f"offline-mini-base (Whisper base, {CORPUS_NAME}-base); default {ALIGNED_BASE_PRESET}, "
                             "the one offline-mini-aligned is aligned on")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                        help=f"training clips of sentences (default {DEFAULT_CLIPS}); the word lists come on top")
    parser.add_argument("--llm-questions", type=int, default=LLM_QUESTIONS,
                        help=f"questions the base LLM writes over topics and question openers (default {LLM_QUESTIONS})")
    parser.add_argument("--llm-sentences", type=int, default=LLM_SENTENCES,
                        help=f"sentences the LLM writes, one per frequent word (default {LLM_SENTENCES})")
    parser.add_argument("--list-words", type=int, default=LIST_WORDS,
                        help=f"frequency-list words read in word lists, each in {LIST_HEARINGS} lists "
                             f"(default {LIST_WORDS}; 0: no lists)")
    parser.add_argument("--workers", type=int, default=2, help="synthesis + encoder processes (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict:
    if args.clips < 1 or args.workers < 1:
        raise ValueError("--clips and --workers must be at least 1")
    if args.list_words < 0:
        raise ValueError(f"--list-words must be 0 or more, got {args.list_words}")
    model_dir = args.model or offline_mini_dir(args.preset)
    manifest = build_corpus(args.out or default_corpus_dir(args.preset), model_dir, clips=args.clips,
                            llm_questions=args.llm_questions, llm_sentences=args.llm_sentences,
                            list_words=args.list_words, workers=args.workers, seed=args.seed, progress=not args.no_progress)
    print({name: split for name, split in manifest["splits"].items()}, manifest["coverage"]["word_coverage"])
    return manifest
