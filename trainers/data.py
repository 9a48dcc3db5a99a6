"""Records → training batches: dataset loading, the (mixed) collator and its epoch callback.

Records follow the record contract of docs/model.md (`speech_llama.records.load_records`: question, answers,
response, audio). Batches come from the shared `QACollator` (prompt in LLaMA-Omni's chat format,
loss on the response only, left padding, per-clip audio features). `mix_text_ratio` gives a share
of the training records as text (T2T) instead of speech: decided per record, so one batch may hold
both kinds of row — the model merges speech only where a row has `<speech>` placeholders.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import datasets
from transformers import TrainerCallback

from speech_llama.collate import QACollator, check_clip_lengths, record_location
from speech_llama.records import load_located_records

from .arguments import DataArguments

ROW_COLUMN = "_row"


def needs_audio(data_args: DataArguments) -> bool:
    """Speech prompts need audio on every record unless every record is given as text."""
    return data_args.input == "speech" and data_args.mix_text_ratio < 1


def load_split(source: str, split: str, max_samples: int | None, require_audio: bool,
               require_targets: bool = True, processor=None) -> datasets.Dataset:
    """Contract records with a `_row` column (0-based index), which errors and T2T mixing use.

    `require_targets=False` accepts records without answers or responses (CTC alignment trains on
    the spoken question itself). With `processor` (and audio required) every clip's length is
    checked now, naming file, line and column, instead of failing in the collator mid-run."""
    records, locate = load_located_records(source, split=split, max_samples=max_samples, require_audio=require_audio,
                                           require_answers=require_targets)
    if processor is not None and require_audio:
        check_clip_lengths(records, locate, processor)
    return records.add_column(ROW_COLUMN, list(range(len(records))))


def load_datasets(data_args: DataArguments, require_targets: bool = True,
                  processor=None) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train, eval or None) records as the run's data arguments describe them (clips checked
    against `processor` when given)."""
    audio = needs_audio(data_args)
    train = load_split(data_args.train_data, data_args.train_split, data_args.max_train_samples, audio, require_targets,
                       processor)
    evaluation = None
    if data_args.eval_data:
        # Evaluation never mixes: it measures the configured input (S2T for speech).
        evaluation = load_split(data_args.eval_data, data_args.eval_split, data_args.max_eval_samples,
                                data_args.input == "speech", processor=processor)
    return train, evaluation


@dataclass
class MixedQACollator(QACollator):
    """`QACollator` (same prompts, labels, padding) giving a seeded share of records as text (T2T).

    Args (beyond `QACollator`'s):
        mix_text_ratio: probability that a record is given as text; 0 = all speech (or all text
            with `input="text"`), 1 = all text.
        transcript_ratio: probability that a speech row is trained to repeat its question
            ("Repeat exactly what was said.") instead of answering it.
        seed: with the record's `_row` and the current `epoch`, fixes each choice, so a resumed
            run and every DDP rank see the same prompts; a record may switch between epochs.
        epoch: set by `MixEpochCallback` at each epoch start.
        source: the records' file or id, named in errors with the row and column.
    """

    mix_text_ratio: float = 0.0
    transcript_ratio: float = 0.0
    seed: int = 0
    epoch: int = 0
    source: str = "records"

    def __post_init__(self):
        super().__post_init__()
        for name in ("mix_text_ratio", "transcript_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def _where(self, record: dict[str, Any]) -> str:
        return record_location(self.source, record)

    def as_text(self, record: dict[str, Any]) -> bool:
        """Whether this record's prompt carries the question text (T2T) this epoch."""
        if self.input == "text" or self.mix_text_ratio >= 1:
            return True
        if self.mix_text_ratio <= 0:
            return False
        return self._draw(record, "text") < self.mix_text_ratio

    def transcript_task(self, record: dict[str, Any]) -> bool:
        """Whether this speech row is trained to repeat its question (ASR-style) this epoch."""
        if self.transcript_ratio <= 0 or self.as_text(record):
            return False
        return self._draw(record, "transcript") < self.transcript_ratio

    def _draw(self, record: dict[str, Any], purpose: str) -> float:
        """A uniform draw fixed by seed, epoch, row and purpose (independent per purpose)."""
        if ROW_COLUMN not in record:
            raise ValueError(f"per-record mixing needs the {ROW_COLUMN!r} column (trainers.data.load_split adds it)")
        # A string seed is hashed with SHA-512 by `random`: stable across processes and runs.
        return random.Random(f"{self.seed}:{self.epoch}:{record[ROW_COLUMN]}:{purpose}").random()


class MixEpochCallback(TrainerCallback):
    """Tells a `MixedQACollator` which epoch is starting, so its T2T draws change per epoch."""

    def __init__(self, collator: MixedQACollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def build_collators(processor, data_args: DataArguments, seed: int) -> tuple[MixedQACollator, MixedQACollator]:
    """(training collator with T2T mixing, evaluation collator without it)."""
    train = MixedQACollator(processor, input=data_args.input, max_length=data_args.max_length,
                            mix_text_ratio=data_args.mix_text_ratio, transcript_ratio=data_args.transcript_ratio,
                            seed=seed, source=data_args.train_data)
    evaluation = MixedQACollator(processor, input=data_args.input, max_length=data_args.max_length,
                                 source=data_args.eval_data or "eval")
    return train, evaluation


__all__ = ["MixEpochCallback", "MixedQACollator", "ROW_COLUMN", "build_collators", "load_datasets", "load_split",
           "needs_audio"]
