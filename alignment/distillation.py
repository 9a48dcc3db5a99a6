"""Distil the frozen LLM reading the transcript into the speech path (DiVA-style), on cached states.

For a clip with transcript t, the teacher is the LLM given the text prompt (question t), the
student the same LLM given the speech prompt (adaptor frames in place of `<speech>`); both read
the teacher's own greedy response r. The loss is KL(teacher ‖ student) over r's tokens (plus the
CTC term of the alignment, weight `ctc_weight`, so the frames keep spelling words). Only the
adaptor learns: the LLM is frozen, so text ability is unchanged by construction.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from speech_llama.files import atomic_write, read_jsonl, write_jsonl
from speech_llama.prompts import qa_training_text
from speech_llama.precision import cpu_runs_bfloat16
from alignment.ctc import ctc_loss_from_states
from alignment.training import CachedClip, batch_tensors

STATE_NAME = "distillation-state.pt"
RESPONSES_NAME = "teacher-responses.jsonl"


@dataclass
class DistillationSettings:
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 2e-4
    ctc_weight: float = 0.5
    max_response_tokens: int = 32
    checkpoint_every: int = 25
    seed: int = 0
    # bf16 autocast only where the CPU runs bf16 natively (emulated bf16 is several times slower).
    bf16: bool = field(default_factory=cpu_runs_bfloat16)


def teacher_responses(model, processor, clips: list[CachedClip], out_dir: Path, max_new_tokens: int,
                      progress: bool = True) -> list[str]:
    """The LLM's greedy answer to each transcript as text (cached in `out_dir`)."""
    from speech_llama.batching import continuous_greedy_answers

    path = out_dir / RESPONSES_NAME
    texts = [clip.text for clip in clips]
    if path.is_file():
        rows = read_jsonl(path)
        if [row["question"] for row in rows] == texts:
            return [row["response"] for row in rows]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers = continuous_greedy_answers(model, processor, [texts[i] for i in order], None, batch_size=16,
                                        max_new_tokens=max_new_tokens, progress=progress, description="teacher")
    responses = [""] * len(texts)
    for index, answer in zip(order, answers):
        responses[index] = answer
    write_jsonl(path, [{"question": q, "response": r} for q, r in zip(texts, responses)])
    return responses


def _pair(processor, clip: CachedClip, response: str, downsample: int) -> tuple[list[int], list[int], int]:
    """Token ids of the text prompt + response, the speech prompt + response, and the response length."""
    text_prompt, completion = qa_training_text(processor, response, question=clip.text)
    speech_prompt, _ = qa_training_text(processor, response, speech=True)
    frames = clip.states.shape[0] // downsample
    speech_prompt = speech_prompt.replace(processor.speech_token, processor.speech_token * frames)
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    completion_ids = tokenize(completion)
    return tokenize(text_prompt) + completion_ids, tokenize(speech_prompt) + completion_ids, len(completion_ids)


def _response_logits(model, rows: list[list[int]], response_lengths: list[int], speech_embeds=None,
                     speech_silent=None) -> torch.Tensor:
    """Logits predicting each response token, rows right-padded, concatenated: (Σ len_i, V).

    `speech_embeds` (ΣN, d_llm) and `speech_silent` (ΣN,) bool: the adaptor's frames for the rows'
    `<speech>` placeholders, merged by the model's forward."""
    longest = max(len(row) for row in rows)
    pad = model.config.text_config.pad_token_id or 0
    ids = torch.tensor([row + [pad] * (longest - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])
    logits = model(input_ids=ids, attention_mask=mask, speech_embeds=speech_embeds,
                   speech_silent_frames=speech_silent, use_cache=False).logits
    picked = [logits[row, len(rows[row]) - n - 1 : len(rows[row]) - 1] for row, n in enumerate(response_lengths)]
    return torch.cat(picked).float()


def distill(model, processor, clips: list[CachedClip], responses: list[str], out_dir: Path,
            settings: DistillationSettings, progress: bool = True) -> dict:
    """Train the adaptor with KL to the text-input teacher (+ CTC); resumable from `out_dir`."""
    import random

    from tqdm.auto import tqdm

    model.requires_grad_(False)
    model.adaptor.requires_grad_(True)
    parameters = [p for p in model.adaptor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    step = 0
    state_path = out_dir / STATE_NAME
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.adaptor.load_state_dict(state["adaptor"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    usable = [i for i, response in enumerate(responses) if response.strip()]
    rng = random.Random(settings.seed)
    order = [rng.sample(usable, settings.batch_size) for _ in range(settings.steps)]
    downsample = model.config.adaptor_downsample
    embeddings = model.get_input_embeddings().weight
    started, log = time.time(), []
    for step in tqdm(range(step, settings.steps), initial=step, total=settings.steps, desc="distill", disable=not progress):
        batch = [clips[i] for i in order[step]]
        pairs = [_pair(processor, clip, responses[i], downsample) for clip, i in zip(batch, order[step])]
        lengths = [min(n, settings.max_response_tokens) for _, _, n in pairs]
        text_rows = [text[: len(text) - n + cut] for (text, _, n), cut in zip(pairs, lengths)]
        speech_rows = [speech[: len(speech) - n + cut] for (_, speech, n), cut in zip(pairs, lengths)]
        states, counts, targets, target_lengths = batch_tensors(batch, downsample)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            with torch.no_grad():
                teacher = _response_logits(model, text_rows, lengths)
            frames, silent = model.adaptor(states, embeddings, return_silent_frames=True)
            speech_embeds = torch.cat([frames[row, :count] for row, count in enumerate(counts)])
            speech_silent = (torch.cat([silent[row, :count] for row, count in enumerate(counts)])
                             if silent is not None else None)
            student = _response_logits(model, speech_rows, lengths, speech_embeds, speech_silent)
            kl = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
            loss = kl + settings.ctc_weight * ctc_loss_from_states(model, states, counts, targets, target_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        log.append({"step": step + 1, "loss": round(loss.item(), 4), "kl": round(kl.item(), 4),
                    "seconds": round(time.time() - started, 1)})
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            payload = {"adaptor": model.adaptor.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}
            atomic_write(state_path, lambda temp: torch.save(payload, temp))
            with (out_dir / "distillation-log.jsonl").open("a") as handle:
                handle.write("".join(json.dumps(entry) + "\n" for entry in log))
            log = []
    return {"steps": settings.steps, "settings": asdict(settings)}


def spoken_response_clips(model, processor, rows: list[dict], source: Path) -> tuple[list[CachedClip], list[str]]:
    """Encoder states of spoken records (`audio` read relative to `source`, a JSONL file) with their
    transcripts' tokens, and each record's `response`: the frozen LLM's own answer to the typed question."""
    from speech_llama.audio import read_audio
    from alignment.encoder import FrozenSpeechEncoder

    encoder = FrozenSpeechEncoder(model=model, processor=processor)
    clips, responses = [], []
    for line, row in enumerate(rows, start=1):
        where = f"{source}, line {line}, column 'audio'"
        if not str(row.get("response") or "").strip():
            raise ValueError(f"{source}, line {line}: no 'response' to distil from")
        states = encoder.states(read_audio(str(source.parent / row["audio"]), where=where), where)
        ids = processor.tokenizer(row["question"], add_special_tokens=False)["input_ids"]
        clips.append(CachedClip(states, ids, row["question"]))
        responses.append(row["response"])
    return clips, responses


def distilled_steps(out_dir: Path) -> int:
    """Steps the distillation state in `out_dir` has done (0 before its first save)."""
    state = out_dir / STATE_NAME
    return int(torch.load(state, map_location="cpu", weights_only=True)["step"]) if state.is_file() else 0


def distil_model_folder(model_dir: Path, records: Path, out_dir: Path, settings: DistillationSettings,
                        progress: bool = True, stops: tuple[int, ...] = ()) -> Path:
    """Adaptor-only distillation of `model_dir` on spoken records with self-distilled responses
    (`records`: JSONL of question, response, audio) → `out_dir/final`, resumable from `out_dir`;
    also `out_dir/checkpoint-N` at each of `stops` (steps before the last).

    The responses must come from the same frozen LLM reading the typed question (as the
    reproduction's training records do), so they are the teacher's own answers. The batches are
    drawn from the seed in advance and the optimiser state is saved at each stop, so stopping does
    not change the run."""
    from speech_llama.build import save_model_folder
    from speech_llama.generate import load_model

    final = out_dir / "final"
    if (final / "config.json").is_file():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(model_dir)
    clips, responses = spoken_response_clips(model, processor, read_jsonl(records), records)
    if len(clips) < settings.batch_size:
        raise ValueError(f"{records}: {len(clips)} records, fewer than one batch of {settings.batch_size}")
    for stop in (*sorted(step for step in stops if step < settings.steps), settings.steps):
        if distilled_steps(out_dir) > stop:  # a resumed run past this stop: its model was saved (and maybe used)
            continue
        distill(model, processor, clips, responses, out_dir, replace(settings, steps=stop), progress)
        folder = final if stop == settings.steps else out_dir / f"checkpoint-{stop}"
        if not (folder / "config.json").is_file():
            model.requires_grad_(False)
            save_model_folder(model, processor, folder, _distilled_info(model_dir, records, settings, stop))
    return final


def _distilled_info(model_dir: Path, records: Path, settings: DistillationSettings, step: int):
    from speech_llama.build import BuildInfo

    return BuildInfo(llm=f"frozen, from {model_dir}", encoder=f"frozen, from {model_dir}", preset="distill",
                     adaptor=f"{model_dir}'s, then distilled from the frozen LLM reading the transcripts (DiVA-style KL + "
                             f"{settings.ctc_weight} × CTC), {step} of {settings.steps} steps of {settings.batch_size} "
                             f"on {records}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(model_dir)
    clips, responses = spoken_response_clips(model, processor, read_jsonl(records), records)
    if len(clips) < settings.batch_size:
        raise ValueError(f"{records}: {len(clips)} records, fewer than one batch of {settings.batch_size}")
    distill(model, processor, clips, responses, out_dir, settings, progress)
    model.requires_grad_(False)
    info = BuildInfo(llm=f"frozen, from {model_dir}", encoder=f"frozen, from {model_dir}", preset="distill",
                     adaptor=f"{model_dir}'s, then distilled from the frozen LLM reading the transcripts (DiVA-style KL + "
                             f"{settings.ctc_weight} × CTC), {settings.steps} steps of {settings.batch_size} on {records}.")
    save_model_folder(model, processor, final, info)
    return final
