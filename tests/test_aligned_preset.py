"""The `offline-mini-aligned` build (alignment/preset.py) end to end on a tiny cached corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import speech_llama.presets as presets
from speech_llama.files import write_jsonl
from speech_llama.generate import load_model
from alignment import preset as aligned_preset
from alignment.preset import (ALIGNED_ADAPTOR, AlignedRecipe, answer_token_f1, build_aligned_offline_mini,
                                     dev_answer_agreement, read_blanks_as_space)
from alignment.training import AlignmentSettings
from alignment.distillation import DistillationSettings

TEXTS = ["Who wrote Hamlet?", "Name a red fruit.", "Birds fly south.", "The sun is hot.", "A dog ran home.",
         "Bees make honey."]


def tiny_corpus(root, width: int):
    """train / dev / heldout splits of cached encoder states (random: the build's plumbing is under test)."""
    rng = np.random.default_rng(0)
    splits = {"train": TEXTS, "dev": TEXTS[:2], "heldout": TEXTS[2:4]}
    for split, texts in splits.items():
        (root / split / "features").mkdir(parents=True)
        rows = []
        for index, text in enumerate(texts):
            np.save(root / split / "features" / f"{index}.npy", rng.standard_normal((60, width)).astype(np.float16))
            rows.append({"question": text, "features": f"features/{index}.npy"})
        write_jsonl(root / split / "data.jsonl", rows)
    (root / "corpus.json").write_text(json.dumps({"splits": {s: {"clips": len(t)} for s, t in splits.items()}}))
    return root


RECIPE = AlignedRecipe(
    alignment=AlignmentSettings(steps=3, batch_size=2, learning_rate=1e-2, warmup_steps=1, checkpoint_every=1,
                                eval_every=100, bf16=False),
    distillation=DistillationSettings(steps=2, batch_size=2, checkpoint_every=1, max_response_tokens=4, bf16=False),
    distillation_clips=4,
)


def test_blank_frames_start_as_the_space_embedding(tiny):
    from modeling_speech_llama import SpeechLlamaForCausalLM

    model, processor = tiny
    mixture = SpeechLlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), **ALIGNED_ADAPTOR}))
    read_blanks_as_space(mixture, processor.tokenizer)
    space = processor.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    assert torch.equal(mixture.adaptor.blank_embedding, mixture.get_input_embeddings().weight[space])


def test_build_aligns_distils_exports_and_reuses(tiny, tiny_model_dir, tmp_path, monkeypatch):
    model, _ = tiny
    corpus = tiny_corpus(tmp_path / "corpus", model.config.encoder_config.d_model)
    monkeypatch.setattr(presets, "offline_mini_dir", lambda preset="offline-mini": tiny_model_dir)
    folder = build_aligned_offline_mini(tmp_path / "work", corpus, RECIPE, progress=False)

    built, built_processor = load_model(folder)
    assert built_processor.speech_instruction == RECIPE.speech_instruction == ""  # the clip alone (dev criterion)
    for key, value in ALIGNED_ADAPTOR.items():
        assert getattr(built.config, key) == value, key
    summary = json.loads((tmp_path / "work" / "alignment.json").read_text())
    assert summary["recipe"]["alignment"]["steps"] == 3 and summary["recipe"]["distillation"]["steps"] == 2
    assert {"aligned_dev_ctc_wer", "dev_ctc_wer", "heldout_ctc_wer"} <= summary.keys()
    assert (tmp_path / "work" / "teacher-responses.jsonl").is_file()
    base, _ = load_model(tiny_model_dir)
    assert all(torch.equal(built.language_model.state_dict()[k], v) for k, v in base.language_model.state_dict().items())
    readme = (folder / "README.md").read_text()
    assert "DiVA-style distillation" in readme and "held-out speaker" in readme and "the clip alone" in readme
    assert "- Adaptor: trained on speech: CTC over the LLM vocabulary for 3 steps" in readme
    assert "not been trained on speech" not in readme

    # A second build returns the cached folder without training.
    monkeypatch.setattr(aligned_preset, "train_alignment", lambda *a, **k: pytest.fail("trained again"))
    assert build_aligned_offline_mini(tmp_path / "work", corpus, RECIPE, progress=False) == folder


def test_corpus_command_caches_the_corpus_the_aligned_build_reads():
    import argparse

    from alignment.corpus import default_corpus_dir
    from apps.corpus import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert default_corpus_dir(parser.parse_args([]).preset) == default_corpus_dir(AlignedRecipe().base_preset)


def test_answer_token_f1_counts_shared_words_under_the_project_normalisation():
    assert answer_token_f1("Paris, of course.", "paris of course") == 1.0
    assert answer_token_f1("the capital is Paris", "Paris") == pytest.approx(2 * (1 / 4) * 1 / (1 / 4 + 1))
    assert answer_token_f1("Rome", "Paris") == 0.0
    assert answer_token_f1("", "") == 1.0 and answer_token_f1("", "Paris") == 0.0


def dev_split(root, texts):
    from speech_llama.audio import write_wav

    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for index, text in enumerate(texts):
        write_wav(root / "audio" / f"{index}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32))
        rows.append({"question": text, "audio": f"audio/{index}.wav"})
    write_jsonl(root / "data.jsonl", rows)
    return root


def test_dev_agreement_scores_each_instruction_against_the_text_answers(tiny, tmp_path):
    from speech_llama.evaluation import EvalItem, run_predictions

    model, processor = tiny
    split = dev_split(tmp_path / "dev", TEXTS[:3])
    saved = processor.speech_instruction
    agreement = dev_answer_agreement(model, processor, split, {"plain": "", "asked": "Answer it."}, batch_size=2,
                                     max_new_tokens=4, progress=False)
    assert processor.speech_instruction == saved  # the processor is left as it was
    from speech_llama.audio import read_audio

    items = [EvalItem(text, [], read_audio(str(split / "audio" / f"{i}.wav"), where="test"))
             for i, text in enumerate(TEXTS[:3])]
    text_answers, _ = run_predictions(model, processor, items, "t2t", 2, 4, progress=False)
    processor.speech_instruction = "Answer it."
    try:
        spoken, _ = run_predictions(model, processor, items, "s2t", 2, 4, progress=False)
    finally:
        processor.speech_instruction = saved
    expected = sum(map(answer_token_f1, spoken, text_answers)) / 3
    assert set(agreement) == {"plain", "asked"} and agreement["asked"] == pytest.approx(expected, abs=1e-4)


def test_dev_agreement_names_a_row_without_audio(tiny, tmp_path):
    model, processor = tiny
    (tmp_path / "dev").mkdir()
    write_jsonl(tmp_path / "dev" / "data.jsonl", [{"question": "Who?", "features": "features/0.npy"}])
    with pytest.raises(ValueError, match=r"data.jsonl, line 1, column 'audio'"):
        dev_answer_agreement(model, processor, tmp_path / "dev", {"plain": ""}, progress=False)
