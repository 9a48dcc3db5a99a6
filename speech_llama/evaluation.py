"""Batched greedy spoken-QA evaluation (T2T, S2T, the ASR cascade, read-back).

Table 2 protocol: the same records are asked as text (T2T), as audio (S2T), or as audio
transcribed by a Whisper ASR model and then asked as text (cascade). Scored with the
`spoken_qa_accuracy` evaluate module. `readback` asks the model to repeat what was said and
scores the word error rate against the record's question text (does the speech path carry words?).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluate_metrics import load_metric

from .audio import SAMPLE_RATE, read_audio
from .batching import continuous_greedy_answers
from .files import atomic_write_json, write_jsonl
from .build import DTYPES
from .collate import sorted_index_batches
from .generate import load_model
from .prompts import TRANSCRIPT_INSTRUCTION
from .records import Locator, load_located_records
from .remote_code import load_processor
from .statistics import bootstrap_interval
from .text import normalized

TASKS = ("t2t", "s2t", "cascade", "readback")
LISTENING_TASKS = ("s2t", "cascade", "readback")


@dataclass
class EvalItem:
    question: str
    answers: list[str]
    audio: np.ndarray | None


def eval_items(records, task: str, locate: Locator | None = None, checks=()) -> list[EvalItem]:
    """Records → items; audio decoded (16 kHz mono) only for the tasks that listen, and each clip
    passed through `checks` (callables `(clip, where)` that raise naming `where`: file, line, column)
    — all before any answer is generated."""
    needs_audio = task in LISTENING_TASKS
    items = []
    for row, record in enumerate(records):
        audio = None
        if needs_audio:
            where = locate(row, "audio") if locate is not None else f"row {row}, column 'audio'"
            if record.get("audio") is None:
                raise ValueError(f"{where}: task {task} needs audio for every record")
            audio = read_audio(record["audio"], where=where)
            for check in checks:
                check(audio, where)
        items.append(EvalItem(record["question"], list(record.get("answers") or []), audio))
    return items


def length_sorted_batches(items: list[EvalItem], batch_size: int, by_audio: bool) -> list[list[int]]:
    """Index batches of items of similar question (or clip) length."""
    return sorted_index_batches([len(item.audio) if by_audio else len(item.question) for item in items], batch_size)


class WhisperTranscriber:
    """Batched Whisper ASR for the cascade baseline (any Whisper checkpoint folder or Hub id)."""

    def __init__(self, asr_model: str | Path, trust_remote_code: bool = False):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(asr_model, trust_remote_code=trust_remote_code)
        self.model = WhisperForConditionalGeneration.from_pretrained(asr_model).eval()

    def check(self, clip: np.ndarray, where: str) -> None:
        """Whisper hears one 30 s window: a longer clip would be cut silently, so it is refused."""
        limit = self.processor.feature_extractor.n_samples
        if len(clip) > limit:
            raise ValueError(f"{where}: audio is {len(clip) / SAMPLE_RATE:.1f} s long; the ASR model hears at most "
                             f"{limit / SAMPLE_RATE:.0f} s (it would cut the rest)")

    @torch.no_grad()
    def __call__(self, clips: list[np.ndarray]) -> list[str]:
        features = self.processor.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        ids = self.model.generate(features.to(self.model.device), max_new_tokens=128)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def default_asr_model() -> Path:
    """Offline default: the converted Whisper tiny.en (pass --asr for a Hub id when online)."""
    from .offline.ctranslate2_whisper import whisper_tiny_en_dir

    return whisper_tiny_en_dir()


def run_predictions(model, processor, items, task, batch_size, max_new_tokens, transcriber=None, progress=True,
                    description: str | None = None):
    """Predictions (and cascade transcripts) in the items' order.

    Answers are decoded with continuous batching (`speech_llama.batching`): up to `batch_size`
    rows at once, a finished row's slot refilled by the next question in length order.
    """
    transcripts: list[str | None] = [None] * len(items)
    batches = length_sorted_batches(items, batch_size, by_audio=task != "t2t")
    order = [index for batch in batches for index in batch]
    if task == "cascade":
        for batch in tqdm(batches, desc="transcribe", disable=not progress):
            for index, text in zip(batch, transcriber([items[i].audio for i in batch])):
                transcripts[index] = text
    listening = [None] * len(items)
    asked = {"t2t": [item.question for item in items], "s2t": listening, "readback": listening, "cascade": transcripts}[task]
    questions = [asked[index] for index in order]
    audios = [items[index].audio for index in order] if task in ("s2t", "readback") else None
    answers = continuous_greedy_answers(model, processor, questions, audios, batch_size, max_new_tokens,
                                        progress=progress, description=description or f"eval {task}",
                                        instruction=TRANSCRIPT_INSTRUCTION if task == "readback" else None)
    predictions: list[str | None] = [None] * len(items)
    for index, answer in zip(order, answers):
        predictions[index] = answer
    return predictions, transcripts


def evaluate_model(
    model_dir: str | Path,
    data: str,
    task: str,
    out_dir: str | Path,
    batch_size: int = 8,
    max_samples: int | None = None,
    max_new_tokens: int = 64,
    split: str = "test",
    asr_model: str | Path | None = None,
    progress: bool = True,
    trust_remote_code: bool | None = None,
    dtype: str = "float32",
    speech_instruction: str | None = None,
) -> dict:
    """Run one task over a QA set; writes predictions.jsonl + metrics.json and returns the metrics.

    `dtype`: the weights' precision ("float32", "bfloat16", "float16"); it is recorded in metrics.json.
    `speech_instruction`: replaces the folder's S2T instruction (`processor.speech_instruction`;
    "" for the clip alone); the one used is recorded in metrics.json for S2T.

    Every row is read and every clip checked (file, line, column named) before the weights load."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    records, locate = load_located_records(data, split=split, max_samples=max_samples, require_audio=task != "t2t",
                                           require_answers=task != "readback")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); build one with `speech-llama build`")
    processor = load_processor(model_dir, trust_remote_code)
    if speech_instruction is not None:
        processor.speech_instruction = speech_instruction
    asr_model = (asr_model or default_asr_model()) if task == "cascade" else None
    transcriber = WhisperTranscriber(asr_model, bool(trust_remote_code)) if asr_model is not None else None
    checks = [processor.check_audio] + ([transcriber.check] if transcriber is not None else [])
    items = eval_items(records, task, locate, checks)
    model, processor = load_model(model_dir, dtype=dtype, processor=processor)
    started = time.perf_counter()
    predictions, transcripts = run_predictions(model, processor, items, task, batch_size, max_new_tokens, transcriber, progress)
    elapsed = time.perf_counter() - started
    if task == "readback":
        scored = readback_scores(predictions, [item.question for item in items])
    else:
        scored = load_metric("spoken_qa_accuracy").compute(
            predictions=predictions, references=[item.answers for item in items], return_hits=True
        )
    interval = bootstrap_interval(scored["hits"])
    metrics = {
        "task": task,
        "accuracy": scored["accuracy"],
        "accuracy_ci95": [interval["low"], interval["high"]],
        **({"wer": scored["wer"]} if task == "readback" else {}),
        "n": len(items),
        "samples_per_s": len(items) / elapsed if elapsed > 0 else math.inf,
        "model": str(model_dir),
        "data": str(data),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        **({"speech_instruction": processor.speech_instruction} if task == "s2t" else {}),
        **({"asr": str(asr_model)} if task == "cascade" else {}),
    }
    rows = []
    for item, prediction, transcript, hit in zip(items, predictions, transcripts, scored["hits"]):
        row = {"question": item.question, "prediction": prediction, "answers": item.answers, "correct": bool(hit)}
        if transcript is not None:
            row["transcript"] = transcript
        rows.append(row)
    write_results(Path(out_dir), rows, metrics)
    return metrics


def readback_scores(predictions: list[str], spoken: list[str]) -> dict:
    """Read-back: word error rate of what the model repeated against what was said (lowercased words,
    punctuation dropped); `accuracy` is the share of clips repeated exactly, `hits` per clip."""
    import jiwer

    references = [normalized(text) for text in spoken]
    hypotheses = [normalized(text) for text in predictions]
    hits = [reference == hypothesis for reference, hypothesis in zip(references, hypotheses)]
    wer = jiwer.wer(references, [hypothesis or "<empty>" for hypothesis in hypotheses])
    return {"wer": float(wer), "accuracy": sum(hits) / max(len(hits), 1), "hits": hits}


def write_results(out_dir: Path, rows: list[dict], metrics: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "predictions.jsonl", rows)
    atomic_write_json(out_dir / "metrics.json", metrics)
