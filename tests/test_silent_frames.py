"""`adaptor_type="ctc_embedding_mixture"`: silent speech frames leave the LLM's sequence (no attention, no position)."""

from __future__ import annotations

import pytest
import torch
from helpers import noise_clip
from transformers import AutoModelForCausalLM

from modeling_speech_llama import SpeechLlamaForCausalLM
from speech_llama.batching import continuous_greedy_answers
from speech_llama.build import BuildInfo, save_model_folder
from speech_llama.prompts import qa_inputs, qa_prompt

MIXTURE = {"adaptor_type": "ctc_embedding_mixture"}


def every_third_frame_speaks(adaptor) -> None:
    """Make frames 0, 3, 6, … non-silent and the rest silent, whatever the adaptor's logits are."""
    def silent_frames(logits):
        silent = torch.ones(logits.shape[:2], dtype=torch.bool)
        silent[:, ::3] = False
        return silent

    adaptor.silent_frames = silent_frames


def masked_model(model_dir, **config):
    model = SpeechLlamaForCausalLM.from_pretrained(model_dir, **MIXTURE, **config).eval()
    every_third_frame_speaks(model.adaptor)
    return model


def compacted_embeddings(model, inputs, row: int = 0) -> torch.Tensor:
    """(1, L', d) the row's inputs with its silent frames removed: what the masked model should read."""
    embeds, _, placeholder, silent = model.merge_speech_embeddings(
        inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"])
    keep = inputs["attention_mask"][row].bool() & ~silent[row]
    return embeds[row, keep][None]


def test_linear_adaptor_masks_nothing(tiny):
    model, processor = tiny
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.3)], sampling_rate=16000)
    with torch.no_grad():
        output = model(**inputs)
        frames = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
    assert output.attention_mask is None
    with pytest.raises(ValueError, match="speech_silent_frames given, but adaptor_type='linear' marks no silent frames"):
        model(input_ids=inputs["input_ids"], speech_embeds=frames,
              speech_silent_frames=torch.zeros(frames.shape[0], dtype=torch.bool))


def test_forward_reads_the_sequence_without_its_silent_frames(tiny, tiny_model_dir):
    _, processor = tiny
    model = masked_model(tiny_model_dir)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.3)], sampling_rate=16000)
    with torch.no_grad():
        output = model(**inputs)
        _, _, placeholder, silent = model.merge_speech_embeddings(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"])
        reference = model.language_model(inputs_embeds=compacted_embeddings(model, inputs)).logits
    assert 0 < int(silent.sum()) < int(placeholder.sum())
    assert torch.equal(output.attention_mask[0].bool(), ~silent[0])
    kept_logits = model._mask_speech_logit(reference)[0]
    torch.testing.assert_close(output.logits[0, ~silent[0]], kept_logits, atol=1e-5, rtol=1e-4)


def test_masked_frames_change_the_answer_logits(tiny, tiny_model_dir):
    _, processor = tiny
    model = masked_model(tiny_model_dir)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.3)], sampling_rate=16000)
    with torch.no_grad():
        masked_output = model(**inputs)
        embeds, _, _, _ = model.merge_speech_embeddings(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"])
        attending_all = model._mask_speech_logit(
            model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]).logits)
    assert (masked_output.logits[0, -1] - attending_all[0, -1]).abs().max() > 1e-3


def test_masking_needs_a_2d_attention_mask(tiny, tiny_model_dir):
    _, processor = tiny
    model = masked_model(tiny_model_dir)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.3)], sampling_rate=16000)
    length = inputs["input_ids"].shape[1]
    with pytest.raises(ValueError, match="masks silent frames: it needs a 2-D attention_mask"):
        model(**{**inputs, "attention_mask": torch.ones(1, 1, length, length)})


def test_generate_and_continuous_batching_decode_as_the_compacted_prompt(tiny, tiny_model_dir):
    _, processor = tiny
    model = masked_model(tiny_model_dir)
    audios = [noise_clip(1.3, seed=1), noise_clip(0.7, seed=2)]
    inputs = qa_inputs(processor, [None, None], audios)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        for row in range(2):
            embeds = compacted_embeddings(model, inputs, row)
            expected = model.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                                     max_new_tokens=6, do_sample=False, suppress_tokens=[model.config.speech_token_id])
            assert generated[row].tolist()[: expected.shape[1]] == expected[0].tolist(), row
    answers = continuous_greedy_answers(model, processor, [None, None], audios, batch_size=2, max_new_tokens=6)
    assert answers == [text.strip() for text in processor.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def test_the_setting_round_trips_as_remote_code(tiny, tiny_model_dir, tmp_path):
    _, processor = tiny
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **MIXTURE).eval()
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.0, seed=3)], sampling_rate=16000)
    with torch.no_grad():  # point the blank at frame 2, so the saved adaptor itself marks a silent frame
        states = model.encoder(inputs["input_features"], inputs["input_features_mask"])
        model.adaptor.blank_query.copy_(model.adaptor.project(states)[0, 2])
    folder = save_model_folder(model, processor, tmp_path / "masked", BuildInfo(llm="tiny", encoder="tiny"))
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(loaded).__module__
    assert loaded.config.adaptor_type == "ctc_embedding_mixture"
    with torch.no_grad():
        expected, got = model(**inputs), loaded(**inputs)
    assert (expected.attention_mask == 0).any()
    assert torch.equal(got.attention_mask, expected.attention_mask)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
