"""SpeechLlama model + processor: remote-code loading, batching, training forward, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import noise_clip

from modeling_speech_llama import speech_token_count
from speech_llama.prompts import qa_prompt, qa_training_text

PROJECT_PACKAGES = ("modeling_speech_llama", "speech_llama", "importance", "trainers", "evaluate_metrics", "spaces_demo")


def test_speech_token_count_matches_processor(tiny):
    model, processor = tiny
    for seconds in (0.1, 1.0, 2.97, 3.0, 7.31, 30.0):
        samples = int(16000 * seconds)
        features = processor(text=["<speech>"], audio=[noise_clip(seconds)], sampling_rate=16000)
        mel_frames = features["input_features"].shape[-1]
        assert mel_frames == samples // 160
        expected = speech_token_count(mel_frames, model.config.adaptor_downsample)
        assert processor.num_speech_tokens(samples) == expected
        assert int((features["input_ids"] == processor.speech_token_id).sum()) == expected
    assert processor.num_speech_tokens(3 * 16000) == 30


def test_remote_code_load_in_fresh_process_matches_project_classes(tiny, tiny_model_dir, tmp_path):
    model, processor = tiny
    prompt = qa_prompt(processor, speech=True)
    inputs = processor(text=[prompt], audio=[noise_clip(2.0)], sampling_rate=16000)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class BlockProject(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {PROJECT_PACKAGES!r}:
                    raise ImportError("project import blocked: " + name)
        sys.meta_path.insert(0, BlockProject())
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor
        folder = {str(tiny_model_dir)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        results = {{"config": type(config).__name__, "processor": type(processor).__name__}}
        for name, auto in (("AutoModel", AutoModel), ("AutoModelForCausalLM", AutoModelForCausalLM)):
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            results[name] = type(model).__module__ + "." + type(model).__name__
            with torch.no_grad():
                torch.save(model(**inputs).logits, {str(tmp_path)!r} + "/" + name + ".pt")
        print(results)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers_modules" in result.stdout and "SpeechLlamaProcessor" in result.stdout
    with torch.no_grad():
        expected = model(**inputs).logits
    for name in ("AutoModel", "AutoModelForCausalLM"):
        loaded = torch.load(tmp_path / f"{name}.pt")
        assert torch.allclose(loaded, expected, atol=1e-4), name


def test_built_folder_is_a_complete_hub_repo(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    for required in ("config.json", "model.safetensors", "configuration_speech_llama.py", "modeling_speech_llama.py",
                     "processing_speech_llama.py", "processor_config.json", "tokenizer.json", "README.md"):
        assert required in names, required
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    processor_config = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_speech_llama.SpeechLlamaProcessor"
    for remote_file in ("configuration_speech_llama.py", "modeling_speech_llama.py", "processing_speech_llama.py"):
        source = (tiny_model_dir / remote_file).read_text()
        assert "speech_llama." not in source.replace("modeling_speech_llama", "").replace("configuration_speech_llama", "")


def _mixed_batch(processor):
    clips = {"1s": noise_clip(1.0, seed=1), "3s": noise_clip(3.0, seed=3), "7s": noise_clip(7.0, seed=7)}
    rows = [
        (qa_prompt(processor, speech=True), clips["3s"]),
        (qa_prompt(processor, "What is the capital of France?"), None),
        (qa_prompt(processor, speech=True), clips["7s"]),
        (qa_prompt(processor, speech=True), clips["1s"]),
        (qa_prompt(processor, "Who wrote Hamlet?"), None),
    ]
    return rows


def test_mixed_batch_equals_each_row_alone(tiny):
    model, processor = tiny
    rows = _mixed_batch(processor)
    batch = processor(text=[r[0] for r in rows], audio=[r[1] for r in rows], sampling_rate=16000)
    assert batch["input_features"].shape[0] == 3
    generation = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched_logits = model(**batch).logits
        batched = model.generate(**batch, **generation)
    prompt_length = batch["input_ids"].shape[1]
    for index, (prompt, clip) in enumerate(rows):
        alone = processor(text=[prompt], audio=[clip], sampling_rate=16000)
        length = alone["input_ids"].shape[1]
        with torch.no_grad():
            alone_logits = model(**alone).logits
            alone_generated = model.generate(**alone, **generation)
        assert torch.allclose(batched_logits[index, -length:], alone_logits[0], atol=1e-4), f"row {index} logits"
        assert batched.sequences[index, prompt_length:].tolist() == alone_generated.sequences[0, length:].tolist()
        for step_batched, step_alone in zip(batched.logits, alone_generated.logits):
            assert torch.allclose(step_batched[index], step_alone[0], atol=1e-4), f"row {index} generation logits"


def test_speech_features_only_on_prefill(tiny):
    model, processor = tiny
    batch = processor(text=[qa_prompt(processor, speech=True)], audio=[noise_clip(1.0)], sampling_rate=16000)
    seen = []
    handle = model.adaptor.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=4, do_sample=False)
    finally:
        handle.remove()
    assert len(seen) == 1


def test_generation_never_emits_speech_token(tiny):
    model, processor = tiny
    batch = processor(text=[qa_prompt(processor, "Say something")], sampling_rate=16000)
    with torch.no_grad():
        model.language_model.get_output_embeddings().weight[processor.speech_token_id] += 100.0
        try:
            logits = model(**batch).logits
            generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
        finally:
            model.language_model.get_output_embeddings().weight[processor.speech_token_id] -= 100.0
    assert logits[0, -1].argmax() != processor.speech_token_id
    assert processor.speech_token_id not in generated[0].tolist()[batch["input_ids"].shape[1]:]


def _training_batch(processor, clip):
    prompt, completion = qa_training_text(processor, "Paris is the capital.", speech=True)
    inputs = processor(text=[prompt + completion], audio=[clip], sampling_rate=16000)
    prompt_length = processor(text=[prompt], audio=[clip], sampling_rate=16000)["input_ids"].shape[1]
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_length] = -100
    return inputs, labels, prompt_length


def test_training_loss_on_response_only_and_encoder_frozen(tiny):
    model, processor = tiny
    model.train()
    try:
        inputs, labels, prompt_length = _training_batch(processor, noise_clip(2.0))
        output = model(**inputs, labels=labels)
        logits = output.logits[0, prompt_length - 1 : -1]
        targets = inputs["input_ids"][0, prompt_length:]
        manual = torch.nn.functional.cross_entropy(logits, targets)
        assert torch.allclose(output.loss, manual, atol=1e-5)
        # Labels on placeholders are ignored even when a caller forgets to mask them.
        unmasked = model(**inputs, labels=inputs["input_ids"].clone()).loss
        placeholders = inputs["input_ids"][0] == processor.speech_token_id
        keep = ~placeholders[1:]
        manual_all = torch.nn.functional.cross_entropy(output.logits[0, :-1][keep], inputs["input_ids"][0, 1:][keep])
        assert torch.allclose(unmasked, manual_all, atol=1e-5)
        model.zero_grad()
        output.loss.backward()
        assert all(p.grad is None for p in model.encoder.parameters())
        assert all(not p.requires_grad for p in model.encoder.parameters())
        assert model.adaptor.linear_1.weight.grad is not None and model.adaptor.linear_1.weight.grad.abs().sum() > 0
        layer = model.language_model.model.layers[0]
        assert layer.self_attn.q_proj.weight.grad is not None and layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


@pytest.mark.parametrize(
    "make_call, message",
    [
        (lambda p: p(text=["<speech>"], audio=[noise_clip(1.0)], sampling_rate=22050), "22050 Hz"),
        (lambda p: p(text=["<speech>"], audio=[np.zeros(0, np.float32)], sampling_rate=16000), "prompt 0, clip 0: audio is empty"),
        (lambda p: p(text=["<speech>"], audio=[noise_clip(31.0)], sampling_rate=16000), "31.0 s long"),
        (lambda p: p(text=["<speech>"], audio=[noise_clip(0.05)], sampling_rate=16000), "50 ms long"),
        (lambda p: p(text=["hi", "<speech> <speech>"], audio=[None, noise_clip(1.0)], sampling_rate=16000),
         "prompt 1 has 2 <speech> token(s) but 1 audio clip(s)"),
        (lambda p: p(text=["hi"], audio=[noise_clip(1.0)], sampling_rate=16000), "prompt 0 has 0 <speech> token(s) but 1"),
        (lambda p: p(text=["a", "b"], audio=[None], sampling_rate=16000), "got 2 prompts but 1 audio entries"),
        (lambda p: p(text=["<speech>"], audio=[np.full(16000, np.nan, np.float32)], sampling_rate=16000), "NaN"),
        (lambda p: p(text=["<speech>"], audio=[np.zeros((2, 2, 100), np.float32)], sampling_rate=16000), "shape (2, 2, 100)"),
    ],
)
def test_processor_rejects_bad_input_with_named_item(tiny, make_call, message):
    _, processor = tiny
    with pytest.raises(ValueError) as error:
        make_call(processor)
    assert message in str(error.value)


def test_processor_downmixes_stereo_with_warning(tiny):
    _, processor = tiny
    mono = noise_clip(1.0)
    stereo = np.stack([mono, mono], axis=1)
    with pytest.warns(UserWarning, match="down-mixing"):
        from_stereo = processor(text=["<speech>"], audio=[stereo], sampling_rate=16000)
    from_mono = processor(text=["<speech>"], audio=[mono], sampling_rate=16000)
    assert torch.allclose(from_stereo["input_features"], from_mono["input_features"])


def test_model_reports_placeholder_feature_mismatch_with_both_counts(tiny):
    model, processor = tiny
    inputs = processor(text=["<speech>"], audio=[noise_clip(1.0)], sampling_rate=16000)
    n = int((inputs["input_ids"] == processor.speech_token_id).sum())
    truncated = inputs["input_ids"][:, 1:]
    with pytest.raises(ValueError, match=rf"hold {n - 1} <speech> placeholder tokens .* gives {n} adaptor frames"):
        model(input_ids=truncated, input_features=inputs["input_features"], input_features_mask=inputs["input_features_mask"])
    with pytest.raises(ValueError, match=rf"hold {n} <speech> .* gives 0 adaptor frames"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="80 mel bins|mel bins"):
        model(input_ids=inputs["input_ids"], input_features=inputs["input_features"][:, :40])


def test_chat_template_accepts_multimodal_messages_and_adds_system_prompt(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "\nWhat is said?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.count("<speech>") == 1
    assert "You are a helpful language and speech assistant." in rendered
    assert rendered.rstrip().endswith("assistant")
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert "speech assistant" not in processor.apply_chat_template(own_system)
    batch = processor.apply_chat_template([messages, own_system])
    assert isinstance(batch, list) and len(batch) == 2
    messages[0]["content"][0]["audio"] = noise_clip(1.0)
    tokenized = processor.apply_chat_template(messages, tokenize=True)
    assert tokenized["input_features"].shape[0] == 1
    with pytest.raises(ValueError, match="unsupported content item type 'image'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}])


def test_speech_instruction_is_a_saved_processor_field(tiny_model_dir, tmp_path):
    from modeling_speech_llama import SpeechLlamaProcessor
    from modeling_speech_llama.processing_speech_llama import DEFAULT_SPEECH_INSTRUCTION
    from speech_llama.prompts import qa_prompt

    processor = SpeechLlamaProcessor.from_pretrained(tiny_model_dir)
    assert processor.speech_instruction == DEFAULT_SPEECH_INSTRUCTION
    assert qa_prompt(processor, speech=True).count("Please directly answer the questions in the user's speech.") == 1
    processor.speech_instruction = ""
    processor.save_pretrained(tmp_path)
    reloaded = SpeechLlamaProcessor.from_pretrained(tmp_path)
    assert reloaded.speech_instruction == ""
    alone = qa_prompt(reloaded, speech=True)
    assert "Please directly answer" not in alone
    # The clip ends the user turn, as a typed question does in its text-input prompt.
    typed = qa_prompt(reloaded, question="QUESTION")
    assert alone == typed.replace("QUESTION", "<speech>")
    with pytest.raises(ValueError, match="speech_instruction must be a string"):
        SpeechLlamaProcessor(processor.feature_extractor, processor.tokenizer, speech_instruction=None)


def test_cli_build_tiny_random(tmp_path):
    from apps.cli import main

    assert main(["build", "--preset", "tiny-random", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_fresh_adaptor_is_seeded_so_builds_repeat(tmp_path):
    """The adaptor is the only random part of an offline-mini build: the same parts give the same weights."""
    from safetensors.torch import load_file

    from speech_llama.presets import build_tiny_random

    torch.manual_seed(123)  # the global RNG state must not matter
    first = load_file(build_tiny_random(tmp_path / "a", seed=1) / "model.safetensors")
    second = load_file(build_tiny_random(tmp_path / "b", seed=2) / "model.safetensors")
    adaptor = [name for name in first if name.startswith("adaptor.")]
    assert adaptor and all(torch.equal(first[name], second[name]) for name in adaptor)
    assert not torch.equal(first["language_model.model.embed_tokens.weight"], second["language_model.model.embed_tokens.weight"])


def test_built_folders_are_readable_by_other_users(tmp_path):
    """safetensors writes through mkstemp (0600); a model folder is for sharing, so every file gets the umask's mode."""
    import os
    import stat

    from speech_llama.presets import build_tiny_random

    old = os.umask(0o022)
    try:
        folder = build_tiny_random(tmp_path / "tiny")
    finally:
        os.umask(old)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
