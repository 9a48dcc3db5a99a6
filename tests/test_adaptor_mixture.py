"""SpeechAdaptor `adaptor_output="embedding_mixture"`: Σ_v p_v E_v over the LLM's input embeddings."""

from __future__ import annotations

import pytest
import torch
from helpers import noise_clip
from transformers import AutoModelForCausalLM

from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM
from speech_llama.build import BuildInfo, save_model_folder
from speech_llama.prompts import qa_prompt


def mixture_model(model_dir, **config):
    model = SpeechLlamaForCausalLM.from_pretrained(model_dir, adaptor_output="embedding_mixture", **config)
    return model.eval()


def encoder_like_states(model, frames: int = 23, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, model.config.encoder_config.d_model, generator=generator)


def hand_mixture(projected, embeddings, blank_id, blank_embedding, scale, temperature):
    """Σ_{v≠blank} p_v E_v + p_blank · b in float64, p = softmax(s · cos(h, E) / T)."""
    h = projected.double()
    E = embeddings.double()
    cosine = (h / h.norm(dim=-1, keepdim=True)) @ (E / E.norm(dim=-1, keepdim=True)).T
    probs = torch.softmax(scale * cosine / temperature, dim=-1)
    keep = torch.ones(E.shape[0], dtype=torch.bool)
    keep[blank_id] = False
    return probs[..., keep] @ E[keep] + probs[..., blank_id : blank_id + 1] * blank_embedding.double()


def constant_projection(adaptor, vector: torch.Tensor) -> None:
    """Make `adaptor.project` output `vector` for every frame (weight 0, bias = vector)."""
    with torch.no_grad():
        adaptor.linear_2.weight.zero_()
        adaptor.linear_2.bias.copy_(vector)


def test_linear_is_the_default_and_has_no_blank_embedding(tiny):
    model, _ = tiny
    assert SpeechLlamaConfig().adaptor_output == "linear"
    assert model.config.adaptor_output == "linear"
    assert not hasattr(model.adaptor, "blank_embedding")
    states = encoder_like_states(model)
    with torch.no_grad():
        assert torch.equal(model.adaptor(states), model.adaptor.project(states))


def test_mixture_output_shape_and_blank_embedding_zero_at_init(tiny_model_dir):
    model = mixture_model(tiny_model_dir)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight
    assert adaptor.blank_embedding.shape == (model.config.text_config.hidden_size,)
    assert torch.count_nonzero(adaptor.blank_embedding) == 0
    with torch.no_grad():
        out = adaptor(encoder_like_states(model, frames=23), embeddings)
    assert out.shape == (2, 23 // model.config.adaptor_downsample, model.config.text_config.hidden_size)
    assert out.dtype == embeddings.dtype and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="token embeddings"):
        adaptor(encoder_like_states(model))


def test_mixture_equals_hand_computed_posterior_sum(tiny_model_dir):
    model = mixture_model(tiny_model_dir, adaptor_logit_scale=20.0, adaptor_mixture_temperature=0.5)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight.detach()
    blank = model.config.speech_token_id
    states = encoder_like_states(model, frames=20)
    with torch.no_grad():
        adaptor.blank_embedding.copy_(torch.randn(adaptor.blank_embedding.shape, generator=torch.Generator().manual_seed(1)))
        # Aim the frames near the blank row, so a real share of their mass is blank mass.
        spread = (adaptor.project(states) - adaptor.linear_2.bias).norm(dim=-1).mean()
        adaptor.linear_2.weight.mul_(2 * embeddings[blank].norm() / spread)
        adaptor.linear_2.bias.copy_(embeddings[blank])
        out = adaptor(states, embeddings)
        projected = adaptor.project(states)
        blank_mass = adaptor.token_logits(projected, embeddings).div(0.5).softmax(-1)[..., blank]
    assert 0.005 < float(blank_mass.mean()) < 0.9
    expected = hand_mixture(projected, embeddings, blank, adaptor.blank_embedding.detach(), 20.0, 0.5)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-4)
    # Every ingredient matters: blank mass kept on the <speech> row, or other scale / temperature, differ.
    kept_on_row = hand_mixture(projected, embeddings, blank, embeddings[blank], 20.0, 0.5)
    other_settings = hand_mixture(projected, embeddings, blank, adaptor.blank_embedding.detach(), 30.0, 1.0)
    assert (kept_on_row - expected).abs().max() > 1e-2
    assert (other_settings - expected).abs().max() > 1e-3


def test_blank_mass_goes_to_blank_embedding_not_to_the_speech_row(tiny_model_dir):
    model = mixture_model(tiny_model_dir)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight.detach()
    blank = model.config.speech_token_id
    constant_projection(adaptor, embeddings[blank])  # every frame is confidently the blank
    states = encoder_like_states(model, frames=10)
    with torch.no_grad():
        at_init = adaptor(states, embeddings)
        assert at_init.norm(dim=-1).max() < 1e-3 * embeddings.norm(dim=-1).mean()  # zeros at init: reads ≈ nothing
        learned = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(2))
        adaptor.blank_embedding.copy_(learned)
        out = adaptor(states, embeddings)
    torch.testing.assert_close(out, learned.expand_as(out), atol=1e-3, rtol=1e-3)


def test_one_hot_confident_frame_reads_that_tokens_embedding(tiny, tiny_model_dir):
    _, processor = tiny
    model = mixture_model(tiny_model_dir)
    embeddings = model.get_input_embeddings().weight.detach()
    token = processor.tokenizer(" cat", add_special_tokens=False)["input_ids"][0]
    constant_projection(model.adaptor, 3.0 * embeddings[token])  # cosine ignores the norm
    with torch.no_grad():
        out = model.adaptor(encoder_like_states(model, frames=15), embeddings)
        probs = model.adaptor.token_logits(model.adaptor.project(encoder_like_states(model, frames=15)), embeddings).softmax(-1)
    assert (probs.argmax(-1) == token).all() and probs[..., token].min() > 0.99
    torch.testing.assert_close(out, embeddings[token].expand_as(out), atol=1e-3 * float(embeddings[token].norm()), rtol=0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"adaptor_output": "conv"}, "adaptor_output must be one of"),
        ({"adaptor_output": "embedding_mixture", "speech_token_id": None}, "speech_token_id"),
        ({"adaptor_output": "embedding_mixture", "speech_token_id": 5, "adaptor_mixture_temperature": 0.0}, "temperature"),
        ({"adaptor_mixture_temperature": -1.0}, "temperature"),
    ],
)
def test_invalid_config_values_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        SpeechLlamaConfig(**settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"adaptor_output": "mixture"}, "adaptor_output must be one of"),
        ({"adaptor_output": "embedding_mixture", "adaptor_mixture_temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_values_passed_to_from_pretrained_raise(tiny_model_dir, settings, message):
    # from_pretrained sets these on the config after __init__; building the adaptor must still refuse them.
    with pytest.raises(ValueError, match=message):
        SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **settings)


def test_model_forward_reads_the_mixture(tiny, tiny_model_dir):
    linear, processor = tiny
    model = mixture_model(tiny_model_dir)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.5)], sampling_rate=16000)
    with torch.no_grad():
        features = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        states = model.encoder(inputs["input_features"], inputs["input_features_mask"])
        expected = hand_mixture(model.adaptor.project(states)[0, : features.shape[0]], model.get_input_embeddings().weight,
                                model.config.speech_token_id, model.adaptor.blank_embedding, 30.0, 1.0)
        linear_features = linear.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        mixture_logits = model(**inputs).logits
        linear_logits = linear(**inputs).logits
    torch.testing.assert_close(features.double(), expected, atol=1e-5, rtol=1e-4)
    assert (features - linear_features).abs().max() > 1e-2
    assert (mixture_logits - linear_logits).abs().max() > 1e-3


def test_mixture_folder_saves_and_loads_with_auto_class(tiny, tiny_model_dir, tmp_path):
    _, processor = tiny
    model = mixture_model(tiny_model_dir, adaptor_logit_scale=25.0, adaptor_mixture_temperature=0.7)
    with torch.no_grad():
        model.adaptor.blank_embedding.copy_(torch.randn(model.adaptor.blank_embedding.shape,
                                                        generator=torch.Generator().manual_seed(3)))
    folder = save_model_folder(model, processor, tmp_path / "mixture", BuildInfo(llm="tiny", encoder="tiny"))
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(loaded).__module__  # the folder's own remote code
    assert loaded.config.adaptor_output == "embedding_mixture"
    assert loaded.config.adaptor_logit_scale == 25.0 and loaded.config.adaptor_mixture_temperature == 0.7
    assert torch.equal(loaded.adaptor.blank_embedding, model.adaptor.blank_embedding)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(2.0, seed=4)], sampling_rate=16000)
    with torch.no_grad():
        expected = model(**inputs).logits
        got = loaded(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_collapse_repeats_reads_each_ctc_segment_once():
    from modeling_speech_llama.modeling_speech_llama import SpeechAdaptor
    from transformers import LlamaConfig, WhisperConfig

    from modeling_speech_llama import SpeechLlamaConfig

    config = SpeechLlamaConfig(encoder_config=WhisperConfig(d_model=8).to_dict(),
                               text_config=LlamaConfig(hidden_size=4, vocab_size=6, num_attention_heads=1, num_key_value_heads=1).to_dict(),
                               adaptor_downsample=1, speech_token_id=5, adaptor_output="embedding_mixture",
                               adaptor_collapse_repeats=True)
    adaptor = SpeechAdaptor(config)
    adaptor.blank_embedding.data = torch.full((4,), 7.0)
    embeddings = torch.eye(6, 4)
    best = [1, 1, 5, 2, 2, 1]
    logits = torch.full((1, len(best), 6), -50.0)
    logits[0, torch.arange(len(best)), torch.tensor(best)] = 50.0
    out = adaptor.mixture(logits, embeddings)[0]
    silent = [False, True, True, False, True, False]
    for frame, is_silent in enumerate(silent):
        expected = torch.full((4,), 7.0) if is_silent else embeddings[best[frame]]
        assert torch.allclose(out[frame], expected, atol=1e-4), frame
    adaptor.collapse_repeats = False
    assert torch.allclose(adaptor.mixture(logits, embeddings)[0, 1], embeddings[1], atol=1e-4)


def test_learned_blank_scores_the_blank_against_blank_query(tiny_model_dir):
    """With adaptor_learned_blank the blank logit is s·cos(h, q); every other logit is unchanged."""
    plain = mixture_model(tiny_model_dir)
    learned = mixture_model(tiny_model_dir, adaptor_learned_blank=True)
    assert not hasattr(plain.adaptor, "blank_query")
    adaptor, embeddings = learned.adaptor, learned.get_input_embeddings().weight.detach()
    blank = learned.config.speech_token_id
    query = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        adaptor.blank_query.copy_(query)
        projected = adaptor.project(encoder_like_states(learned, frames=10))
        logits = adaptor.token_logits(projected, embeddings)
        reference = plain.adaptor.token_logits(projected, embeddings)
    h = projected.double() / projected.double().norm(dim=-1, keepdim=True)
    expected_blank = adaptor.logit_scale * (h @ (query.double() / query.double().norm()))
    torch.testing.assert_close(logits[..., blank].double(), expected_blank, atol=1e-5, rtol=0)
    others = torch.ones(embeddings.shape[0], dtype=torch.bool)
    others[blank] = False
    torch.testing.assert_close(logits[..., others], reference[..., others])
    constant_projection(adaptor, query)  # every frame points at q: the blank wins
    with torch.no_grad():
        best = adaptor.token_logits(adaptor.project(encoder_like_states(learned, frames=10)), embeddings).argmax(-1)
    assert (best == blank).all()


def test_learned_blank_needs_the_blank_id_and_round_trips(tiny, tiny_model_dir, tmp_path):
    from modeling_speech_llama.modeling_speech_llama import SpeechAdaptor
    from transformers import LlamaConfig, WhisperConfig

    config = SpeechLlamaConfig(encoder_config=WhisperConfig(d_model=8).to_dict(),
                               text_config=LlamaConfig(hidden_size=4, vocab_size=6, num_attention_heads=1,
                                                       num_key_value_heads=1).to_dict(),
                               adaptor_downsample=1, adaptor_learned_blank=True)
    with pytest.raises(ValueError, match="adaptor_learned_blank=True needs speech_token_id"):
        SpeechAdaptor(config)
    _, processor = tiny
    model = mixture_model(tiny_model_dir, adaptor_learned_blank=True)
    folder = save_model_folder(model, processor, tmp_path / "learned-blank", BuildInfo(llm="tiny", encoder="tiny"))
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert loaded.config.adaptor_learned_blank is True
    assert torch.equal(loaded.adaptor.blank_query, model.adaptor.blank_query)
