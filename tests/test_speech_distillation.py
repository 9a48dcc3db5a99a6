"""DiVA-style distillation of the text-input LLM into the speech path (trainers/speech_distillation.py)."""

from __future__ import annotations

import numpy as np
import torch

from modeling_speech_llama import SpeechLlamaForCausalLM
from speech_llama.generate import load_model
from trainers.speech_alignment import CachedClip
from trainers.speech_distillation import STATE_NAME, DistillationSettings, _pair, distill

TEXTS = ["Who wrote Hamlet?", "Name a red fruit.", "Birds fly south.", "The sun is hot."]


def clips(model) -> list[CachedClip]:
    rng = np.random.default_rng(0)
    width = model.config.encoder_config.d_model
    return [CachedClip(rng.standard_normal((40, width)).astype(np.float16), [], text) for text in TEXTS]


def test_pair_shares_the_response_and_expands_speech(tiny_model_dir):
    _, processor = load_model(tiny_model_dir)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_output="embedding_mixture")
    clip = clips(model)[0]
    text_ids, speech_ids, n = _pair(processor, clip, "William Shakespeare.", model.config.adaptor_downsample)
    assert n > 0 and text_ids[-n:] == speech_ids[-n:]
    assert speech_ids.count(model.config.speech_token_id) == 40 // model.config.adaptor_downsample
    assert model.config.speech_token_id not in text_ids


def test_distill_trains_only_the_adaptor_and_resumes(tiny_model_dir, tmp_path):
    _, processor = load_model(tiny_model_dir)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_output="embedding_mixture")
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
