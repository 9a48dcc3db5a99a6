"""`adaptor_type`, the config's one adaptor choice: saved alone, overridable at load time, and read from
config.json files that carry the four switches it replaced (`adaptor_output`, `adaptor_learned_blank`,
`adaptor_collapse_repeats`, `adaptor_mask_silent_frames`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import noise_clip
from transformers import AutoConfig, AutoModelForCausalLM

from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM
from speech_llama.build import BuildInfo, save_model_folder
from speech_llama.prompts import qa_inputs

SWITCHES = ("adaptor_output", "adaptor_learned_blank", "adaptor_collapse_repeats", "adaptor_mask_silent_frames")
ALL_OFF = {"adaptor_output": "linear", "adaptor_learned_blank": False, "adaptor_collapse_repeats": False,
           "adaptor_mask_silent_frames": False}
ALL_ON = {"adaptor_output": "embedding_mixture", "adaptor_learned_blank": True, "adaptor_collapse_repeats": True,
          "adaptor_mask_silent_frames": True}


def read_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def old_form_copy(folder, destination, switches: dict):
    """A copy of `folder` whose config.json carries `switches` in place of `adaptor_type`."""
    shutil.copytree(folder, destination)
    config = read_config(destination)
    del config["adaptor_type"]
    config.update(switches)
    (destination / "config.json").write_text(json.dumps(config, indent=2))
    return destination


@pytest.fixture(scope="module")
def mixture_dir(tiny, tiny_model_dir, tmp_path_factory):
    """A ctc_embedding_mixture folder with non-trivial blank parameters, saved in the new form."""
    _, processor = tiny
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_type="ctc_embedding_mixture")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.adaptor.blank_embedding.copy_(torch.randn(model.adaptor.blank_embedding.shape, generator=generator))
        model.adaptor.blank_query.copy_(torch.randn(model.adaptor.blank_query.shape, generator=generator))
    return save_model_folder(model, processor, tmp_path_factory.mktemp("adaptor-type") / "mixture",
                             BuildInfo(llm="tiny", encoder="tiny"))


def speech_inputs(processor):
    return qa_inputs(processor, [None, None], [noise_clip(1.3, seed=1), noise_clip(0.7, seed=2)])


def outputs(model, inputs):
    with torch.no_grad():
        return model(**inputs), model.generate(**inputs, max_new_tokens=5, do_sample=False)


def test_saved_config_holds_adaptor_type_and_none_of_the_switches(tiny_model_dir, mixture_dir):
    for folder, adaptor_type in ((tiny_model_dir, "linear"), (mixture_dir, "ctc_embedding_mixture")):
        config = read_config(folder)
        assert config["adaptor_type"] == adaptor_type
        assert not set(SWITCHES) & set(config), folder
    assert not set(SWITCHES) & set(SpeechLlamaConfig(**ALL_ON, speech_token_id=5).to_dict())


@pytest.mark.parametrize("form", ["all on", "all on, remote code"])
def test_old_form_mixture_folder_reads_bit_identically(tiny, mixture_dir, tmp_path, form):
    _, processor = tiny
    old = old_form_copy(mixture_dir, tmp_path / "old", ALL_ON)
    if form.endswith("remote code"):
        load = lambda folder: AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()  # noqa: E731
    else:
        load = lambda folder: SpeechLlamaForCausalLM.from_pretrained(folder).eval()  # noqa: E731
    new_model, old_model = load(mixture_dir), load(old)
    assert old_model.config.adaptor_type == "ctc_embedding_mixture"
    assert not any(hasattr(old_model.config, key) for key in SWITCHES)
    assert old_model.state_dict().keys() == new_model.state_dict().keys()
    inputs = speech_inputs(processor)
    (new_out, new_ids), (old_out, old_ids) = outputs(new_model, inputs), outputs(old_model, inputs)
    assert (new_out.attention_mask == 0).any()  # silent frames were masked
    assert torch.equal(old_out.logits, new_out.logits) and torch.equal(old_out.attention_mask, new_out.attention_mask)
    assert torch.equal(old_ids, new_ids)
    # Saved again, the folder is in the new form.
    old_model.save_pretrained(tmp_path / "resaved")
    config = read_config(tmp_path / "resaved")
    assert config["adaptor_type"] == "ctc_embedding_mixture" and not set(SWITCHES) & set(config)


@pytest.mark.parametrize("switches", [ALL_OFF, {}, {"adaptor_output": "linear"}], ids=["all off", "absent", "one off"])
def test_old_form_linear_folder_reads_bit_identically(tiny, tiny_model_dir, tmp_path, switches):
    model, processor = tiny
    old_model = SpeechLlamaForCausalLM.from_pretrained(old_form_copy(tiny_model_dir, tmp_path / "old", switches)).eval()
    assert old_model.config.adaptor_type == "linear" and not hasattr(old_model.adaptor, "blank_query")
    inputs = speech_inputs(processor)
    (new_out, new_ids), (old_out, old_ids) = outputs(model, inputs), outputs(old_model, inputs)
    assert old_out.attention_mask is None
    assert torch.equal(old_out.logits, new_out.logits) and torch.equal(old_ids, new_ids)


@pytest.mark.parametrize(
    "switches",
    [
        {"adaptor_output": "embedding_mixture"},
        {"adaptor_output": "embedding_mixture", "adaptor_collapse_repeats": True, "adaptor_mask_silent_frames": True},
        {**ALL_ON, "adaptor_learned_blank": False},
        {"adaptor_learned_blank": True},
        {**ALL_ON, "adaptor_output": "conv"},
    ],
)
def test_other_switch_settings_are_refused_naming_what_was_found(tiny_model_dir, tmp_path, switches):
    with pytest.raises(ValueError) as config_error:
        SpeechLlamaConfig(**switches, speech_token_id=5)
    message = str(config_error.value)
    assert "\n" not in message and message.startswith(f"unsupported adaptor switches {switches}")
    assert "adaptor_type='linear'" in message and "adaptor_type='ctc_embedding_mixture'" in message
    folder = old_form_copy(tiny_model_dir, tmp_path / "old", switches)
    with pytest.raises(ValueError, match="unsupported adaptor switches"):
        SpeechLlamaForCausalLM.from_pretrained(folder)


def test_adaptor_type_contradicting_the_switches_is_refused():
    with pytest.raises(ValueError, match="adaptor_type='linear' contradicts the former adaptor switches"):
        SpeechLlamaConfig(**ALL_ON, adaptor_type="linear", speech_token_id=5)
    assert SpeechLlamaConfig(**ALL_ON, adaptor_type="ctc_embedding_mixture", speech_token_id=5).adaptor_type \
        == "ctc_embedding_mixture"


def test_from_pretrained_overrides_the_folders_adaptor_type(tiny, tiny_model_dir, mixture_dir):
    _, processor = tiny
    inputs = speech_inputs(processor)
    to_mixture = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, adaptor_type="ctc_embedding_mixture").eval()
    assert to_mixture.config.adaptor_type == "ctc_embedding_mixture" and hasattr(to_mixture.adaptor, "blank_query")
    to_linear = SpeechLlamaForCausalLM.from_pretrained(mixture_dir, adaptor_type="linear").eval()
    assert to_linear.config.adaptor_type == "linear" and not hasattr(to_linear.adaptor, "blank_embedding")
    with torch.no_grad():
        assert to_mixture(**inputs).attention_mask is not None
        assert to_linear(**inputs).attention_mask is None
    remote = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True,
                                                  adaptor_type="ctc_embedding_mixture")
    assert remote.config.adaptor_type == "ctc_embedding_mixture" and hasattr(remote.adaptor, "blank_query")


@pytest.mark.parametrize("remote_code", [False, True])
def test_unknown_adaptor_type_at_load_time_is_refused(tiny_model_dir, remote_code):
    load = (lambda **kw: AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True, **kw)) if remote_code \
        else (lambda **kw: SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **kw))
    with pytest.raises(ValueError, match=r"adaptor_type must be one of \('linear', 'ctc_embedding_mixture'\), got 'mixture'"):
        load(adaptor_type="mixture")


@pytest.mark.parametrize("key, value", [("adaptor_output", "embedding_mixture"), ("adaptor_learned_blank", True),
                                        ("adaptor_collapse_repeats", False), ("adaptor_mask_silent_frames", True)])
def test_a_former_switch_passed_at_load_time_is_refused(tiny_model_dir, key, value):
    expected = rf"^{key}: replaced by adaptor_type; pass adaptor_type, one of \('linear', 'ctc_embedding_mixture'\)$"
    loaders = [
        lambda: SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **{key: value}),
        lambda: SpeechLlamaConfig.from_pretrained(tiny_model_dir, **{key: value}),
        lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True, **{key: value}),
        lambda: AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True, **{key: value}),
    ]
    for load in loaders:
        with pytest.raises(ValueError, match=expected):
            load()
