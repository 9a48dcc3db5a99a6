"""The `offline-mini-aligned` preset: offline-mini whose adaptor understands speech, built once and cached.

Stages, each cached under ``$SPEECH_LLAMA_CACHE/offline-mini-aligned-v8`` and resumable after
kill -9: the speech corpus (`speech-llama corpus`), CTC alignment of the adaptor on its cached
encoder states (`alignment.training`), DiVA-style distillation from the same LLM reading the
transcripts (`alignment.distillation`), the exported model folder. LLM and encoder stay frozen
throughout, so the preset's text ability is the base model's.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from speech_llama.files import atomic_write_json
from speech_llama.presets import ALIGNED_BASE_PRESET
from alignment.training import AlignmentSettings, ctc_word_error_rate, load_split, train_alignment
from alignment.distillation import DistillationSettings, distill, teacher_responses

# The cache folder's name: a new version whenever the recipe or the corpus changes, so a cached build is
# never reused for another recipe (each version's recipe and figures: docs/experiments.md).
ALIGNED_NAME = "offline-mini-aligned-v8"
ALIGNED_ADAPTOR = {"adaptor_type": "ctc_embedding_mixture"}


@dataclass
class AlignedRecipe:
    alignment: AlignmentSettings = field(default_factory=AlignmentSettings)  # 3 000 steps: chosen on dev CTC WER
    # Off by default: it did not move held-out S2T (docs/experiments.md, distillation).
    distillation: DistillationSettings | None = None
    distillation_clips: int = 1000  # training clips whose transcripts the teacher answers
    # The frozen encoder's preset: "offline-mini" (Whisper tiny.en) or "offline-mini-base" (Whisper base).
    base_preset: str = ALIGNED_BASE_PRESET
    # The text after the clip in S2T prompts (saved as `processor.speech_instruction`); "" = the clip alone.
    speech_instruction: str = ""


def aligned_cache_dir() -> Path:
    from speech_llama.offline.cache import cache_dir

    return cache_dir() / ALIGNED_NAME


def read_blanks_as_space(model, tokenizer) -> None:
    """Start `blank_embedding` at the embedding of " ": a blank frame then reads as a space.

    Zeros read far worse: with the transcript's own token embeddings in the speech slot, a zero
    vector between them costs SmolLM2 most of its answers where a " " costs few, and on dev
    read-back the space is best (docs/experiments.md has the figures).
    """
    space = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(space) != 1:
        raise ValueError(f"the tokenizer spells ' ' as {len(space)} tokens; the blank needs one")
    with torch.no_grad():
        model.adaptor.blank_embedding.copy_(model.get_input_embeddings().weight[space[0]])


def build_aligned_offline_mini(work_dir: Path | None = None, corpus_dir: Path | None = None,
                               recipe: AlignedRecipe | None = None, progress: bool = True) -> Path:
    """offline-mini with an aligned embedding-mixture adaptor → `work_dir/model` (returned at once when built)."""
    from modeling_speech_llama import SpeechLlamaForCausalLM
    from alignment.corpus import build_corpus, default_corpus_dir
    from speech_llama.presets import offline_mini_dir
    from speech_llama.remote_code import load_processor

    work_dir = work_dir or aligned_cache_dir()
    final = work_dir / "model"
    if (final / "model.safetensors").is_file():
        return final
    recipe = recipe or AlignedRecipe()
    base = offline_mini_dir(recipe.base_preset)
    corpus_dir = corpus_dir or default_corpus_dir(recipe.base_preset)
    if not (corpus_dir / "corpus.json").is_file():
        build_corpus(corpus_dir, base, progress=progress)
    processor = load_processor(base)
    processor.speech_instruction = recipe.speech_instruction
    model = SpeechLlamaForCausalLM.from_pretrained(base, **ALIGNED_ADAPTOR).eval()
    read_blanks_as_space(model, processor.tokenizer)
    tokenizer = processor.tokenizer
    train = load_split(corpus_dir / "train", tokenizer)
    dev = load_split(corpus_dir / "dev", tokenizer)
    summary = {"alignment": train_alignment(model, tokenizer, train, dev, work_dir, recipe.alignment, progress=progress)}
    summary["aligned_dev_ctc_wer"] = summary["dev_ctc_wer"] = round(ctc_word_error_rate(model, tokenizer, dev)[0], 4)
    if recipe.distillation is not None:
        clips = random.Random(recipe.distillation.seed).sample(train, min(recipe.distillation_clips, len(train)))
        responses = teacher_responses(model, processor, clips, work_dir, recipe.distillation.max_response_tokens, progress)
        summary["distillation"] = distill(model, processor, clips, responses, work_dir, recipe.distillation, progress)
        summary["dev_ctc_wer"] = round(ctc_word_error_rate(model, tokenizer, dev)[0], 4)
    summary["recipe"] = asdict(recipe)
    # Reported, never used to choose settings: the held-out speaker's clips.
    heldout = load_split(corpus_dir / "heldout", tokenizer)
    summary["heldout_ctc_wer"] = round(ctc_word_error_rate(model, tokenizer, heldout)[0], 4)
    summary["corpus"] = json.loads((corpus_dir / "corpus.json").read_text())["splits"]
    atomic_write_json(work_dir / "alignment.json", summary)
    return export_aligned(model, processor, final, summary)


def export_aligned(model, processor, out_dir: Path, summary: dict, figures: dict | None = None) -> Path:
    """Save the aligned model with a card naming its recipe, its base preset's encoder and licences, and
    `figures` measured after the build (`{"what": "value"}`, e.g. held-out S2T and the cascade)."""
    from speech_llama.build import save_model_folder
    from speech_llama.presets import offline_build_info

    recipe = summary.get("recipe", {})
    alignment = recipe.get("alignment", {})
    distillation = recipe.get("distillation")
    train = summary.get("corpus", {}).get("train", {})
    adaptor = (f"trained on speech: CTC over the LLM vocabulary for {alignment.get('steps', '?')} steps of "
               f"{alignment.get('batch_size', '?')} on {train.get('clips', '?')} synthetic clips ({train.get('hours', '?')} h, "
               "14 offline TTS voices, speaker slt held out); output: embedding mixture over the LLM's token "
               "embeddings (LegoSLM-style) with a learned CTC blank, blank and repeated frames masked out of the "
               f"LLM's attention. Measured at build: best-path CTC WER {summary.get('dev_ctc_wer')} on the dev clips, "
               f"{summary.get('heldout_ctc_wer')} on the held-out speaker. LLM and Whisper encoder frozen: text ability "
               "is the base model's.")
    notes = []
    if distillation:
        notes.append(f"Then {distillation['steps']} steps of DiVA-style distillation (KL to the LLM reading the transcript, "
                     f"+ {distillation['ctc_weight']} × CTC) on {recipe.get('distillation_clips')} training clips.")
    instruction = recipe.get("speech_instruction", processor.speech_instruction)
    notes.append(f"S2T prompts: the clip followed by {instruction!r}." if instruction else
                 "S2T prompts: the clip alone, no instruction after it (`processor.speech_instruction` is empty).")
    notes += [f"Measured: {what}: {value}" for what, value in (figures or {}).items()]
    info = offline_build_info(recipe.get("base_preset", "offline-mini"), "offline-mini-aligned", notes, adaptor)
    model.requires_grad_(False)
    return save_model_folder(model, processor, out_dir, info)


def answer_token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 of two answers under the project's normalisation (1.0 when both are empty)."""
    from collections import Counter

    from speech_llama.text import normalized

    predicted, wanted = normalized(prediction).split(), normalized(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def dev_answer_agreement(model, processor, split_dir: Path, instructions: dict[str, str], batch_size: int = 16,
                         max_new_tokens: int = 64, progress: bool = True) -> dict[str, float]:
    """The dev criterion for S2T prompt settings: mean token F1 of the S2T answers to the dev clips
    against the same LLM's T2T answers to their transcripts, once per named speech instruction.

    Dev clips are read by training voices and carry no answers, so a setting is chosen without the
    held-out speaker's questions; the LLM's own text answer is what a perfect speech path would give.
    """
    from speech_llama.audio import read_audio
    from speech_llama.evaluation import EvalItem, run_predictions
    from speech_llama.files import read_jsonl_numbered

    data = Path(split_dir) / "data.jsonl"
    items = []
    for line, row in read_jsonl_numbered(data):
        where = f"{data}, line {line}, column 'audio'"
        if not row.get("audio"):
            raise ValueError(f"{where}: the dev criterion needs each clip's audio")
        clip = read_audio(str(data.parent / row["audio"]), where=where)
        processor.check_audio(clip, where)
        items.append(EvalItem(row["question"], [], clip))
    text_answers, _ = run_predictions(model, processor, items, "t2t", batch_size, max_new_tokens, progress=progress,
                                      description="dev t2t")
    saved = processor.speech_instruction
    agreement = {}
    try:
        for name, instruction in instructions.items():
            processor.speech_instruction = instruction
            spoken, _ = run_predictions(model, processor, items, "s2t", batch_size, max_new_tokens, progress=progress,
                                        description=f"dev s2t ({name})")
            agreement[name] = round(sum(map(answer_token_f1, spoken, text_answers)) / len(items), 4)
    finally:
        processor.speech_instruction = saved
    return agreement


__all__ = ["ALIGNED_ADAPTOR", "ALIGNED_NAME", "AlignedRecipe", "aligned_cache_dir", "answer_token_f1",
           "build_aligned_offline_mini", "dev_answer_agreement",
           "export_aligned", "read_blanks_as_space"]
