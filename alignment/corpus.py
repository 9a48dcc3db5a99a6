"""The speech corpus for aligning the adaptor, built once and cached (`speech-llama corpus`).

    DIR/texts/llm/chunk-*.json     the base LLM's sampled replies (resumable)
    DIR/train/  audio/*.wav  features/*.npy  data.jsonl    sentences, then word lists; many training voices, perturbed
    DIR/dev/    …                  texts held back from training, training voices (model selection)
    DIR/heldout/ …                 the held-out QA questions, read by the held-out voice only
    DIR/corpus.json                what was built: counts, hours, voices, coverage

Every stage skips what is already complete, and every file appears atomically, so a build killed
at any point (kill -9 included) continues where it stopped. The held-out speaker (`slt`) reads
the held-out questions and nothing else; no held-out question (normalised) is a training text.
"""

from __future__ import annotations

import random
from pathlib import Path

from alignment.clips import PlannedClip, encoder_dtype_name, make_clips, plain_clips, plan_clips
from alignment.coverage import coverage
from alignment.texts import corpus_texts, frequent_words, word_lists
from speech_llama.files import atomic_write_json, read_jsonl, write_jsonl
from speech_llama.offline.cache import cache_dir
from speech_llama.text import normalized
from speech_llama.tts import HELD_OUT_SPEAKER, HELD_OUT_VOICE, check_engine, check_sox, training_voices, voice_named

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TRAIN_PROMPTS = DATA_DIR / "train_questions.jsonl"
HELD_OUT_QA = (DATA_DIR / "general_knowledge_qa.jsonl", DATA_DIR / "demo_qa.jsonl")
DEFAULT_CLIPS = 10_000
DEV_TEXTS = 200
LIST_WORDS, LIST_HEARINGS, LIST_LENGTH = 6000, 8, 8
LLM_QUESTIONS, LLM_SENTENCES = 9000, 6000
# The cache folder's name: a new name whenever the texts, voices or encoder states change, so a
# cached build is never mixed with a new recipe (versions and their figures: docs/experiments.md).
CORPUS_NAME = "corpus-v4"


def default_corpus_dir(base_preset: str = "offline-mini") -> Path:
    """The cached corpus whose encoder states come from `base_preset`'s frozen encoder."""
    return cache_dir() / (CORPUS_NAME if base_preset == "offline-mini" else f"{CORPUS_NAME}-{base_preset.removeprefix('offline-mini-')}")


def held_out_records() -> list[dict]:
    """The held-out QA questions (general knowledge, then the demo set), duplicates dropped."""
    seen, records = set(), []
    for path in HELD_OUT_QA:
        for row in read_jsonl(path):
            key = normalized(row["question"])
            if key not in seen:
                seen.add(key)
                records.append({"question": row["question"], "answers": row.get("answers") or [row["answer"]]})
    return records


def build_corpus(out_dir: Path, model_dir: Path, *, clips: int = DEFAULT_CLIPS, llm_questions: int = LLM_QUESTIONS,
                 llm_sentences: int = LLM_SENTENCES, list_words: int = LIST_WORDS, workers: int = 2, seed: int = 0,
                 progress: bool = True) -> dict:
    """Build (or finish) the corpus in `out_dir`; returns the manifest written to corpus.json.

    Training clips: `clips` readings of the sentences, then word lists that put each of the
    `list_words` frequency-list words (the words the LLM's sentences are written around) in
    `LIST_HEARINGS` lists of `LIST_LENGTH`, one clip per list.
    """
    from speech_llama.remote_code import load_processor

    voices = training_voices(HELD_OUT_SPEAKER)
    for voice in [*voices, voice_named(HELD_OUT_VOICE)]:
        check_engine(voice)
    check_sox()
    tokenizer = load_processor(model_dir).tokenizer
    held_out = held_out_records()
    prompts = [row["question"] for row in read_jsonl(TRAIN_PROMPTS)]
    texts = corpus_texts(prompts, [row["question"] for row in held_out], out_dir / "texts" / "llm",
                         num_questions=llm_questions, num_sentences=llm_sentences, seed=seed, progress=progress)
    train_texts, dev_texts = _split_dev(texts, seed)
    train = plan_clips([text for _, text in train_texts], voices, clips, seed)
    lists = word_lists(frequent_words(list_words), tokenizer, hearings=LIST_HEARINGS,
                       per_list=LIST_LENGTH, seed=seed) if list_words else []
    train += plan_clips(lists, voices, len(lists), seed + 2, first_index=len(train))
    dev = plan_clips([text for _, text in dev_texts], voices, len(dev_texts), seed + 1)
    heldout = plain_clips([row["question"] for row in held_out], HELD_OUT_VOICE)
    source_of = dict((text, source) for source, text in texts) | {text: "wordlist" for text in lists}
    for name, planned, extra in (("heldout", heldout, held_out), ("dev", dev, None), ("train", train, None)):
        make_clips(out_dir / name, planned, model_dir, workers=workers, progress=progress, desc=f"corpus {name}")
        rows = [clip.record(**(extra[index] if extra else {"source": source_of[clip.text]}))
                for index, clip in enumerate(planned)]
        write_jsonl(out_dir / name / "data.jsonl", rows)
    manifest = _manifest(train, dev, heldout, out_dir, model_dir, seed, tokenizer)
    atomic_write_json(out_dir / "corpus.json", manifest)
    return manifest


def _split_dev(texts: list[tuple[str, str]], seed: int) -> tuple[list, list]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    dev = set(order[:DEV_TEXTS])
    return [t for i, t in enumerate(texts) if i not in dev], [t for i, t in enumerate(texts) if i in dev]


def _hours(split_dir: Path, clips: list[PlannedClip]) -> float:
    import soundfile

    return round(sum(soundfile.info(str(split_dir / clip.audio)).duration for clip in clips) / 3600, 3)


def _manifest(train, dev, heldout, out_dir: Path, model_dir: Path, seed: int, tokenizer) -> dict:
    voices = sorted({clip.voice for clip in train})
    return {
        "seed": seed,
        "encoder_from": str(model_dir),
        "encoder_dtype": encoder_dtype_name(),
        "held_out_speaker": HELD_OUT_SPEAKER,
        "held_out_voice": HELD_OUT_VOICE,
        "training_voices": voices,
        "splits": {
            name: {"clips": len(planned), "texts": len({clip.text for clip in planned}),
                   "hours": _hours(out_dir / name, planned)}
            for name, planned in (("train", train), ("dev", dev), ("heldout", heldout))
        },
        "coverage": coverage([clip.text for clip in train], [clip.text for clip in heldout], tokenizer),
    }
