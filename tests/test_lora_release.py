"""The shipped Stage-1 LoRA model (trainers/release.py): targets, training on cached states (resumable),
release files verified, and the merged assembly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from release_checks import assert_reads_held_out_speech

from speech_llama.files import write_jsonl
from speech_llama.generate import load_model
from speech_llama.prompts import TRANSCRIPT_INSTRUCTION
from speech_llama.release_files import ReleaseError, sha256_of
from trainers import release

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROWS = [("What is the capital of France?", "prompts"), ("Name a red fruit.", "prompts"),
        ("The cat sat on the warm mat.", "llm"), ("Lemon, taxi, office, wall.", "wordlist"),
        ("How many legs does a spider have?", "prompts"), ("Rivers run to the sea.", "llm")]


@pytest.fixture()
def tiny_corpus(tiny, tmp_path):
    """A corpus folder shaped like `speech-llama corpus`'s: train and dev splits of cached encoder states."""
    model, _ = tiny
    width = model.config.encoder_config.d_model
    rng = np.random.default_rng(0)
    for split in ("train", "dev"):
        (tmp_path / "corpus" / split / "features").mkdir(parents=True)
        rows = []
        for index, (text, source) in enumerate(ROWS):
            features = f"features/{index:06d}.npy"
            np.save(tmp_path / "corpus" / split / features, rng.standard_normal((40 + 5 * index, width)).astype(np.float16))
            rows.append({"question": text, "features": features, "source": source})
        write_jsonl(tmp_path / "corpus" / split / "data.jsonl", rows)
    return tmp_path / "corpus"


def _clips(corpus, split="train"):
    responses = {text: f"An answer about {text.split()[0].lower()}." for text, _ in ROWS}
    return release.training_clips(corpus, split, responses)


def test_word_lists_are_read_back_and_answerable_clips_answered_as_the_draw_says(tiny_corpus):
    clips = _clips(tiny_corpus)
    assert [bool(clip.response) for clip in clips] == [True, True, True, False, True, True]
    settings = release.LoraReleaseSettings(transcript_ratio=0.25)
    assert release._target(clips[0], 0.9, settings) == (clips[0].response, None)
    assert release._target(clips[0], 0.1, settings) == (clips[0].transcript, TRANSCRIPT_INSTRUCTION)
    assert release._target(clips[3], 0.9, settings) == ("Lemon, taxi, office, wall.", TRANSCRIPT_INSTRUCTION)
    assert release.corpus_texts_needing_responses(tiny_corpus, "train") == sorted(
        [text for text, source in ROWS if source != "wordlist"], key=lambda text: (len(text), text))


def test_a_row_holds_one_placeholder_per_frame_and_a_capped_completion(tiny):
    _, processor = tiny
    ids, kept = release._row_ids(processor, "one two three four five six seven eight", None, frames=7, max_tokens=4)
    assert ids.count(processor.tokenizer.convert_tokens_to_ids(processor.speech_token)) == 7 and kept == 4
    full, kept_all = release._row_ids(processor, "yes", None, frames=3, max_tokens=32)
    assert kept_all < 32 and processor.tokenizer.decode(full[-kept_all:]).startswith("yes")


def test_missing_cached_features_are_named(tiny_corpus):
    (tiny_corpus / "train" / "features" / "000002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"train/data.jsonl, line 3: cached features .*000002.npy are missing"):
        _clips(tiny_corpus)


def _train(tiny_model_dir, corpus, out, steps=3, **overrides):
    model, processor = load_model(tiny_model_dir)
    settings = release.LoraReleaseSettings(steps=steps, batch_size=3, warmup_steps=1, lora_rank=4, checkpoint_every=1,
                                           eval_every=2, bf16=False, **overrides)
    return release.train_lora_release(model, processor, _clips(corpus), _clips(corpus, "dev"), out, settings,
                                      progress=False), settings


def _trained_state(peft_model):
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    straight, _ = _train(tiny_model_dir, tiny_corpus, tmp_path / "straight")
    log = [json.loads(line) for line in (tmp_path / "straight" / release.LORA_LOG).read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3] and "dev_response_loss" in log[1] and "dev_response_loss" in log[2]
    assert all(np.isfinite(entry["loss"]) for entry in log)

    calls = {"n": 0}
    original = release.batch_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third training batch (step 2's dev loss runs without gradients, first)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(release, "batch_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_dir, tiny_corpus, tmp_path / "resumed")
    monkeypatch.setattr(release, "batch_loss", original)
    resumed, _ = _train(tiny_model_dir, tiny_corpus, tmp_path / "resumed")
    expected, actual = _trained_state(straight), _trained_state(resumed)
    assert expected.keys() == actual.keys() and any("adaptor" in name for name in actual)
    for name in expected:
        assert torch.allclose(expected[name], actual[name], atol=1e-6), name


def test_resuming_with_other_settings_is_refused(tiny_model_dir, tiny_corpus, tmp_path):
    _train(tiny_model_dir, tiny_corpus, tmp_path / "run", steps=1)
    with pytest.raises(ValueError, match="lora-state.pt was written with other settings"):
        _train(tiny_model_dir, tiny_corpus, tmp_path / "run", steps=1, learning_rate=1e-3)


def test_the_release_round_trips_and_assembles_into_the_merged_model(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    import alignment.release

    trained, settings = _train(tiny_model_dir, tiny_corpus, tmp_path / "run", steps=2)
    summary = {"settings": {**vars(settings)}, "corpus": {"train": {"clips": 6, "hours": 0.01}}, "clips_seen": 6}
    out = release.write_lora_release(trained, tmp_path / "release", summary, figures={"held-out S2T": "0.5"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == release.LORA_NAME and manifest["lora"]["r"] == 4 and manifest["dtype"] == "bfloat16"
    assert manifest["files"][release.LORA_FILE]["sha256"] == sha256_of(out / release.LORA_FILE)
    state, _ = release.read_lora_release(out)
    assert all(torch.equal(state[name], tensor.to(torch.bfloat16).float()) for name, tensor in _trained_state(trained).items())

    def fresh_aligned(folder=None):
        model, processor = load_model(tiny_model_dir)
        return model, processor, {"name": "tiny"}

    monkeypatch.setattr(alignment.release, "aligned_model", fresh_aligned)
    folder = release.assemble_lora(tmp_path / "assembled", out)
    merged, processor = load_model(folder)
    card = (folder / "README.md").read_text()
    assert "Stage 1 with LoRA (r=4" in card and "Measured: held-out S2T: 0.5" in card
    # The merged folder computes what the trained adapters (rounded to the shipped bf16) compute.
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(trained, state)
    trained.eval()
    ids = processor.tokenizer(["Name a red fruit."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-4)


def test_a_damaged_lora_release_is_refused(tiny_model_dir, tiny_corpus, tmp_path):
    trained, settings = _train(tiny_model_dir, tiny_corpus, tmp_path / "run", steps=1)
    out = release.write_lora_release(trained, tmp_path / "release", {"settings": vars(settings)})
    data = bytearray((out / release.LORA_FILE).read_bytes())
    data[-1] ^= 0xFF
    (out / release.LORA_FILE).write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match=r"lora.safetensors: sha256 .* does not match the manifest"):
        release.read_lora_release(out)
    release.write_lora_release(trained, out, {"settings": vars(settings)})
    from speech_llama.release_files import record_figures

    record_figures(out, {"held-out S2T": "0.4"})
    assert release.read_lora_release(out)[1]["figures"] == {"held-out S2T": "0.4"}
    (out / release.LORA_FILE).unlink()
    assert not release.lora_release_available(out)
    with pytest.raises(ReleaseError, match="lora.safetensors is missing.*--preset speech-llama-lora-mini --retrain"):
        release.read_lora_release(out)


@pytest.mark.real_weights
def test_the_shipped_lora_release_assembles_and_answers_an_unseen_voice(tmp_path):
    """The shipped LoRA release passes its checksum, assembles on the aligned release and the offline
    weights, reads held-out-voice clips about as well as its manifest says, and answers a question
    recorded by a voice no training set holds (flite's slt)."""
    from speech_llama.audio import read_audio
    from speech_llama.batching import continuous_greedy_answers

    state, manifest = release.read_lora_release()
    assert manifest["files"][release.LORA_FILE]["bytes"] < 40e6
    folder = release.assemble_lora(tmp_path / "lora")
    model, processor = load_model(folder)
    assert all(torch.equal(model.adaptor.state_dict()[name.removeprefix("base_model.model.adaptor.")], tensor)
               for name, tensor in state.items() if ".adaptor." in name)
    assert_reads_held_out_speech(model, processor, manifest)
    clip = read_audio(str(FIXTURES / "capital-of-france-flite-slt.wav"), where="the flite-slt fixture")
    answer = continuous_greedy_answers(model, processor, [None], [clip], batch_size=1, max_new_tokens=32)[0]
    assert "paris" in answer.lower(), answer


def test_the_recipe_runs_end_to_end_and_a_rerun_reuses_its_work(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    import shutil

    import alignment.release
    from alignment.preset import ALIGNED_ADAPTOR
    from modeling_speech_llama import SpeechLlamaForCausalLM
    from speech_llama.remote_code import load_processor

    shutil.copytree(tiny_corpus / "dev", tiny_corpus / "heldout")
    (tiny_corpus / "corpus.json").write_text(json.dumps({"splits": {"train": {"clips": 6, "hours": 0.01}}}))

    def aligned(folder=None):
        model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **ALIGNED_ADAPTOR).eval()
        return model, load_processor(tiny_model_dir), {"name": "tiny-aligned", "files": {"adaptor.safetensors": {"sha256": "0"}}}

    monkeypatch.setattr(alignment.release, "aligned_model", aligned)
    monkeypatch.setattr(release, "_aligned_folder", lambda work_dir: tiny_model_dir)
    settings = release.LoraReleaseSettings(steps=2, batch_size=3, warmup_steps=1, lora_rank=4, eval_every=2,
                                           response_tokens=4, bf16=False)
    out = release.build_lora_release(settings, tmp_path / "work", tiny_corpus, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["aligned_release"] == "tiny-aligned" and summary["clips_seen"] == 6 and summary["settings"]["steps"] == 2
    assert 0 <= summary["heldout_ctc_wer"] and 0 <= summary["dev_ctc_wer"] and len(summary["dev_response_loss"]) == 1
    responses = (tmp_path / "work" / "responses" / "train-4-tokens").glob("chunk-*.jsonl")
    assert sum(len(path.read_text().splitlines()) for path in responses) == 5  # the word list is read back, not answered
    monkeypatch.setattr(release, "train_lora_release", lambda *args, **kwargs: pytest.fail("a finished release retrained"))
    assert release.build_lora_release(settings, tmp_path / "work", tiny_corpus, progress=False) == out


def test_resumed_logs_count_each_step_once_and_every_process_time():
    log = [{"step": 1, "seconds": 10.0}, {"step": 2, "seconds": 20.0}, {"step": 3, "seconds": 30.0},
           {"step": 3, "seconds": 12.0}, {"step": 4, "seconds": 22.0}]
    assert [entry["seconds"] for entry in release.last_entry_per_step(log)] == [10.0, 20.0, 12.0, 22.0]
    assert release.training_seconds(log) == 52
