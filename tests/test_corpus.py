"""The speech corpus: voices, LLM-written texts, clip plans, per-clip files (resumable), coverage, build."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from alignment import corpus as corpus_build
from alignment import clips as corpus_clips
from alignment import texts as corpus_texts_module
from speech_llama import tts as corpus_voices
from alignment.corpus import build_corpus, held_out_records
from alignment.clips import (
    NOISE_SNRS_DB,
    PEAK_RANGE,
    REVERBS,
    TEMPOS,
    is_done,
    make_clips,
    plain_clips,
    plan_clips,
)
from alignment.coverage import coverage
from alignment.texts import (
    MAX_WORDS,
    QUESTION_OPENERS,
    QUESTION_TEMPLATE,
    SENTENCE_TEMPLATE,
    TOPICS,
    clean_generated,
    corpus_texts,
    distinct_texts,
    frequent_words,
    generate_replies,
    llm_prompts,
    word_lists,
)
from speech_llama.tts import (
    HELD_OUT_SPEAKER,
    VOICES,
    Perturbation,
    check_engine,
    perturb,
    speak,
    speak_many,
    training_voices,
    voice_named,
)
from speech_llama.text import normalized
from speech_llama.files import read_jsonl, write_jsonl

FAST_VOICES = ["flite-awb", "flite-rms"]  # flite: ~50 ms a clip


def sine(seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# --- voices -------------------------------------------------------------------------------------


def test_training_voices_leave_out_every_voice_of_the_held_out_speaker():
    names = {voice.name for voice in training_voices()}
    assert HELD_OUT_SPEAKER == "slt"
    assert "flite-slt" not in names and "festival-slt" not in names  # same recorded person, two engines
    assert names == {name for name, voice in VOICES.items() if voice.speaker != "slt"}
    assert len(names) == len(VOICES) - 2
    other = {voice.name for voice in training_voices("kal")}
    assert "festival-kal" not in other and "flite-kal16" not in other and {"flite-slt", "festival-slt"} <= other


def test_voice_named_lists_the_voices_when_unknown():
    assert voice_named("flite-awb").engine == "flite"
    with pytest.raises(ValueError, match="unknown voice 'nobody'.*flite-awb"):
        voice_named("nobody")


def test_missing_engine_is_one_line_naming_the_apt_get_install(monkeypatch):
    check_engine(voice_named("flite-awb"))  # installed here: no error
    monkeypatch.setattr(corpus_voices.shutil, "which", lambda command: None)
    with pytest.raises(FileNotFoundError) as error:
        check_engine(voice_named("flite-awb"))
    message = str(error.value)
    assert "\n" not in message and "apt-get install -y flite " in message and "'flite-awb'" in message
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng"):
        speak_many(voice_named("espeak-us"), ["Nothing is spoken."])
    check_engine(voice_named("piper-joe"))  # a Python package, not an apt engine


def test_missing_festival_voice_names_its_package(monkeypatch):
    monkeypatch.setattr(corpus_voices, "_festival_voice_installed", lambda engine_voice: False)
    with pytest.raises(FileNotFoundError) as error:
        check_engine(voice_named("festival-kal"))
    assert "\n" not in str(error.value) and "apt-get install -y festvox-kallpc16k" in str(error.value)


def test_empty_text_is_refused():
    with pytest.raises(ValueError, match="empty text"):
        speak_many(voice_named("flite-awb"), ["A fine day.", "   "])


def test_flite_speaks_16k_float_mono():
    short = speak(voice_named("flite-awb"), "Hello there.")
    long = speak(voice_named("flite-awb"), "The quick brown fox jumps over the lazy dog near the river bank.")
    for samples in (short, long):
        assert samples.ndim == 1 and samples.dtype == np.float32
        assert np.abs(samples).max() <= 1.0 and np.abs(samples).max() > 0.05
    assert 0.3 < len(short) / 16000 < 3.0  # plausible seconds at 16 kHz
    assert len(long) > 2 * len(short)


def test_festival_speaks_a_batch_in_one_process_like_one_at_a_time():
    voice = voice_named("festival-kal")
    texts = ["The cat sat on the mat.", 'He said "hello" to a friend.']  # a quote must not break the script
    batch = speak_many(voice, texts)
    assert len(batch) == 2 and len(batch[0]) != len(batch[1])
    for samples, text in zip(batch, texts):
        np.testing.assert_array_equal(samples, speak(voice, text))
        assert samples.dtype == np.float32 and np.abs(samples).max() <= 1.0


def test_piper_voice_options_change_the_speaking_rate():
    slow_voice, fast_voice = voice_named("piper-joe-slow"), voice_named("piper-joe-fast")
    for voice in (slow_voice, fast_voice):
        clip = speak(voice, "Rivers flow to the sea.")
        assert clip.dtype == np.float32 and 0 < np.abs(clip).max() <= 1.0
    # Piper draws its durations at random (noise_w_scale; the fast voice's 1.0 moved the ratio below
    # 1.2 in one CI-like run): the rate itself is compared with that noise off.
    def steady(voice):
        return dataclasses.replace(voice, options={**voice.options, "noise_w_scale": 0.0})

    slow = speak(steady(slow_voice), "Rivers flow to the sea.")  # length_scale 1.2
    fast = speak(steady(fast_voice), "Rivers flow to the sea.")  # length_scale 0.85
    assert len(slow) > 1.2 * len(fast)


def test_identity_perturbation_keeps_the_samples():
    samples = sine()
    assert Perturbation().is_identity and not Perturbation(reverb=20).is_identity
    np.testing.assert_array_equal(perturb(samples, Perturbation(), seed=0), samples)


def test_noise_is_seeded_at_the_requested_snr():
    samples = sine(2.0)
    noisy = perturb(samples, Perturbation(noise_snr_db=20.0), seed=3)
    np.testing.assert_array_equal(noisy, perturb(samples, Perturbation(noise_snr_db=20.0), seed=3))
    assert not np.array_equal(noisy, perturb(samples, Perturbation(noise_snr_db=20.0), seed=4))
    noise = noisy.astype(np.float64) - samples
    snr = 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 20.0) < 0.5
    assert noisy.dtype == np.float32 and np.abs(noisy).max() <= 1.0


@pytest.mark.parametrize("tempo", [0.9, 1.1])
def test_sox_tempo_changes_the_duration(tempo):
    samples = sine(1.0)
    out = perturb(samples, Perturbation(tempo=tempo), seed=0)
    assert out.dtype == np.float32
    assert abs(len(out) - len(samples) / tempo) < 0.02 * len(samples)
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert abs(peak_hz - 440) < 5  # tempo keeps the pitch (a speed change would move it to 440·tempo)


def test_sox_reverb_changes_the_samples():
    samples = sine(1.0)
    out = perturb(samples, Perturbation(reverb=40), seed=0)
    assert len(out) >= len(samples) and np.abs(out[: len(samples)] - samples).max() > 0.01
    assert np.abs(out).max() <= 1.0


# --- texts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('Here is a question: "What is the tallest mountain in the world?"', "What is the tallest mountain in the world?"),
        ("the sun rises in the east. It sets in the west.", "The sun rises in the east."),
        ("Why do cats purr so much?\nBecause they are happy.", "Why do cats purr so much?"),
        ("Sentence: The river flows to the sea.", "The river flows to the sea."),
        ("Bees make honey in their hives!", "Bees make honey in their hives!"),
        (" ".join(["cat"] * MAX_WORDS) + ".", "Cat" + " cat" * (MAX_WORDS - 1) + "."),
        ("There are 7 days in a week.", None),  # digits: a TTS engine would read them its own way
        ("Hello there.", None),  # under 4 words
        (" ".join(["cat"] * (MAX_WORDS + 1)) + ".", None),  # over 20 words
        ("Here is a sentence about cats and dogs.", None),  # talks about the task
        ("Cats (and dogs) are pets we love.", None),  # not plain text
        ("The café is open late today.", None),  # not ASCII letters
    ],
)
def test_clean_generated(reply, expected):
    assert clean_generated(reply) == expected


def test_normalized_is_lowercase_words_only():
    assert normalized("  What's the Capital, of FRANCE?! ") == "what's the capital of france"
    assert normalized("42 ...") == ""


def test_distinct_texts_drop_duplicates_and_held_out_questions_in_order():
    sources = [("prompts", "Who wrote Hamlet?"), ("prompts", "Where do penguins live?"),
               ("llm", "where do PENGUINS live"), ("llm", "What is the capital of France?"),
               ("llm", "1234"), ("llm", "Bees make honey.")]
    kept = distinct_texts(sources, held_out=["what is the capital of france", "Who wrote Hamlet"])
    assert kept == [("prompts", "Where do penguins live?"), ("llm", "Bees make honey.")]


def test_llm_prompts_are_seeded_and_cycle_the_topics_through_the_openers():
    count = len(TOPICS) * len(QUESTION_OPENERS) + 5
    prompts = llm_prompts(count, 4, seed=1)
    assert prompts == llm_prompts(count, 4, seed=1) and prompts != llm_prompts(count, 4, seed=2)
    assert len(prompts) == count + 4
    questions, sentences = prompts[:count], prompts[count:]
    every_pair = {QUESTION_TEMPLATE.format(topic=topic, opener=opener) for topic in TOPICS for opener in QUESTION_OPENERS}
    assert every_pair == set(questions)
    assert len([q for q in questions if f'"{QUESTION_OPENERS[0]}"' in q]) == len(TOPICS) + 5
    assert sentences == [SENTENCE_TEMPLATE.format(word=word) for word in frequent_words(4)]


def test_frequent_words_skip_the_commonest_and_are_plain():
    words = frequent_words(30)
    assert len(words) == 30 == len(set(words))
    assert all(word.isalpha() and word.isascii() and len(word) >= 3 for word in words)
    assert "the" not in words and "and" not in words  # among the 100 commonest
    assert words[10:] == frequent_words(20, skip=110)
    assert frequent_words(5, skip=0)[0] == "the"


def test_corpus_texts_clean_and_filter_the_replies_of_an_injected_llm(tmp_path):
    calls = []

    def replies(prompts, cache_dir, *, seed, progress):
        calls.append((prompts, cache_dir, seed))
        canned = ['Sure: "Where do penguins live in the wild?"', "What is the capital of France?",
                  "Give me three tips for sleeping better.", "It is 5 o'clock.", "Rain falls from grey clouds today."]
        return (canned * len(prompts))[: len(prompts)]

    texts = corpus_texts(["Give me three tips for sleeping better.", "Name a red fruit please."],
                         held_out=["What is the capital of France?"], cache_dir=tmp_path, num_questions=3,
                         num_sentences=2, seed=7, replies=replies)
    assert calls == [(llm_prompts(3, 2, seed=7), tmp_path, 7)]
    assert texts == [("prompts", "Give me three tips for sleeping better."), ("prompts", "Name a red fruit please."),
                     ("llm", "Where do penguins live in the wild?"), ("llm", "Rain falls from grey clouds today.")]


def test_generate_replies_resumes_from_its_chunk_cache(tmp_path, monkeypatch):
    prompts = [f"prompt {index}" for index in range(5)]
    (tmp_path / "chunk-00000.json").write_text(json.dumps({"prompts": prompts[:2], "replies": ["cached 0", "cached 1"]}))
    (tmp_path / "chunk-00001.json").write_text(json.dumps({"prompts": ["other", "prompts"], "replies": ["stale", "stale"]}))
    loads, sampled = [], []

    def fake_writer():  # never the real LLM in tests
        loads.append(1)
        monkeypatch.setitem(corpus_texts_module._WRITER, "model", "model")
        monkeypatch.setitem(corpus_texts_module._WRITER, "tokenizer", "tokenizer")

    monkeypatch.setattr(corpus_texts_module, "_load_writer", fake_writer)
    monkeypatch.setattr(corpus_texts_module, "_sample_replies",
                        lambda model, tokenizer, chunk, seed: sampled.append((chunk, seed)) or [f"new {p}" for p in chunk])
    out = generate_replies(prompts, tmp_path, batch_size=2, seed=3, progress=False, workers=1)
    assert out == ["cached 0", "cached 1", "new prompt 2", "new prompt 3", "new prompt 4"]
    assert sampled == [(prompts[2:4], 3 * 100_003 + 1), (prompts[4:], 3 * 100_003 + 2)]  # chunk 1 was stale
    assert loads == [1]
    assert json.loads((tmp_path / "chunk-00002.json").read_text()) == {"prompts": ["prompt 4"], "replies": ["new prompt 4"]}
    # Everything cached now: the LLM is not even loaded.
    monkeypatch.setattr(corpus_texts_module, "_load_writer", lambda: pytest.fail("LLM loaded although every chunk is cached"))
    assert generate_replies(prompts, tmp_path, batch_size=2, seed=3, progress=False, workers=1) == out


def test_sample_replies_matches_greedy_generate_row_by_row(tiny, monkeypatch):
    """The writer's loop (shared opening run once, mid-row padding, rows leaving the batch) computes
    what `generate` does for each prompt alone: with a nucleus of one token it is greedy decoding,
    cut at the first ending token."""
    import torch

    language_model, tokenizer = tiny[0].language_model, tiny[1].tokenizer
    prompts = ["Name a red fruit.", "Write one short question about the moon and the stars at night.", "Hi."]
    greedy = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            output = language_model.generate(**inputs, do_sample=False, max_new_tokens=12)
        greedy.append(output[0, inputs["input_ids"].shape[1]:].tolist())
    # The random model rarely says a real ending token: make its third token for the first prompt one,
    # so rows leave the batch at different steps.
    ends = frozenset({greedy[0][2]})
    monkeypatch.setattr(corpus_texts_module, "_ending_token_ids", lambda tokenizer: ends)
    replies = corpus_texts_module._sample_replies(language_model, tokenizer, prompts, seed=0, max_new_tokens=12,
                                                  top_p=1e-9)
    cuts = [next((place + 1 for place, token in enumerate(tokens) if token in ends), len(tokens)) for tokens in greedy]
    assert cuts[0] <= 3 and max(cuts) == 12
    assert replies == [tokenizer.decode(tokens[:cut], skip_special_tokens=True) for tokens, cut in zip(greedy, cuts)]


def test_sample_replies_are_seeded_and_stop_at_a_line_break(tiny):
    language_model, tokenizer = tiny[0].language_model, tiny[1].tokenizer
    prompts = [f"Write one simple sentence using the word {word}." for word in ("river", "window", "tiger", "lamp")]
    first = corpus_texts_module._sample_replies(language_model, tokenizer, prompts, seed=5, max_new_tokens=16)
    assert corpus_texts_module._sample_replies(language_model, tokenizer, prompts, seed=5, max_new_tokens=16) == first
    assert corpus_texts_module._sample_replies(language_model, tokenizer, prompts, seed=6, max_new_tokens=16) != first
    assert all("\n" not in reply.rstrip("\n") for reply in first)  # a line break can only end a reply


def test_nucleus_samples_draw_only_from_the_nucleus_with_or_without_the_full_sort():
    import torch

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    for candidates in (4, 1):  # 1: the likeliest token holds < top_p, so the row is sorted whole
        generators = [torch.Generator().manual_seed(seed) for seed in range(400)]
        draws = corpus_texts_module._nucleus_samples(logits.expand(400, 4), 1.0, 0.7, generators, candidates=candidates)
        assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are outside
        assert 0.5 < draws.count(0) / 400 < 0.75  # 0.5 / 0.8 = 0.625 within the nucleus
    generators = [torch.Generator().manual_seed(seed) for seed in range(3)]
    again = [torch.Generator().manual_seed(seed) for seed in range(3)]
    flat = torch.zeros(3, 50)
    assert (corpus_texts_module._nucleus_samples(flat, 0.9, 0.95, generators, candidates=8)
            == corpus_texts_module._nucleus_samples(flat, 0.9, 0.95, again, candidates=8))


def test_shared_length_leaves_every_row_a_token_of_its_own():
    assert corpus_texts_module._shared_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert corpus_texts_module._shared_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert corpus_texts_module._shared_length([[7], [7, 8]]) == 0


def test_corpus_encoder_runs_in_the_fast_precision_and_stays_close_to_float32(tiny_model_dir, monkeypatch):
    import torch

    from alignment.encoder import FrozenSpeechEncoder

    monkeypatch.setattr("speech_llama.precision.cpu_runs_bfloat16", lambda: True)
    assert corpus_clips.encoder_dtype_name() == "bfloat16"
    monkeypatch.setattr("speech_llama.precision.cpu_runs_bfloat16", lambda: False)
    assert corpus_clips.encoder_dtype_name() == "float32"
    clip = sine(1.0)
    fast, exact = FrozenSpeechEncoder(tiny_model_dir, dtype="bfloat16"), FrozenSpeechEncoder(tiny_model_dir)
    assert fast.dtype == torch.bfloat16 and exact.dtype == torch.float32
    low, high = fast.states(clip, where="test"), exact.states(clip, where="test")
    assert low.dtype == high.dtype == np.float16 and low.shape == high.shape
    cosine = (low.astype(np.float32) * high).sum(-1) / np.linalg.norm(low.astype(np.float32), axis=-1) / np.linalg.norm(high.astype(np.float32), axis=-1)
    assert cosine.min() > 0.99


# --- clip plans -----------------------------------------------------------------------------------


def test_plan_is_deterministic_and_reads_each_text_with_different_voices():
    voices = training_voices()
    texts = ["Who wrote Hamlet?", "Where do penguins live?", "Name a red fruit."]
    plan = plan_clips(texts, voices, total_clips=20, seed=5)
    assert plan == plan_clips(texts, voices, total_clips=20, seed=5)
    assert plan != plan_clips(texts, voices, total_clips=20, seed=6)
    assert len(plan) == 20 and [clip.text for clip in plan[:3]] == texts  # every text once, first
    names = {voice.name for voice in voices}
    for text in texts:
        used = [clip.voice for clip in plan if clip.text == text]
        assert len(used) == len(set(used)) and set(used) <= names  # ≤ 14 readings: all different voices
    assert len({clip.stem for clip in plan}) == 20
    assert all(clip.stem.startswith(f"{index:06d}-") for index, clip in enumerate(plan))
    for clip in plan:
        assert clip.perturbation.tempo in TEMPOS and clip.perturbation.reverb in REVERBS
        assert clip.perturbation.noise_snr_db in NOISE_SNRS_DB and PEAK_RANGE[0] <= clip.peak <= PEAK_RANGE[1]
    assert len({clip.voice for clip in plan}) > 3 and len({clip.perturbation for clip in plan}) > 3


def test_plan_numbers_a_second_plan_after_the_first():
    voices = training_voices()
    first = plan_clips(["Who wrote Hamlet?"], voices, total_clips=2, seed=0)
    second = plan_clips(["Paris, river, window."], voices, total_clips=2, seed=2, first_index=len(first))
    assert [clip.stem[:6] for clip in first + second] == ["000000", "000001", "000002", "000003"]


def test_word_lists_hear_every_word_exactly_hearings_times_never_twice_in_a_list(tiny):
    _, processor = tiny
    words = ["river", "window", "paris", "garden", "thailand", "table", "music", "orange", "pencil", "market", "bridge"]
    lists = word_lists(words, processor.tokenizer, hearings=3, per_list=4, seed=1)
    assert lists == word_lists(words, processor.tokenizer, hearings=3, per_list=4, seed=1)
    assert lists != word_lists(words, processor.tokenizer, hearings=3, per_list=4, seed=2)
    assert len(lists) == 3 * 3  # each pass: 11 words → lists of 4, 4, 3
    spoken = [[word.lower() for word in text.rstrip(".").split(", ")] for text in lists]
    assert all(len(entry) == len(set(entry)) and len(entry) <= 4 for entry in spoken)
    heard = [word for entry in spoken for word in entry]
    assert sorted(set(heard)) == sorted(words) and all(heard.count(word) == 3 for word in words)
    assert all(text[0].isupper() and text.endswith(".") for text in lists)


def test_word_lists_capitalise_names_the_tokenizer_spells_shorter(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    texts = word_lists(["paris", "window"], tokenizer, hearings=2, per_list=2, seed=0)
    words = {word for text in texts for word in text.rstrip(".").split(", ")}
    # SmolLM2's tokenizer: " Paris" is one token, " paris" two; " window" is one token, " Window" too.
    assert len(tokenizer(" Paris", add_special_tokens=False)["input_ids"]) < len(tokenizer(" paris", add_special_tokens=False)["input_ids"])
    assert "Paris" in words and "paris" not in words
    assert "window" in words or all(text.startswith("Window") for text in texts if "indow" in text)
    with pytest.raises(ValueError, match="hearings ≥ 1 and per_list ≥ 1"):
        word_lists(["paris"], tokenizer, hearings=0, per_list=2, seed=0)


def test_plan_reuses_voices_only_when_every_voice_has_read_the_text():
    voices = [voice_named(name) for name in FAST_VOICES]
    plan = plan_clips(["Only one text here."], voices, total_clips=5, seed=0)
    assert {clip.voice for clip in plan[:2]} == set(FAST_VOICES)
    assert len(plan) == 5 and all(clip.voice in FAST_VOICES for clip in plan)


def test_plain_clips_are_clean_readings_by_one_voice():
    plan = plain_clips(["Who wrote Hamlet?", "Who wrote Hamlet?"], "festival-slt")
    assert all(clip.voice == "festival-slt" and clip.perturbation.is_identity and clip.peak == 0.9 for clip in plan)
    assert plan[0].stem != plan[1].stem
    record = plan[0].record(answers=["Shakespeare"])
    assert record["question"] == "Who wrote Hamlet?" and record["answers"] == ["Shakespeare"]
    assert record["audio"] == f"audio/{plan[0].stem}.wav" and record["features"] == f"features/{plan[0].stem}.npy"
    assert record["tempo"] == 1.0 and record["noise_snr_db"] is None


# --- clip files -----------------------------------------------------------------------------------


def snapshot(folder):
    return {path.relative_to(folder): (path.stat().st_mtime_ns, path.read_bytes())
            for path in folder.rglob("*") if path.is_file()}


def test_make_clips_writes_wav_and_states_and_redoes_only_missing_clips(tiny_model_dir, tmp_path, monkeypatch):
    from speech_llama.audio import read_wav
    from alignment.encoder import FrozenSpeechEncoder

    texts = ["The cat sat on the mat.", "Rivers flow into the sea."]
    plan = plan_clips(texts, [voice_named(name) for name in FAST_VOICES], total_clips=2, seed=1)
    # Both clips get every perturbation (tempo, reverb, seeded noise), so redoing one must reproduce it.
    plan = [corpus_clips.PlannedClip(clip.text, clip.voice, Perturbation(tempo, 20, 25.0), peak, clip.stem)
            for clip, tempo, peak in zip(plan, (0.9, 1.1), (0.8, 0.5))]
    spoken = []
    real_speak_many = corpus_clips.speak_many
    monkeypatch.setattr(corpus_clips, "speak_many", lambda voice, texts: spoken.append(list(texts)) or real_speak_many(voice, texts))
    split = tmp_path / "train"
    make_clips(split, plan, tiny_model_dir, workers=1, progress=False)
    encoder = FrozenSpeechEncoder(tiny_model_dir, dtype=corpus_clips.encoder_dtype_name())
    for clip in plan:
        assert is_done(split, clip)
        samples = read_wav(split / clip.audio)
        assert abs(float(np.abs(samples).max()) - clip.peak) < 1e-3
        states = np.load(split / clip.features)
        assert states.dtype == np.float16
        assert states.shape == (-(-(len(samples) // 160) // 2), encoder.model.config.encoder_config.d_model)
        np.testing.assert_allclose(states.astype(np.float32), encoder.states(samples, where="test"), atol=0.05)
    first = snapshot(split)
    assert not [path for path in first if path.name.startswith(".")]  # no temporary files left

    # A crash while writing clip 0's states leaves no states file (atomic), so a rerun redoes clip 0 only.
    (split / plan[0].features).unlink()
    monkeypatch.setattr(corpus_clips, "_save_npy", lambda path, array: (path.write_bytes(b"torn"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        make_clips(split, plan, tiny_model_dir, workers=1, progress=False)
    assert not (split / plan[0].features).exists() and not [p for p in split.rglob(".*") if p.is_file()]
    monkeypatch.undo()
    monkeypatch.setattr(corpus_clips, "speak_many", lambda voice, texts: spoken.append(list(texts)) or real_speak_many(voice, texts))
    spoken.clear()
    make_clips(split, plan, tiny_model_dir, workers=1, progress=False)
    assert spoken == [[plan[0].text]]
    again = snapshot(split)
    assert again.keys() == first.keys()
    for path in (plan[1].audio, plan[1].features):
        assert again[Path(path)] == first[Path(path)]  # untouched: same bytes and mtime
    # The redone clip is the same clip (the plan fixes voice, perturbation and noise seed).
    for path in (plan[0].audio, plan[0].features):
        assert again[Path(path)][1] == first[Path(path)][1]

    spoken.clear()
    make_clips(split, plan, tiny_model_dir, workers=1, progress=False)
    assert spoken == []  # nothing missing: nothing spoken


# --- coverage ---------------------------------------------------------------------------------------


class WordTokenizer:
    """One token per lowercase word (ids by first sight): makes coverage countable by hand."""

    def __init__(self):
        self.ids = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.ids.setdefault(word, len(self.ids)) for word in re.findall(r"[a-z']+", text.lower())]}


def test_coverage_counts_content_words_heard_at_least_k_times():
    train = ["The cat sat on the mat."] * 3 + ["A dog ran home.", "The cat and the dog."]
    held_out = ["Where is the cat?", "The dog sat down.", "A bird sang."]
    result = coverage(train, held_out, WordTokenizer(), min_count=3)
    # content words of held-out: bird, cat, dog, sang, sat ("down" and the rest are stopwords)
    assert result["held_out_content_words"] == 5
    assert result["words_covered"] == 2  # cat (4x), sat (3x); dog only 2x
    assert result["word_coverage"] == 0.4
    assert result["tokens_covered"] == 2 and result["held_out_tokens"] == 5
    assert result["words_never_heard"] == ["bird", "sang"]
    assert coverage(train, held_out, WordTokenizer(), min_count=2)["words_covered"] == 3


def test_coverage_tokens_are_those_of_words_inside_a_sentence(tiny):
    _, processor = tiny
    result = coverage(["the quick brown fox jumps"] * 3, ["Quick fox!"], processor.tokenizer)
    assert result["word_coverage"] == 1.0
    assert result["token_coverage"] == 1.0  # " quick" inside the sentence is the token " quick" of the word
    assert coverage(["the quick brown fox jumps"] * 2, ["Quick fox!"], processor.tokenizer)["token_coverage"] == 0.0


# --- build ------------------------------------------------------------------------------------------


def test_held_out_records_join_both_qa_sets_without_duplicates():
    records = held_out_records()
    rows = [row for path in corpus_build.HELD_OUT_QA for row in read_jsonl(path)]
    assert len(records) == len({normalized(row["question"]) for row in rows})
    assert records[0]["question"] == rows[0]["question"]
    assert len({normalized(record["question"]) for record in records}) == len(records)
    assert all(isinstance(record["answers"], list) and record["answers"] for record in records)
    demo = read_jsonl(corpus_build.HELD_OUT_QA[1])
    assert {normalized(row["question"]) for row in demo} <= {normalized(record["question"]) for record in records}


def test_build_corpus_small_end_to_end_and_resumable(tiny_model_dir, tmp_path, monkeypatch):
    held_out = [{"question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
                {"question": "What animal barks?", "answer": "a dog"}]
    prompts = ["Give me a tip for sleeping better.", "Name a red fruit please.", "WHO WROTE HAMLET",
               "Tell me about rivers and lakes.", "How do birds fly so far?"]
    write_jsonl(tmp_path / "heldout.jsonl", held_out)
    write_jsonl(tmp_path / "train.jsonl", [{"question": text} for text in prompts])
    monkeypatch.setattr(corpus_build, "HELD_OUT_QA", (tmp_path / "heldout.jsonl",))
    monkeypatch.setattr(corpus_build, "TRAIN_PROMPTS", tmp_path / "train.jsonl")
    monkeypatch.setattr(corpus_build, "DEV_TEXTS", 2)
    monkeypatch.setattr(corpus_build, "training_voices", lambda speaker: [voice_named(name) for name in FAST_VOICES])
    llm_replies = ["What animal barks?", "Cats like to sleep in the warm sun."]
    real_corpus_texts = corpus_build.corpus_texts
    monkeypatch.setattr(corpus_build, "corpus_texts", lambda *args, **kwargs: real_corpus_texts(
        *args, **kwargs, replies=lambda prompts, cache, **_: (llm_replies * len(prompts))[: len(prompts)]))

    out = tmp_path / "corpus"
    monkeypatch.setattr(corpus_build, "frequent_words", lambda count: ["river", "window", "garden"][:count])
    monkeypatch.setattr(corpus_build, "LIST_HEARINGS", 2)
    monkeypatch.setattr(corpus_build, "LIST_LENGTH", 2)
    manifest = build_corpus(out, tiny_model_dir, clips=6, llm_questions=1, llm_sentences=1, list_words=3, workers=1,
                            progress=False)
    assert json.loads((out / "corpus.json").read_text()) == manifest
    assert manifest["splits"]["train"]["clips"] == 6 + 4 and manifest["splits"]["dev"]["clips"] == 2  # + 2 passes of 2 lists
    assert manifest["splits"]["heldout"]["clips"] == 2 and manifest["splits"]["heldout"]["texts"] == 2
    assert manifest["splits"]["train"]["texts"] == 3 + 4  # 5 kept texts (4 prompts + 1 LLM sentence) minus 2 dev, + 4 lists
    assert all(manifest["splits"][name]["hours"] > 0 for name in ("train", "dev", "heldout"))
    assert set(manifest["training_voices"]) <= set(FAST_VOICES) and manifest["held_out_voice"] == "festival-slt"
    assert manifest["coverage"]["held_out_content_words"] > 0

    held = {normalized(row["question"]) for row in held_out}
    rows = {name: read_jsonl(out / name / "data.jsonl") for name in ("train", "dev", "heldout")}
    for name in ("train", "dev"):
        assert not {normalized(row["question"]) for row in rows[name]} & held
        assert all(row["source"] in ("prompts", "llm", "wordlist") and row["voice"] in FAST_VOICES for row in rows[name])
    lists = [row["question"] for row in rows["train"] if row["source"] == "wordlist"]
    assert len(lists) == 4
    assert sorted(word.lower() for text in lists for word in text.rstrip(".").split(", ")) == sorted(["river", "window", "garden"] * 2)
    assert not any(row["source"] == "wordlist" for row in rows["dev"])
    assert not {row["question"] for row in rows["train"]} & {row["question"] for row in rows["dev"]}
    assert [row["question"] for row in rows["heldout"]] == ["Who wrote Hamlet?", "What animal barks?"]
    assert [row["answers"] for row in rows["heldout"]] == [["Shakespeare"], ["a dog"]]
    assert all(row["voice"] == "festival-slt" for row in rows["heldout"])
    for name, split_rows in rows.items():
        for row in split_rows:
            assert (out / name / row["audio"]).is_file() and (out / name / row["features"]).is_file()
            assert soundfile.info(str(out / name / row["audio"])).samplerate == 16000

    monkeypatch.setattr(corpus_clips, "speak_many", lambda *a: pytest.fail("a finished corpus was synthesised again"))
    assert build_corpus(out, tiny_model_dir, clips=6, llm_questions=1, llm_sentences=1, list_words=3, workers=1,
                        progress=False) == manifest
