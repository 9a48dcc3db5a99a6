"""CTC alignment on cached encoder states (alignment/training.py, alignment/ctc.py) and
the `readback` evaluation task (the model repeats what was said)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from helpers import noise_clip

import speech_llama.batching as batching
from modeling_speech_llama import SpeechLlamaForCausalLM
from speech_llama.batching import continuous_greedy_answers
from speech_llama.evaluation import evaluate_model, readback_scores
from speech_llama.files import read_jsonl, write_jsonl
from modeling_speech_llama.processing_speech_llama import DEFAULT_SPEECH_INSTRUCTION as SPEECH_INSTRUCTION
from speech_llama.prompts import TRANSCRIPT_INSTRUCTION, qa_inputs
from alignment import training as speech_alignment
from alignment.ctc import ctc_loss_from_states, greedy_ctc_tokens
from alignment.training import (
    STATE_NAME,
    AlignmentSettings,
    CachedClip,
    batch_tensors,
    ctc_word_error_rate,
    load_split,
    train_alignment,
)

TEXTS = ["The cat sat on the mat.", "A dog ran home.", "Bees make honey.", "Rivers flow to the sea.",
         "Who wrote Hamlet?", "Birds fly south.", "Name a red fruit.", "The sun is hot."]


def fresh(model_dir, adaptor_type: str = "ctc_embedding_mixture"):
    # The folder holds no blank parameters: seeded, so every fresh model starts from the same ones,
    # as a model loaded from one folder would.
    torch.manual_seed(0)
    return SpeechLlamaForCausalLM.from_pretrained(model_dir, adaptor_type=adaptor_type).eval()


def blank_frame(model) -> torch.Tensor:
    """A frame the vocabulary head reads as the CTC blank: `blank_query`, the direction it scores the blank by."""
    return model.adaptor.blank_query.detach()


def spelled(model, tokens: list[int]) -> np.ndarray:
    """(2·len, d_llm) frames: each token's embedding row, then the blank (pass with an identity project)."""
    embeddings = model.get_input_embeddings().weight.detach()
    return torch.stack([frame for token in tokens for frame in (embeddings[token], blank_frame(model))]).numpy()


def identity_projection(model, monkeypatch) -> None:
    """Frames given straight to the vocabulary head: `project` is the identity, one frame per position."""
    monkeypatch.setattr(model.adaptor, "project", lambda states: states)
    monkeypatch.setattr(model.config, "adaptor_downsample", 1)


# --- CTC pieces -----------------------------------------------------------------------------------


def test_greedy_ctc_tokens_merge_repeats_and_drop_blanks():
    blank = 0
    best = [blank, 5, 5, blank, 5, 7, 7, blank, 9]
    log_probs = torch.full((len(best), 10), -5.0)
    log_probs[torch.arange(len(best)), torch.tensor(best)] = 0.0
    assert greedy_ctc_tokens(log_probs, len(best), blank) == [5, 5, 7, 9]
    assert greedy_ctc_tokens(log_probs, 8, blank) == [5, 5, 7]  # frames past the clip's count are padding
    assert greedy_ctc_tokens(log_probs[1:3], 2, blank) == [5]
    assert greedy_ctc_tokens(log_probs[:1], 1, blank) == []


def test_ctc_loss_uses_speech_token_as_blank_and_ignores_padding(tiny, tiny_model_dir, monkeypatch):
    _, processor = tiny
    model = fresh(tiny_model_dir)
    identity_projection(model, monkeypatch)
    cat, sat = (processor.tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" cat", " sat"))
    embeddings = model.get_input_embeddings().weight.detach()
    blank = blank_frame(model)
    generator = torch.Generator().manual_seed(0)
    states = torch.stack([
        torch.stack([embeddings[cat], embeddings[cat], blank, embeddings[sat], embeddings[sat]]),
        torch.stack([embeddings[sat], blank, embeddings[sat], *torch.randn(2, embeddings.shape[1], generator=generator)]),
    ])
    counts = [5, 3]  # clip 1's last two frames are padding
    targets = torch.tensor([[cat, sat], [sat, sat]])  # the blank frame separates sat|sat
    lengths = torch.tensor([2, 2])
    loss = ctc_loss_from_states(model, states, counts, targets, lengths)
    assert loss.ndim == 0 and float(loss) < 1e-3
    assert float(ctc_loss_from_states(model, states, counts, torch.tensor([[sat, cat], [sat, sat]]), lengths)) > 5
    assert float(ctc_loss_from_states(model, states, [5, 5], targets, lengths)) > 1  # padding counted: wrong
    padded = states.clone()
    padded[1, 3:] = torch.randn(2, embeddings.shape[1], generator=generator) * 5
    assert torch.equal(ctc_loss_from_states(model, padded, counts, targets, lengths), loss)


def test_linear_mode_adds_the_norm_term_over_real_frames(tiny_model_dir, monkeypatch):
    mixture, linear = fresh(tiny_model_dir), fresh(tiny_model_dir, "linear")
    for model in (mixture, linear):
        identity_projection(model, monkeypatch)
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(2, 6, mixture.config.text_config.hidden_size, generator=generator)
    counts, targets, lengths = [6, 4], torch.tensor([[11, 12], [13, 0]]), torch.tensor([2, 1])

    def ctc_alone(model):
        log_probs = model.adaptor.token_logits(states, model.get_input_embeddings().weight.detach()).log_softmax(-1)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, torch.tensor(counts), lengths,
                          blank=model.config.speech_token_id, zero_infinity=True)

    assert torch.equal(ctc_loss_from_states(mixture, states, counts, targets, lengths), ctc_alone(mixture))
    total = ctc_loss_from_states(linear, states, counts, targets, lengths)
    r = linear.get_input_embeddings().weight.norm(dim=-1).mean()
    real = torch.cat([states[0, :6], states[1, :4]])
    expected_norm_term = ((real.norm(dim=-1) / r - 1) ** 2).mean()
    torch.testing.assert_close(total - ctc_alone(linear), expected_norm_term.detach(), atol=1e-5, rtol=1e-5)
    assert float(expected_norm_term.detach()) > 0.1  # the term is really there


def test_ctc_loss_trains_the_adaptor_projection(tiny_model_dir):
    model = fresh(tiny_model_dir)
    states = torch.randn(2, 40, model.config.encoder_config.d_model, generator=torch.Generator().manual_seed(2))
    loss = ctc_loss_from_states(model, states, [8, 6], torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([3, 2]))
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert model.adaptor.linear_1.weight.grad.abs().sum() > 0 and model.adaptor.linear_2.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad is None  # the LLM's embeddings are read detached


# --- cached splits -------------------------------------------------------------------------------


def test_load_split_reads_states_and_tokens_and_names_missing_features(tiny, tmp_path):
    _, processor = tiny
    split = tmp_path / "train"
    (split / "features").mkdir(parents=True)
    arrays = [np.random.default_rng(i).standard_normal((7 + i, 32)).astype(np.float16) for i in range(2)]
    for index, array in enumerate(arrays):
        np.save(split / "features" / f"{index}.npy", array)
    write_jsonl(split / "data.jsonl", [{"question": TEXTS[i], "features": f"features/{i}.npy"} for i in range(2)])
    clips = load_split(split, processor.tokenizer)
    assert [clip.text for clip in clips] == TEXTS[:2]
    for clip, array, text in zip(clips, arrays, TEXTS):
        np.testing.assert_array_equal(clip.states, array)
        assert clip.token_ids == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [clip.text for clip in load_split(split, processor.tokenizer, limit=1)] == TEXTS[:1]
    (split / "features" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.jsonl, line 2: cached features .*1\.npy are missing"):
        load_split(split, processor.tokenizer)
    np.save(split / "features" / "1.npy", np.zeros((5, 48), dtype=np.float16))  # another encoder's width
    with pytest.raises(ValueError, match=r"data\.jsonl, line 2: cached features .*1\.npy are 48 wide, line 1's are 32"):
        load_split(split, processor.tokenizer)


def test_batch_tensors_pad_states_and_targets():
    clips = [CachedClip(np.ones((12, 3), np.float16), [4, 5, 6], "a"), CachedClip(np.full((7, 3), 2, np.float16), [9], "b")]
    states, counts, targets, lengths = batch_tensors(clips, downsample=5)
    assert states.shape == (2, 12, 3) and states.dtype == torch.float32
    assert torch.equal(states[1, :7], torch.full((7, 3), 2.0)) and not states[1, 7:].any()
    assert counts == [2, 1]
    assert torch.equal(targets, torch.tensor([[4, 5, 6], [9, 0, 0]])) and torch.equal(lengths, torch.tensor([3, 1]))


def test_ctc_word_error_rate_scores_best_path_transcripts(tiny, tiny_model_dir, monkeypatch):
    _, processor = tiny
    tokenizer = processor.tokenizer
    model = fresh(tiny_model_dir)
    identity_projection(model, monkeypatch)
    perfect = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    dropped = tokenizer("A dog ran home.", add_special_tokens=False)["input_ids"]
    dropped = dropped[: dropped.index(tokenizer(" home", add_special_tokens=False)["input_ids"][0])]
    clips = [CachedClip(spelled(model, perfect).astype(np.float16), perfect, TEXTS[0]),
             CachedClip(spelled(model, dropped).astype(np.float16), dropped, "A dog ran home.")]
    for batch_size in (64, 1):
        wer, hypotheses = ctc_word_error_rate(model, tokenizer, clips, batch_size=batch_size)
        assert hypotheses == [tokenizer.decode(perfect), tokenizer.decode(dropped)]
        assert wer == pytest.approx(1 / 10)  # one deleted word of 6 + 4
    blank_frames = np.repeat(spelled(model, perfect)[1:2], 4, axis=0).astype(np.float16)  # 4 blank frames
    wer, hypotheses = ctc_word_error_rate(model, tokenizer, [CachedClip(blank_frames, perfect, TEXTS[0])])
    assert hypotheses == [""] and wer == 1.0  # all blank: every word missed


# --- training, resumable ---------------------------------------------------------------------------


def cached_clips(tokenizer, count: int, seed: int) -> list[CachedClip]:
    rng = np.random.default_rng(seed)
    return [CachedClip(rng.standard_normal((int(rng.integers(45, 70)), 32)).astype(np.float16),
                       tokenizer(TEXTS[i % len(TEXTS)], add_special_tokens=False)["input_ids"], TEXTS[i % len(TEXTS)])
            for i in range(count)]


SETTINGS = AlignmentSettings(steps=6, batch_size=2, learning_rate=1e-2, warmup_steps=2, checkpoint_every=2,
                             eval_every=100, seed=3, bf16=False)


class Interrupted(Exception):
    pass


def test_interrupted_alignment_resumes_bit_exactly(tiny, tiny_model_dir, tmp_path, monkeypatch):
    _, processor = tiny
    tokenizer = processor.tokenizer
    train, dev = cached_clips(tokenizer, 6, seed=0), cached_clips(tokenizer, 2, seed=1)
    initial = {k: v.clone() for k, v in fresh(tiny_model_dir).adaptor.state_dict().items()}

    straight = fresh(tiny_model_dir)
    summary = train_alignment(straight, tokenizer, train, dev, tmp_path / "straight", SETTINGS, progress=False)
    assert summary["steps"] == 6
    expected = straight.adaptor.state_dict()
    assert not torch.equal(expected["linear_1.weight"], initial["linear_1.weight"])  # it trained

    real_append = speech_alignment._append_log

    def append_then_die(path, entry):
        if entry["step"] == 5:  # after step 5's update, before its log line and before any step-6 checkpoint
            raise Interrupted
        real_append(path, entry)

    monkeypatch.setattr(speech_alignment, "_append_log", append_then_die)
    with pytest.raises(Interrupted):
        train_alignment(fresh(tiny_model_dir), tokenizer, train, dev, tmp_path / "resumed", SETTINGS, progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed" / STATE_NAME, weights_only=True)["step"] == 4

    resumed = fresh(tiny_model_dir)  # a new process would start from the folder's weights again
    train_alignment(resumed, tokenizer, train, dev, tmp_path / "resumed", SETTINGS, progress=False)
    got = resumed.adaptor.state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    strip = lambda folder: [{k: v for k, v in row.items() if k != "seconds"}
                            for row in read_jsonl(folder / speech_alignment.LOG_NAME)]
    assert strip(tmp_path / "resumed") == strip(tmp_path / "straight")
    assert [row["step"] for row in strip(tmp_path / "straight")] == [1, 2, 3, 4, 5, 6]
    assert "dev_ctc_wer" in strip(tmp_path / "straight")[-1]

    # A finished run started again does no step; other settings refuse to resume.
    again = fresh(tiny_model_dir)
    train_alignment(again, tokenizer, train, dev, tmp_path / "straight", SETTINGS, progress=False)
    assert all(torch.equal(again.adaptor.state_dict()[name], expected[name]) for name in expected)
    assert len(read_jsonl(tmp_path / "straight" / speech_alignment.LOG_NAME)) == 6
    other = AlignmentSettings(**{**SETTINGS.__dict__, "learning_rate": 5e-3})
    with pytest.raises(ValueError, match="other settings"):
        train_alignment(fresh(tiny_model_dir), tokenizer, train, dev, tmp_path / "straight", other, progress=False)


# --- read-back evaluation -------------------------------------------------------------------------


def test_readback_scores_wer_and_exact_matches():
    scores = readback_scores(["what is the capital of France", "who wrote hamlet!!", ""],
                             ["What is the capital of France?", "Who wrote Hamlet?", "How many legs"])
    assert scores["hits"] == [True, True, False]
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["wer"] == pytest.approx(3 / 12)  # the empty answer misses 3 of the 12 spoken words
    longer = readback_scores(["who wrote hamlet and macbeth"], ["Who wrote Hamlet?"])
    assert longer["hits"] == [False] and longer["accuracy"] == 0.0  # exact match, not containment
    assert longer["wer"] == pytest.approx(2 / 3)  # two inserted words
    assert readback_scores(["who wrote macbeth"], ["Who wrote Hamlet?"])["wer"] == pytest.approx(1 / 3)


def test_qa_inputs_instruction_replaces_the_speech_instruction(tiny):
    _, processor = tiny
    decode = lambda inputs: processor.tokenizer.decode(inputs["input_ids"][0])
    default = decode(qa_inputs(processor, [None], [noise_clip(1.0)]))
    readback = decode(qa_inputs(processor, [None], [noise_clip(1.0)], instruction=TRANSCRIPT_INSTRUCTION))
    assert SPEECH_INSTRUCTION.strip() in default and TRANSCRIPT_INSTRUCTION.strip() not in default
    assert TRANSCRIPT_INSTRUCTION.strip() in readback and SPEECH_INSTRUCTION.strip() not in readback


def test_continuous_greedy_answers_pass_the_instruction_through(tiny):
    model, processor = tiny
    audios = [noise_clip(1.0, seed=1), noise_clip(2.2, seed=2), noise_clip(1.4, seed=3)]

    def one_at_a_time(instruction):
        answers = []
        for audio in audios:
            inputs = qa_inputs(processor, [None], [audio], instruction=instruction)
            output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            answers.append(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip())
        return answers

    expected = one_at_a_time(TRANSCRIPT_INSTRUCTION)
    assert expected != one_at_a_time(None)  # the instruction changes what the tiny model says
    got = continuous_greedy_answers(model, processor, [None] * 3, audios, batch_size=2, max_new_tokens=6,
                                    instruction=TRANSCRIPT_INSTRUCTION)
    assert got == expected


def test_evaluate_readback_writes_wer_and_uses_the_transcript_instruction(tiny_model_dir, tmp_path, monkeypatch):
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    for index in range(2):
        soundfile.write(tmp_path / f"q{index}.wav", noise_clip(1.0 + index, seed=index), 16000)
    # Read-back needs no answers (the records layout still wants the column; empty lists are fine).
    write_jsonl(tmp_path / "spoken.jsonl", [{"question": q, "answers": [], "audio": f"q{i}.wav"}
                                            for i, q in enumerate(questions)])
    instructions = []
    real_qa_inputs = batching.qa_inputs
    monkeypatch.setattr(batching, "qa_inputs", lambda p, q, a, instruction=None: (
        instructions.append(instruction), real_qa_inputs(p, q, a, instruction))[1])
    metrics = evaluate_model(tiny_model_dir, str(tmp_path / "spoken.jsonl"), "readback", tmp_path / "out",
                             batch_size=2, max_new_tokens=4, progress=False)
    assert instructions and set(instructions) == {TRANSCRIPT_INSTRUCTION}
    assert metrics["task"] == "readback" and metrics["n"] == 2
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [row["question"] for row in rows] == questions
    scores = readback_scores([row["prediction"] for row in rows], questions)
    assert metrics["wer"] == pytest.approx(scores["wer"]) and metrics["accuracy"] == scores["accuracy"]
    assert [row["correct"] for row in rows] == scores["hits"] and metrics["wer"] > 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
