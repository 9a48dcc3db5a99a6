"""The offline-mini preset on real weights: text QA works, speech input runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from speech_llama.generate import generate_answers
from speech_llama.prompts import qa_prompt
from speech_llama.synthesize import synthesize_text

pytestmark = pytest.mark.real_weights


def test_offline_mini_has_the_documented_shape(offline_mini_dir, offline_mini):
    model, processor = offline_mini
    config = json.loads((offline_mini_dir / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 30 and config["text_config"]["hidden_size"] == 576
    assert config["encoder_config"]["d_model"] == 384
    assert model.adaptor.linear_1.in_features == 1920 and model.adaptor.linear_1.out_features == 2048
    assert model.adaptor.linear_2.out_features == 576
    card = (offline_mini_dir / "README.md").read_text()
    assert "Apache-2.0" in card and "MIT" in card
    assert "- Adaptor: freshly initialised — this model has not been trained on speech yet" in card


def test_offline_mini_answers_capital_of_france_from_text(offline_mini):
    model, processor = offline_mini
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[prompt], sampling_rate=16000)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert "Paris" in answer


def test_offline_mini_speech_generate_is_deterministic(offline_mini):
    model, processor = offline_mini
    clip = synthesize_text("What is the capital of France?")
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[clip], sampling_rate=16000)
    expected_tokens = processor.num_speech_tokens(len(clip))
    assert int((inputs["input_ids"] == processor.speech_token_id).sum()) == expected_tokens
    assert inputs["input_features"].shape[:2] == (1, 80)
    with torch.no_grad():
        speech_embeds = model(**inputs).speech_embeds
    assert speech_embeds.shape == (expected_tokens, 576)
    first = generate_answers(model, processor, [None], [clip], max_new_tokens=12)
    second = generate_answers(model, processor, [None], [clip], max_new_tokens=12)
    assert first == second and isinstance(first[0], str)
