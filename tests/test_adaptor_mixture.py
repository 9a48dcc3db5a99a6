"""SpeechAdaptor `adaptor_type="ctc_embedding_mixture"`: Σ_v p_v E_v over the LLM's input embeddings, the CTC
blank scored against a learned `blank_query`, its mass to `blank_embedding`, repeats collapsed."""

from __future__ import annotations

import pytest
import torch
from helpers import noise_clip
from transformers import AutoModelForCausalLM, LlamaConfig, WhisperConfig

from modeling_speech_llama import SpeechAdaptor, SpeechLlamaConfig, SpeechLlamaForCausalLM
from speech_llama.build import BuildInfo, save_model_folder
from speech_llama.prompts import qa_prompt

MIXTURE = {"adaptor_type": "ctc_embedding_mixture"}


def mixture_model(model_dir, **config):
    model = SpeechLlamaForCausalLM.from_pretrained(model_dir, **MIXTURE, **config)
    return model.eval()


def encoder_like_states(model, frames: int = 23, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, model.config.encoder_config.d_model, generator=generator)


def seeded(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def hand_frames(projected, embeddings, blank_id, blank_query, blank_embedding, scale, temperature, collapse=True):
    """What the mixture reads, in float64, and the (…, T) silent frames: logits s·cos(h, E_v) with the blank's
    s·cos(h, q) (`blank_query` None: against its own row), p = softmax(logits / T); a frame reads
    Σ_{v≠blank} p_v E_v + p_blank · b, a silent one (best token the blank or the previous frame's) b alone."""
    h = projected.double() / projected.double().norm(dim=-1, keepdim=True)
    E = embeddings.double()
    cosine = h @ (E / E.norm(dim=-1, keepdim=True)).T
    if blank_query is not None:
        cosine[..., blank_id] = h @ (blank_query.double() / blank_query.double().norm())
    logits = scale * cosine
    probs = torch.softmax(logits / temperature, dim=-1)
    keep = torch.ones(E.shape[0], dtype=torch.bool)
    keep[blank_id] = False
    b = blank_embedding.double()
    mixed = probs[..., keep] @ E[keep] + probs[..., blank_id : blank_id + 1] * b
    best = logits.argmax(-1)
    silent = best == blank_id
    silent[..., 1:] |= best[..., 1:] == best[..., :-1]
    if not collapse:
        return mixed, silent
    return torch.where(silent.unsqueeze(-1), b.expand_as(mixed), mixed), silent


def constant_projection(adaptor, vector: torch.Tensor) -> None:
    """Make `adaptor.project` output `vector` for every frame (weight 0, bias = vector)."""
    with torch.no_grad():
        adaptor.linear_2.weight.zero_()
        adaptor.linear_2.bias.copy_(vector)


def small_config(**settings) -> SpeechLlamaConfig:
    """Vocabulary 6 (id 5 the blank), d_llm 4, one encoder frame per position."""
    text = LlamaConfig(hidden_size=4, vocab_size=6, num_attention_heads=1, num_key_value_heads=1).to_dict()
    return SpeechLlamaConfig(encoder_config=WhisperConfig(d_model=8).to_dict(), text_config=text,
                             adaptor_downsample=1, **{"speech_token_id": 5, **settings})


def test_linear_is_the_default_and_has_no_blank_parameters(tiny):
    model, _ = tiny
    assert SpeechLlamaConfig().adaptor_type == "linear"
    assert model.config.adaptor_type == "linear"
    assert not hasattr(model.adaptor, "blank_embedding") and not hasattr(model.adaptor, "blank_query")
    states = encoder_like_states(model)
    with torch.no_grad():
        frames, silent = model.adaptor(states, return_silent_frames=True)
        assert torch.equal(frames, model.adaptor.project(states)) and silent is None


def test_mixture_output_shape_and_blank_parameters(tiny_model_dir):
    model = mixture_model(tiny_model_dir)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight
    width = model.config.text_config.hidden_size
    assert adaptor.blank_embedding.shape == adaptor.blank_query.shape == (width,)
    assert torch.count_nonzero(adaptor.blank_embedding) == 0  # zeros at init
    with torch.no_grad():
        out, silent = adaptor(encoder_like_states(model, frames=23), embeddings, return_silent_frames=True)
    assert out.shape == (2, 23 // model.config.adaptor_downsample, width)
    assert silent.shape == out.shape[:2] and silent.dtype == torch.bool
    assert out.dtype == embeddings.dtype and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="token embeddings"):
        adaptor(encoder_like_states(model))


def test_mixture_equals_hand_computed_frames(tiny_model_dir):
    model = mixture_model(tiny_model_dir, adaptor_logit_scale=20.0, adaptor_mixture_temperature=0.5)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight.detach()
    blank = model.config.speech_token_id
    states = encoder_like_states(model, frames=200)
    query = seeded(embeddings.shape[1], 4)
    with torch.no_grad():
        adaptor.blank_embedding.copy_(seeded(adaptor.blank_embedding.shape, 1))
        adaptor.blank_query.copy_(query)
        # Aim the frames around the blank's direction: some are silent, the others carry real blank mass.
        spread = (adaptor.project(states) - adaptor.linear_2.bias).norm(dim=-1).mean()
        adaptor.linear_2.weight.mul_(1.5 * query.norm() / spread)
        adaptor.linear_2.bias.copy_(query)
        out, silent = adaptor(states, embeddings, return_silent_frames=True)
        projected = adaptor.project(states)
        blank_mass = adaptor.token_logits(projected, embeddings).div(0.5).softmax(-1)[..., blank]
    b = adaptor.blank_embedding.detach()
    expected, expected_silent = hand_frames(projected, embeddings, blank, query, b, 20.0, 0.5)
    assert torch.equal(silent, expected_silent)
    assert 10 < int(silent.sum()) < silent.numel() - 10
    assert 0.01 < float(blank_mass[~silent].mean()) < 0.5
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-4)
    # Every ingredient matters: the blank scored on its own row, its mass kept on the <speech> row,
    # other scale / temperature, or silent frames not collapsed, each read differently.
    variants = {
        "row-scored blank": hand_frames(projected, embeddings, blank, None, b, 20.0, 0.5)[0],
        "mass on the row": hand_frames(projected, embeddings, blank, query, embeddings[blank], 20.0, 0.5)[0],
        "other settings": hand_frames(projected, embeddings, blank, query, b, 30.0, 1.0)[0],
        "not collapsed": hand_frames(projected, embeddings, blank, query, b, 20.0, 0.5, collapse=False)[0],
    }
    for name, variant in variants.items():
        assert (variant - expected).abs().max() > 1e-2, name


def test_blank_mass_goes_to_blank_embedding_not_to_the_speech_row():
    adaptor = SpeechAdaptor(small_config(**MIXTURE))
    learned = torch.tensor([7.0, -1.0, 2.0, 0.5])
    adaptor.blank_embedding.data = learned.clone()
    embeddings = seeded((6, 4), 6)
    # Frames 0-2 are tokens 1, 2, 1 (none silent) with 40 % of the mass on the blank (id 5); frame 3 is blank.
    logits = torch.full((1, 4, 6), -60.0)
    for frame, token in enumerate([1, 2, 1]):
        logits[0, frame, token], logits[0, frame, 5] = 0.0, float(torch.tensor(0.4 / 0.6).log())
    logits[0, 3, 5] = 0.0
    out = adaptor.mixture(logits, embeddings)[0]
    assert adaptor.silent_frames(logits)[0].tolist() == [False, False, False, True]
    for frame, token in enumerate([1, 2, 1]):
        torch.testing.assert_close(out[frame], 0.6 * embeddings[token] + 0.4 * learned)
        assert (out[frame] - (0.6 * embeddings[token] + 0.4 * embeddings[5])).abs().max() > 0.1
    torch.testing.assert_close(out[3], learned)


def test_blank_frames_read_blank_embedding_which_starts_at_zero(tiny_model_dir):
    model = mixture_model(tiny_model_dir)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight.detach()
    constant_projection(adaptor, adaptor.blank_query.detach())  # every frame is confidently the blank
    states = encoder_like_states(model, frames=10)
    with torch.no_grad():
        at_init, silent = adaptor(states, embeddings, return_silent_frames=True)
        assert silent.all() and torch.count_nonzero(at_init) == 0  # a blank frame reads nothing at init
        learned = seeded(embeddings.shape[1], 2)
        adaptor.blank_embedding.copy_(learned)
        out = adaptor(states, embeddings)
    assert torch.equal(out, learned.expand_as(out))


def test_confident_frames_read_the_token_once(tiny, tiny_model_dir):
    _, processor = tiny
    model = mixture_model(tiny_model_dir)
    embeddings = model.get_input_embeddings().weight.detach()
    token = processor.tokenizer(" cat", add_special_tokens=False)["input_ids"][0]
    constant_projection(model.adaptor, 3.0 * embeddings[token])  # cosine ignores the norm
    states = encoder_like_states(model, frames=15)
    with torch.no_grad():
        model.adaptor.blank_embedding.copy_(seeded(embeddings.shape[1], 3))
        out = model.adaptor(states, embeddings)
        probs = model.adaptor.token_logits(model.adaptor.project(states), embeddings).softmax(-1)
    assert (probs.argmax(-1) == token).all() and probs[..., token].min() > 0.99
    # The first frame reads the token; the next ones repeat it, so they read blank_embedding (one CTC segment).
    torch.testing.assert_close(out[:, 0], embeddings[token].expand_as(out[:, 0]), atol=1e-3 * float(embeddings[token].norm()), rtol=0)
    assert torch.equal(out[:, 1:], model.adaptor.blank_embedding.detach().expand_as(out[:, 1:]))


def test_silent_frames_are_blanks_and_repeats_so_each_ctc_segment_is_read_once():
    adaptor = SpeechAdaptor(small_config(**MIXTURE))
    adaptor.blank_embedding.data = torch.full((4,), 7.0)
    embeddings = torch.eye(6, 4)
    best = [1, 1, 5, 2, 2, 1, 5, 5, 1]
    logits = torch.full((1, len(best), 6), -50.0)
    logits[0, torch.arange(len(best)), torch.tensor(best)] = 50.0
    silent = [False, True, True, False, True, False, True, True, False]
    assert adaptor.silent_frames(logits)[0].tolist() == silent
    out = adaptor.mixture(logits, embeddings)[0]
    for frame, is_silent in enumerate(silent):
        expected = torch.full((4,), 7.0) if is_silent else embeddings[best[frame]]
        assert torch.allclose(out[frame], expected, atol=1e-4), frame


def test_the_blank_is_scored_against_blank_query(tiny, tiny_model_dir):
    """The blank logit is s·cos(h, q); every other logit is the one the linear adaptor's head gives."""
    linear, _ = tiny  # its vocabulary head scores the blank against <speech>'s own row
    model = mixture_model(tiny_model_dir)
    adaptor, embeddings = model.adaptor, model.get_input_embeddings().weight.detach()
    blank = model.config.speech_token_id
    query = seeded(embeddings.shape[1], 5)
    with torch.no_grad():
        adaptor.blank_query.copy_(query)
        projected = adaptor.project(encoder_like_states(model, frames=10))
        logits = adaptor.token_logits(projected, embeddings)
        reference = linear.adaptor.token_logits(projected, embeddings)
    h = projected.double() / projected.double().norm(dim=-1, keepdim=True)
    expected_blank = adaptor.logit_scale * (h @ (query.double() / query.double().norm()))
    torch.testing.assert_close(logits[..., blank].double(), expected_blank, atol=1e-5, rtol=0)
    assert (reference[..., blank].double() - expected_blank).abs().max() > 1e-2  # the row would score differently
    others = torch.ones(embeddings.shape[0], dtype=torch.bool)
    others[blank] = False
    assert torch.equal(logits[..., others], reference[..., others])
    constant_projection(adaptor, query)  # every frame points at q: the blank wins
    with torch.no_grad():
        best = adaptor.token_logits(adaptor.project(encoder_like_states(model, frames=10)), embeddings).argmax(-1)
    assert (best == blank).all()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"adaptor_type": "conv"}, "adaptor_type must be one of"),
        ({"adaptor_type": "ctc_embedding_mixture", "speech_token_id": None}, "needs speech_token_id"),
        ({"adaptor_type": "ctc_embedding_mixture", "speech_token_id": 5, "adaptor_mixture_temperature": 0.0}, "temperature"),
        ({"adaptor_mixture_temperature": -1.0}, "temperature"),
    ],
)
def test_invalid_config_values_raise(settings, message):
    with pytest.raises(ValueError, match=message):
        SpeechLlamaConfig(**settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"adaptor_type": "mixture"}, "adaptor_type must be one of .* got 'mixture'"),
        ({"adaptor_type": "ctc_embedding_mixture", "adaptor_mixture_temperature": 0.0}, "temperature"),
        ({"adaptor_type": "ctc_embedding_mixture", "speech_token_id": None}, "needs speech_token_id"),
    ],
)
def test_invalid_values_passed_to_from_pretrained_raise(tiny_model_dir, settings, message):
    # from_pretrained sets these on the config after __init__; building the adaptor must still refuse them.
    with pytest.raises(ValueError, match=message):
        SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **settings)


def test_adaptor_refuses_a_config_changed_after_init():
    config = small_config()
    config.adaptor_type = "ctc_embedding_mixture"
    config.speech_token_id = None
    with pytest.raises(ValueError, match="adaptor_type='ctc_embedding_mixture' needs speech_token_id"):
        SpeechAdaptor(config)


def test_model_forward_reads_the_mixture(tiny, tiny_model_dir):
    linear, processor = tiny
    model = mixture_model(tiny_model_dir)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.5)], sampling_rate=16000)
    adaptor = model.adaptor
    with torch.no_grad():
        adaptor.blank_embedding.copy_(seeded(adaptor.blank_embedding.shape, 7))
        features, silent = model.get_speech_frames(inputs["input_features"], inputs["input_features_mask"])
        states = model.encoder(inputs["input_features"], inputs["input_features_mask"])
        expected, expected_silent = hand_frames(
            adaptor.project(states)[0, : features.shape[0]], model.get_input_embeddings().weight,
            model.config.speech_token_id, adaptor.blank_query, adaptor.blank_embedding, 30.0, 1.0)
        linear_features = linear.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        mixture_logits = model(**inputs).logits
        linear_logits = linear(**inputs).logits
    assert torch.equal(silent, expected_silent)
    torch.testing.assert_close(features.double(), expected, atol=1e-5, rtol=1e-4)
    assert (features - linear_features).abs().max() > 1e-2
    assert (mixture_logits - linear_logits).abs().max() > 1e-3


def test_mixture_folder_saves_and_loads_with_auto_class(tiny, tiny_model_dir, tmp_path):
    _, processor = tiny
    model = mixture_model(tiny_model_dir, adaptor_logit_scale=25.0, adaptor_mixture_temperature=0.7)
    with torch.no_grad():
        model.adaptor.blank_embedding.copy_(seeded(model.adaptor.blank_embedding.shape, 3))
    folder = save_model_folder(model, processor, tmp_path / "mixture", BuildInfo(llm="tiny", encoder="tiny"))
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "transformers_modules" in type(loaded).__module__  # the folder's own remote code
    assert loaded.config.adaptor_type == "ctc_embedding_mixture"
    assert loaded.config.adaptor_logit_scale == 25.0 and loaded.config.adaptor_mixture_temperature == 0.7
    assert torch.equal(loaded.adaptor.blank_embedding, model.adaptor.blank_embedding)
    assert torch.equal(loaded.adaptor.blank_query, model.adaptor.blank_query)
    inputs = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(2.0, seed=4)], sampling_rate=16000)
    with torch.no_grad():
        expected = model(**inputs).logits
        got = loaded(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
