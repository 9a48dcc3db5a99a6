"""Align the adaptor on the cached speech corpus: CTC over the LLM vocabulary, encoder and LLM frozen.

The corpus (`speech-llama corpus`) holds every clip's frozen encoder states, so a step costs the
adaptor and its vocabulary head only: Whisper runs once per clip, not once per epoch. Training is
resumable: `DIR/alignment-state.pt` (adaptor, optimizer, schedule, step, RNG) is written atomically
every `checkpoint_every` steps, and a restarted run continues from it bit-for-bit in its data order.
The preset that uses it (corpus → alignment → distillation → model folder) is `alignment.preset`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from speech_llama.files import atomic_write, read_jsonl
from speech_llama.precision import cpu_runs_bfloat16
from alignment.ctc import ctc_loss_from_states, greedy_ctc_tokens

STATE_NAME = "alignment-state.pt"
LOG_NAME = "alignment-log.jsonl"


@dataclass
class AlignmentSettings:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 150
    weight_decay: float = 0.01
    input_dropout: float = 0.1  # dropout on the encoder states the adaptor reads (a regulariser)
    checkpoint_every: int = 100
    eval_every: int = 500
    seed: int = 0
    # bf16 autocast only where the CPU runs bf16 natively (emulated bf16 is several times slower).
    bf16: bool = field(default_factory=cpu_runs_bfloat16)


@dataclass
class CachedClip:
    states: np.ndarray  # (T_enc, d_enc) fp16
    token_ids: list[int]
    text: str


def cached_split(split_dir: Path, limit: int | None = None) -> list[tuple[dict, np.ndarray]]:
    """A corpus split's rows (`data.jsonl`) with their cached encoder states (T, d_enc), in file order."""
    split_dir = Path(split_dir)
    pairs: list[tuple[dict, np.ndarray]] = []
    for line, row in enumerate(read_jsonl(split_dir / "data.jsonl")[:limit], start=1):
        path = split_dir / row["features"]
        if not path.is_file():
            raise FileNotFoundError(f"{split_dir / 'data.jsonl'}, line {line}: cached features {path} are missing "
                                    "(finish the corpus with `speech-llama corpus`)")
        states = np.load(path)
        if pairs and states.shape[1] != pairs[0][1].shape[1]:
            # A build interrupted while switching encoders can leave states of two encoders side by side.
            raise ValueError(f"{split_dir / 'data.jsonl'}, line {line}: cached features {path} are {states.shape[1]} wide, "
                             f"line 1's are {pairs[0][1].shape[1]}: delete the clips of the other encoder and "
                             "rerun `speech-llama corpus`")
        pairs.append((row, states))
    return pairs


def load_split(split_dir: Path, tokenizer, limit: int | None = None) -> list[CachedClip]:
    """A corpus split's clips: cached encoder states and the transcript's LLM tokens."""
    return [CachedClip(states, tokenizer(row["question"], add_special_tokens=False)["input_ids"], row["question"])
            for row, states in cached_split(split_dir, limit)]


def padded_states(arrays: list[np.ndarray]) -> torch.Tensor:
    """(B, T_max, d_enc) float32 encoder states, zero-padded after each clip's own frames."""
    states = torch.zeros(len(arrays), max(array.shape[0] for array in arrays), arrays[0].shape[1])
    for row, array in enumerate(arrays):
        states[row, : array.shape[0]] = torch.from_numpy(array.astype(np.float32))
    return states


def batch_tensors(clips: list[CachedClip], downsample: int) -> tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor]:
    """(B, T_max, d_enc) states (zero-padded), adaptor frame counts, (B, S) targets, (B,) target lengths."""
    states = padded_states([clip.states for clip in clips])
    counts = [clip.states.shape[0] // downsample for clip in clips]
    lengths = torch.tensor([len(clip.token_ids) for clip in clips])
    targets = torch.zeros(len(clips), int(lengths.max()), dtype=torch.long)
    for row, clip in enumerate(clips):
        targets[row, : len(clip.token_ids)] = torch.tensor(clip.token_ids)
    return states, counts, targets, lengths


def batch_order(num_clips: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Shuffled epochs cut into batches, as many as `steps` (a pure function of its arguments)."""
    rng, order = random.Random(seed), []
    while len(order) < steps * batch_size:
        epoch = list(range(num_clips))
        rng.shuffle(epoch)
        order += epoch
    return [order[step * batch_size : (step + 1) * batch_size] for step in range(steps)]


def warmup_cosine(step: int, warmup_steps: int, steps: int) -> float:
    """The learning rate's share at `step`: linear warm-up, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _learning_rate(step: int, settings: AlignmentSettings) -> float:
    return settings.learning_rate * warmup_cosine(step, settings.warmup_steps, settings.steps)


def ctc_word_error_rate(model, tokenizer, clips: list[CachedClip], batch_size: int = 64) -> tuple[float, list[str]]:
    """WER of the adaptor's own best-path CTC transcripts (no LLM) against the clips' texts."""
    import jiwer

    from speech_llama.text import normalized

    hypotheses = []
    model.adaptor.eval()
    embeddings = model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            group = clips[start : start + batch_size]
            states, counts, _, _ = batch_tensors(group, model.config.adaptor_downsample)
            logits = model.adaptor.token_logits(model.adaptor.project(states), embeddings)
            for row, count in enumerate(counts):
                tokens = greedy_ctc_tokens(logits[row], count, model.config.speech_token_id)
                hypotheses.append(tokenizer.decode(tokens))
    references = [normalized(clip.text) for clip in clips]
    wer = jiwer.wer(references, [normalized(text) or "<empty>" for text in hypotheses])
    return float(wer), hypotheses


def train_alignment(model, tokenizer, train: list[CachedClip], dev: list[CachedClip], out_dir: Path,
                    settings: AlignmentSettings, progress: bool = True) -> dict:
    """Train `model.adaptor` (everything else frozen) with CTC on cached states; resumes from `out_dir`."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    model.requires_grad_(False)
    model.adaptor.requires_grad_(True)
    parameters = [p for p in model.adaptor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    step = _resume(model, optimizer, out_dir / STATE_NAME, settings)
    batches = batch_order(len(train), settings.batch_size, settings.steps, settings.seed)
    dropout = torch.nn.Dropout(settings.input_dropout)
    started, log_path = time.time(), out_dir / LOG_NAME
    bar = tqdm(total=settings.steps, initial=step, desc="alignment (CTC)", unit="step", disable=not progress)
    while step < settings.steps:
        model.adaptor.train()
        torch.manual_seed(settings.seed * 1_000_003 + step)
        states, counts, targets, lengths = batch_tensors([train[i] for i in batches[step]], model.config.adaptor_downsample)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            loss = ctc_loss_from_states(model, dropout(states), counts, targets, lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        entry = {"step": step, "loss": round(loss.item(), 4), "lr": optimizer.param_groups[0]["lr"],
                 "seconds": round(time.time() - started, 1)}
        if step % settings.eval_every == 0 or step == settings.steps:
            entry["dev_ctc_wer"] = round(ctc_word_error_rate(model, tokenizer, dev)[0], 4)
            bar.write(json.dumps(entry))
        _append_log(log_path, entry)
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            _save_state(out_dir / STATE_NAME, model, optimizer, step, settings)
    bar.close()
    return {"steps": settings.steps, "settings": asdict(settings)}


def _append_log(path: Path, entry: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def _save_state(path: Path, model, optimizer, step: int, settings: AlignmentSettings) -> None:
    state = {"adaptor": model.adaptor.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "settings": asdict(settings)}
    atomic_write(path, lambda temp: torch.save(state, temp))


def _resume(model, optimizer, path: Path, settings: AlignmentSettings) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["settings"] != asdict(settings):
        raise ValueError(f"{path} was written with other settings ({state['settings']}); "
                         "use a new output folder or the same settings to resume")
    model.adaptor.load_state_dict(state["adaptor"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
