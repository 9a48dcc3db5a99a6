"""DiVA-style distillation of the text-input LLM into the speech path (alignment/distillation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_speech_llama import SpeechLlamaForCausalLM
from speech_llama.generate import load_model
from alignment.training import CachedClip
from alignment.distillation import STATE_NAME, DistillationSettings, _pair, distill

TEXTS = ["Who wrote Hamlet?", "Name a red fruit.", "Birds fly south.", "The sun is hot."]


def clips(model) -> list[CachedClip]:
    rng = np.random.default_rng(0)
    width = model.config.encoder_config.d_model
    return [CachedClip(rng.standard_normal((40, width)).astype(np.float16), [], text) for text in TEXTS]


def test_pair_shares_the_response_and_expands_speech(tiny_model_dir):
    _, processor = load_model(tiny_model_dir)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_type="ctc_embedding_mixture")
    clip = clips(model)[0]
    text_ids, speech_ids, n = _pair(processor, clip, "William Shakespeare.", model.config.adaptor_downsample)
    assert n > 0 and text_ids[-n:] == speech_ids[-n:]
    assert speech_ids.count(model.config.speech_token_id) == 40 // model.config.adaptor_downsample
    assert model.config.speech_token_id not in text_ids


def test_distill_trains_only_the_adaptor_and_resumes(tiny_model_dir, tmp_path):
    _, processor = load_model(tiny_model_dir)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_type="ctc_embedding_mixture")
    llm_before = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    adaptor_before = model.adaptor.linear_1.weight.detach().clone()
    data = clips(model)
    for clip in data:
        clip.token_ids = processor.tokenizer(clip.text, add_special_tokens=False)["input_ids"]
    settings = DistillationSettings(steps=2, batch_size=2, checkpoint_every=1, bf16=False)
    distill(model, processor, data, ["An answer."] * len(data), tmp_path, settings, progress=False)
    assert not torch.equal(model.adaptor.linear_1.weight, adaptor_before)
    assert all(torch.equal(v, llm_before[k]) for k, v in model.language_model.state_dict().items())
    assert torch.load(tmp_path / STATE_NAME, weights_only=True)["step"] == 2
    # a finished run resumes at its last step: nothing more is trained
    weights = model.adaptor.linear_1.weight.detach().clone()
    distill(model, processor, data, ["An answer."] * len(data), tmp_path, settings, progress=False)
    assert torch.equal(model.adaptor.linear_1.weight, weights)


def test_student_logits_equal_the_models_forward_with_silent_frames_masked(tiny_model_dir):
    """The student path (`_response_logits` on adaptor frames) reads what `model(...)` reads, silent frames included."""
    from alignment.training import batch_tensors
    from alignment.distillation import _response_logits

    _, processor = load_model(tiny_model_dir)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_type="ctc_embedding_mixture").eval()
    every_other = lambda logits: torch.arange(logits.shape[1]).expand(logits.shape[:2]) % 2 == 1  # noqa: E731
    model.adaptor.silent_frames = every_other
    data = clips(model)[:2]
    downsample = model.config.adaptor_downsample
    pairs = [_pair(processor, clip, "An answer.", downsample) for clip in data]
    rows, lengths = [speech for _, speech, _ in pairs], [n for _, _, n in pairs]
    states, counts, _, _ = batch_tensors(data, downsample)
    with torch.no_grad():
        frames, silent = model.adaptor(states, model.get_input_embeddings().weight, return_silent_frames=True)
        speech_embeds = torch.cat([frames[row, :count] for row, count in enumerate(counts)])
        speech_silent = torch.cat([silent[row, :count] for row, count in enumerate(counts)])
        student = _response_logits(model, rows, lengths, speech_embeds, speech_silent)
        unmasked = _response_logits(model, rows, lengths, speech_embeds)
        for row, (ids, n) in enumerate(zip(rows, lengths)):
            start = sum(lengths[:row])
            direct = model.language_model(inputs_embeds=_kept_embeddings(model, ids, frames[row, : counts[row]],
                                                                         silent[row, : counts[row]])).logits[0, -n - 1 : -1]
            readable = torch.arange(direct.shape[-1]) != model.config.speech_token_id  # the model masks <speech>'s logit
            torch.testing.assert_close(student[start : start + n, readable], direct[:, readable].float(), atol=1e-4, rtol=1e-4)
    assert (student - unmasked).abs().max() > 1e-3


def test_forward_merges_precomputed_frames_like_input_features(tiny_model_dir):
    """`speech_embeds` (the adaptor's frames) merged by the forward give the logits `input_features` give."""
    import numpy as np

    from speech_llama.prompts import qa_inputs

    model, processor = load_model(tiny_model_dir)
    clip = np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32)
    inputs = qa_inputs(processor, [None], [clip])
    with torch.no_grad():
        frames = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        from_features = model(**inputs).logits
        from_frames = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], speech_embeds=frames).logits
    torch.testing.assert_close(from_frames, from_features)
    with pytest.raises(ValueError, match="input_features or speech_embeds, not both"):
        model(**inputs, speech_embeds=frames)
    with pytest.raises(ValueError, match="speech_silent_frames must be"):
        model(input_ids=inputs["input_ids"], speech_embeds=frames, speech_silent_frames=torch.zeros(1, dtype=torch.bool))


def _kept_embeddings(model, ids: list[int], frames: torch.Tensor, silent: torch.Tensor) -> torch.Tensor:
    """(1, L', d): the row's embeddings with its speech frames in place and the silent ones removed."""
    ids_tensor = torch.tensor(ids)
    embeds = model.get_input_embeddings()(ids_tensor)
    placeholder = ids_tensor == model.config.speech_token_id
    embeds[placeholder] = frames.to(embeds.dtype)
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[placeholder] = ~silent
    return embeds[keep][None]


def _spoken_records(folder, rows: list[dict]):
    import soundfile

    from speech_llama.files import write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for index, row in enumerate(rows):
        soundfile.write(str(folder / f"{index}.wav"), (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
        row["audio"] = f"{index}.wav"
    return write_jsonl(folder / "qa.jsonl", rows)


def test_distil_model_folder_exports_an_adaptor_only_model(tiny_model_dir, tmp_path):
    import pytest

    from alignment.distillation import distil_model_folder

    records = _spoken_records(tmp_path / "data", [{"question": t, "response": "An answer."} for t in TEXTS])
    settings = DistillationSettings(steps=2, batch_size=2, checkpoint_every=1, bf16=False)
    final = distil_model_folder(tiny_model_dir, records, tmp_path / "distill", settings, progress=False)
    trained, _ = load_model(final)
    base, _ = load_model(tiny_model_dir)
    assert all(torch.equal(trained.language_model.state_dict()[k], v) for k, v in base.language_model.state_dict().items())
    assert not torch.equal(trained.adaptor.linear_1.weight, base.adaptor.linear_1.weight)
    assert (tmp_path / "distill" / "distillation-log.jsonl").is_file()
    assert distil_model_folder(tiny_model_dir, records, tmp_path / "distill", settings, progress=False) == final

    missing = _spoken_records(tmp_path / "bad", [{"question": t, "response": ""} for t in TEXTS])
    with pytest.raises(ValueError, match=r"qa.jsonl, line 1: no 'response'"):
        distil_model_folder(tiny_model_dir, missing, tmp_path / "bad-out", settings, progress=False)
