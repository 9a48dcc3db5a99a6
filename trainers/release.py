"""The released Stage-1 LoRA model: trained on the whole speech corpus, shipped as small files.

Recipe (`LoraReleaseSettings`): start from the shipped aligned preset; every corpus training clip
gets a target the base LLM wrote itself — its greedy answer to the clip's typed transcript for
questions and sentences (`RESPONSE_SOURCES`), the transcript itself ("Repeat exactly what was said")
for the word lists and for a `transcript_ratio` share of the others — so text ability is kept by
construction. LoRA adapters on the LLM's projections and the adaptor train with cross-entropy on
the target tokens, reading the corpus's cached encoder states (the encoder is frozen: no encoder
pass per step). Resumable from its work folder; settings were chosen on the dev split
(docs/release.md).

    trainers/releases/<LORA_NAME>/lora.safetensors      LoRA A/B matrices and the adaptor (bf16)
    trainers/releases/<LORA_NAME>/manifest.json         recipe, corpus, code version, figures, sha256
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignment.training import batch_order, cached_split, padded_states, warmup_cosine
from speech_llama.files import atomic_write, atomic_write_json, read_jsonl, write_jsonl
from speech_llama.precision import cpu_runs_bfloat16
from speech_llama.prompts import TRANSCRIPT_INSTRUCTION, qa_training_text

LORA_NAME = "speech-llama-lora-mini-v1"
LORA_PRESET = "speech-llama-lora-mini"
RELEASES_DIR = Path(__file__).resolve().parent / "releases"
LORA_FILE = "lora.safetensors"
RELEASE_DTYPE = torch.bfloat16
RESPONSE_SOURCES = ("prompts", "llm")  # corpus text sources the base LLM answers; word lists are read back
RESPONSES_CHUNK = 512


def corpus_texts_needing_responses(corpus_dir: Path, split: str) -> list[str]:
    """Distinct transcripts of `split` whose source the base LLM answers, shortest first."""
    rows = read_jsonl(Path(corpus_dir) / split / "data.jsonl")
    texts = {row["question"] for row in rows if row.get("source", "prompts") in RESPONSE_SOURCES}
    return sorted(texts, key=lambda text: (len(text), text))


def write_responses(model_dir: Path, texts: list[str], out_dir: Path, max_new_tokens: int, batch_size: int = 32,
                    progress: bool = True) -> dict[str, str]:
    """{transcript: the model's greedy answer to it typed}, written in chunks to `out_dir` (resumable)."""
    from tqdm.auto import tqdm

    from speech_llama.batching import continuous_greedy_answers
    from speech_llama.generate import load_model
    from speech_llama.precision import fast_dtype_name

    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = [texts[start : start + RESPONSES_CHUNK] for start in range(0, len(texts), RESPONSES_CHUNK)]
    model = processor = None
    responses: dict[str, str] = {}
    for index, chunk in enumerate(tqdm(chunks, desc="base-LLM responses", disable=not progress)):
        path = out_dir / f"chunk-{index:05d}.jsonl"
        rows = read_jsonl(path) if path.is_file() else []
        if [row["question"] for row in rows] != chunk:
            if model is None:
                model, processor = load_model(model_dir, dtype=fast_dtype_name())
            answers = continuous_greedy_answers(model, processor, chunk, None, batch_size=batch_size,
                                                max_new_tokens=max_new_tokens)
            rows = [{"question": q, "response": a} for q, a in zip(chunk, answers)]
            write_jsonl(path, rows)
        responses.update({row["question"]: row["response"] for row in rows})
    atomic_write_json(out_dir / "done.json", {"texts": len(texts), "max_new_tokens": max_new_tokens})
    return responses




@dataclass
class LoraReleaseSettings:
    steps: int = 240
    batch_size: int = 16
    learning_rate: float = 5e-4  # LoRA matrices; chosen on the dev split over 2e-4 (docs/release.md)
    adaptor_learning_rate: float = 1e-4
    warmup_steps: int = 12
    lora_rank: int = 16
    transcript_ratio: float = 0.3  # share of answerable clips trained to repeat their words instead
    max_target_tokens: int = 32
    response_tokens: int = 32  # the base LLM's greedy answers are at most this long
    checkpoint_every: int = 25
    eval_every: int = 80
    seed: int = 0
    # bf16 autocast only where the CPU runs bf16 natively (emulated bf16 is several times slower).
    bf16: bool = field(default_factory=cpu_runs_bfloat16)


@dataclass
class TrainingClip:
    """A corpus clip's cached encoder states, its transcript and the base LLM's answer ("" for none)."""

    states: np.ndarray  # (T_enc, d_enc) fp16
    transcript: str
    response: str


def training_clips(corpus_dir: Path, split: str, responses: dict[str, str]) -> list[TrainingClip]:
    """Every clip of a corpus split with its states (`features`) and, where its source is answered, the response."""
    return [TrainingClip(states, row["question"],
                         responses.get(row["question"], "") if row.get("source", "prompts") in RESPONSE_SOURCES else "")
            for row, states in cached_split(Path(corpus_dir) / split)]


def _target(clip: TrainingClip, draw: float, settings: LoraReleaseSettings) -> tuple[str, str | None]:
    """(completion, instruction): the response, or the transcript read back (no response, or the draw says so)."""
    if clip.response.strip() and draw >= settings.transcript_ratio:
        return clip.response, None
    return clip.transcript, TRANSCRIPT_INSTRUCTION


def _row_ids(processor, completion: str, instruction: str | None, frames: int, max_tokens: int) -> tuple[list[int], int]:
    """Token ids of the speech prompt (with `frames` placeholders) + completion, and the completion's kept length."""
    prompt, target = qa_training_text(processor, completion, speech=True, instruction=instruction)
    prompt = prompt.replace(processor.speech_token, processor.speech_token * frames)
    tokenize = lambda text: processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    target_ids = tokenize(target)[:max_tokens]
    return tokenize(prompt) + target_ids, len(target_ids)


def batch_loss(model, processor, clips: list[TrainingClip], targets: list[tuple[str, str | None]],
               settings: LoraReleaseSettings) -> torch.Tensor:
    """Mean cross-entropy on the completions of one batch, speech merged from the adaptor's frames."""
    adaptor = model.get_submodule("adaptor") if hasattr(model, "adaptor") else model.base_model.model.adaptor
    downsample = model.config.adaptor_downsample
    states = padded_states([clip.states for clip in clips])
    counts = [clip.states.shape[0] // downsample for clip in clips]
    rows = [_row_ids(processor, completion, instruction, count, settings.max_target_tokens)
            for (completion, instruction), count in zip(targets, counts)]
    width = max(len(ids) for ids, _ in rows)
    pad = model.config.text_config.pad_token_id or 0
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    labels = torch.full_like(input_ids, -100)
    for row, (ids, kept) in enumerate(rows):
        labels[row, len(ids) - kept : len(ids)] = input_ids[row, len(ids) - kept : len(ids)]
    frames, silent = adaptor(states, model.get_input_embeddings().weight, return_silent_frames=True)
    speech_embeds = torch.cat([frames[row, :count] for row, count in enumerate(counts)])
    speech_silent = torch.cat([silent[row, :count] for row, count in enumerate(counts)]) if silent is not None else None
    return model(input_ids=input_ids, attention_mask=attention, speech_embeds=speech_embeds,
                 speech_silent_frames=speech_silent, labels=labels, use_cache=False).loss


def dev_response_loss(model, processor, clips: list[TrainingClip], settings: LoraReleaseSettings,
                      batch_size: int = 16) -> float:
    """Mean completion cross-entropy on the dev clips' responses (the answer task only), no dropout."""
    answered = [clip for clip in clips if clip.response.strip()]
    if not answered:
        raise ValueError("no dev clip has a response to score")
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
        for start in range(0, len(answered), batch_size):
            group = answered[start : start + batch_size]
            total += batch_loss(model, processor, group, [(clip.response, None) for clip in group], settings).item() * len(group)
            count += len(group)
    return total / count


def train_lora_release(model, processor, train: list[TrainingClip], dev: list[TrainingClip], out_dir: Path,
                       settings: LoraReleaseSettings, progress: bool = True):
    """LoRA + adaptor trained on the clips (`model`: the aligned SpeechLlama, modified in place and
    returned merged); resumable from `out_dir/lora-state.pt`, log in `out_dir/lora-log.jsonl`."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    from .lora import apply_lora, lora_config

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)  # LoRA's A matrices start random: the same seed, the same run
    peft_model = apply_lora(model, lora_config(settings.lora_rank))
    adaptor_params = [p for n, p in peft_model.named_parameters() if p.requires_grad and ".adaptor." in n]
    lora_params = [p for n, p in peft_model.named_parameters() if p.requires_grad and ".adaptor." not in n]
    optimizer = torch.optim.AdamW([{"params": lora_params, "lr": settings.learning_rate},
                                   {"params": adaptor_params, "lr": settings.adaptor_learning_rate}], weight_decay=0.0)
    peak = [settings.learning_rate, settings.adaptor_learning_rate]
    state_path, log_path = out_dir / LORA_STATE, out_dir / LORA_LOG
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["settings"] != asdict(settings):
            raise ValueError(f"{state_path} was written with other settings ({state['settings']}); "
                             "use a new work folder or the same settings to resume")
        set_peft_model_state_dict(peft_model, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    batches = batch_order(len(train), settings.batch_size, settings.steps, settings.seed)
    started = time.time()
    bar = tqdm(total=settings.steps, initial=step, desc="Stage-1 LoRA", unit="step", disable=not progress)
    while step < settings.steps:
        peft_model.train()
        torch.manual_seed(settings.seed * 1_000_003 + step)
        draws = random.Random(f"{settings.seed}:{step}")
        clips = [train[i] for i in batches[step]]
        targets = [_target(clip, draws.random(), settings) for clip in clips]
        for group, lr in zip(optimizer.param_groups, peak):
            group["lr"] = lr * warmup_cosine(step, settings.warmup_steps, settings.steps)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
            loss = batch_loss(peft_model, processor, clips, targets, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params + adaptor_params, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        entry = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)}
        if step % settings.eval_every == 0 or step == settings.steps:
            entry["dev_response_loss"] = round(dev_response_loss(peft_model, processor, dev, settings), 4)
            bar.write(json.dumps(entry))
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            payload = {"weights": get_peft_model_state_dict(peft_model), "optimizer": optimizer.state_dict(),
                       "step": step, "settings": asdict(settings)}
            atomic_write(state_path, lambda temp: torch.save(payload, temp))
    bar.close()
    return peft_model


LORA_STATE = "lora-state.pt"
LORA_LOG = "lora-log.jsonl"




def lora_release_dir() -> Path:
    return RELEASES_DIR / LORA_NAME


def lora_release_available(folder: Path | None = None) -> bool:
    from speech_llama.release_files import release_available

    return release_available(folder or lora_release_dir(), LORA_FILE)


def trained_state(peft_model) -> tuple[dict[str, torch.Tensor], dict]:
    """(LoRA matrices + adaptor as peft names them, detached copies; the LoRA settings r / alpha / dropout)."""
    from peft import get_peft_model_state_dict

    config = peft_model.peft_config["default"]
    state = {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(peft_model).items()}
    return state, {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}


def write_lora_release(peft_model, out_dir: Path, summary: dict, figures: dict | None = None,
                       version: str | None = None) -> Path:
    """The trained LoRA matrices and adaptor of `peft_model` (or its `trained_state`) as
    `out_dir/lora.safetensors` (bf16) and `out_dir/manifest.json` (`summary`: recipe, settings, corpus,
    training log; `figures`: measured after; `version`: the code that trained it, default the checkout's now)."""
    from datetime import datetime, timezone

    from safetensors.torch import save_file

    from speech_llama.release_files import MANIFEST_FILE, code_version, file_entry

    state, lora = peft_model if isinstance(peft_model, tuple) else trained_state(peft_model)
    state = {name: tensor.to(RELEASE_DTYPE).contiguous() for name, tensor in state.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / LORA_FILE, lambda temp: save_file(state, str(temp), metadata={"format": "pt"}))
    manifest = {
        "name": LORA_NAME,
        "preset": LORA_PRESET,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": version or code_version(),
        "lora": lora,
        "dtype": "bfloat16",
        "parameters": sum(tensor.numel() for tensor in state.values()),
        "files": {LORA_FILE: file_entry(out_dir / LORA_FILE)},
        "summary": summary,
        "figures": figures or {},
    }
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return out_dir


def read_lora_release(folder: Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(LoRA + adaptor state dict in fp32, manifest), the checksum verified first."""
    from speech_llama.release_files import read_verified

    return read_verified(folder or lora_release_dir(), LORA_FILE, LORA_NAME,
                         f"speech-llama build --preset {LORA_PRESET} --retrain")


def lora_model(folder: Path | None = None):
    """(merged model, processor, manifest): the aligned release with the LoRA release on top, LoRA folded
    into the LLM's weights (a plain SpeechLlama model: loading it needs no peft)."""
    from peft import set_peft_model_state_dict

    from alignment.release import aligned_model
    from speech_llama.release_files import ReleaseError

    from .lora import apply_lora, lora_config, merge_lora

    state, manifest = read_lora_release(folder)
    model, processor, _ = aligned_model()
    lora = manifest["lora"]
    peft_model = apply_lora(model, lora_config(lora["r"], lora["alpha"], lora["dropout"]))
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ReleaseError(f"{folder or lora_release_dir()}/{LORA_FILE} does not fit the aligned model: "
                           f"{len(unexpected)} tensors it has no place for, e.g. {unexpected[0]}")
    merged = merge_lora(peft_model).eval()
    merged.requires_grad_(False)
    return merged, processor, manifest


def lora_build_info(manifest: dict):
    """The card facts of the LoRA release: what was trained, on what, for how long, and what it measured."""
    from speech_llama.presets import ALIGNED_BASE_PRESET, offline_build_info

    summary = manifest["summary"]
    settings = summary["settings"]
    corpus = summary.get("corpus", {}).get("train", {})
    adaptor = (f"the shipped offline-mini-aligned adaptor ({summary.get('aligned_release', '?')}), then trained with the "
               f"LLM's LoRA adapters in Stage 1 (cross-entropy on the targets below, adaptor lr "
               f"{settings['adaptor_learning_rate']}).")
    notes = [
        f"Stage 1 with LoRA (r={manifest['lora']['r']}, alpha={manifest['lora']['alpha']}, every attention and MLP projection "
        f"of the LLM), merged into these weights: {settings['steps']} steps of {settings['batch_size']} clips "
        f"({summary.get('clips_seen', '?')} clip reads) from {corpus.get('clips', '?')} synthetic training clips "
        f"({corpus.get('hours', '?')} h, offline TTS voices; speaker slt and every evaluation question held out), "
        f"lr {settings['learning_rate']} with warm-up and cosine decay, {summary.get('train_seconds', '?')} s on "
        f"{summary.get('machine', 'a CPU')}.",
        "Targets, all written by the base LLM itself or read from the clip: its greedy answer to the typed transcript "
        f"(questions and sentences), or the transcript repeated (word lists, and {settings['transcript_ratio']:.0%} of the "
        "others) — so what the LLM learns is to hear, not new answers.",
    ]
    notes += [f"Measured: {what}: {value}" for what, value in manifest.get("figures", {}).items()]
    return offline_build_info(ALIGNED_BASE_PRESET, LORA_PRESET, notes, adaptor)


def assemble_lora(out_dir: Path, folder: Path | None = None) -> Path:
    """A complete speech-llama-lora-mini model folder from the two releases and the offline base weights."""
    from speech_llama.build import save_model_folder

    model, processor, manifest = lora_model(folder)
    return save_model_folder(model, processor, Path(out_dir), lora_build_info(manifest))


def lora_work_dir() -> Path:
    from speech_llama.offline.cache import cache_dir

    return cache_dir() / LORA_NAME


def build_lora_release(settings: LoraReleaseSettings | None = None, work_dir: Path | None = None,
                       corpus_dir: Path | None = None, progress: bool = True) -> Path:
    """Today's recipe end to end, resumable in `work_dir`: the base LLM's responses, Stage-1 LoRA on the
    cached corpus, and the release files in `work_dir/release` (returned)."""
    import platform

    from alignment.corpus import default_corpus_dir
    from alignment.release import aligned_model
    from speech_llama.presets import ALIGNED_BASE_PRESET
    from speech_llama.release_files import MANIFEST_FILE, code_version

    from .lora import merge_lora

    settings = settings or LoraReleaseSettings()
    work_dir = Path(work_dir or lora_work_dir())
    corpus_dir = Path(corpus_dir or default_corpus_dir(ALIGNED_BASE_PRESET))
    release = work_dir / "release"
    if (release / MANIFEST_FILE).is_file() and json.loads((release / MANIFEST_FILE).read_text())["summary"]["settings"] == asdict(settings):
        return release
    if not (corpus_dir / "corpus.json").is_file():
        raise FileNotFoundError(f"{corpus_dir} holds no finished speech corpus: build it first with `speech-llama corpus`")
    _warn_without_jemalloc()
    version = code_version()  # the code that trains it (the checkout may change while it runs)
    model, processor, aligned_manifest = aligned_model()
    splits = {}
    for split in ("dev", "train"):
        texts = corpus_texts_needing_responses(corpus_dir, split)
        responses = write_responses(_aligned_folder(work_dir), texts, work_dir / "responses" / f"{split}-{settings.response_tokens}-tokens",
                                    settings.response_tokens, progress=progress)
        splits[split] = training_clips(corpus_dir, split, responses)
    peft_model = train_lora_release(model, processor, splits["train"], splits["dev"], work_dir, settings, progress)
    trained = trained_state(peft_model)
    ctc_wers = _ctc_wers(merge_lora(peft_model), processor, corpus_dir)
    log = last_entry_per_step(read_jsonl(work_dir / LORA_LOG))
    summary = {
        "recipe": "Stage-1 LoRA on the aligned release, targets by the base LLM (trainers/release.py)",
        "aligned_release": aligned_manifest["name"],
        "aligned_sha256": aligned_manifest["files"]["adaptor.safetensors"]["sha256"],
        "settings": asdict(settings),
        "corpus": json.loads((corpus_dir / "corpus.json").read_text())["splits"],
        "clips_seen": settings.steps * settings.batch_size,
        "train_seconds": training_seconds(log),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "dev_response_loss": [{"step": e["step"], "loss": e["dev_response_loss"]} for e in log if "dev_response_loss" in e],
        "first_loss": log[0]["loss"] if log else None,
        "last_loss": log[-1]["loss"] if log else None,
        **ctc_wers,
    }
    return write_lora_release(trained, release, summary, version=version)


def last_entry_per_step(log: list[dict]) -> list[dict]:
    """The log of the steps that count: a resumed run redoes the steps after its last checkpoint."""
    return sorted({entry["step"]: entry for entry in log}.values(), key=lambda entry: entry["step"])


def training_seconds(log: list[dict]) -> int:
    """Wall time of every process that trained, resumed ones included (`seconds` restarts at 0 in each)."""
    total, previous = 0.0, 0.0
    for entry in log:
        if entry["seconds"] < previous:  # a new process began
            total += previous
        previous = entry["seconds"]
    return round(total + previous)


def _ctc_wers(model, processor, corpus_dir: Path) -> dict[str, float]:
    """Best-path CTC WER of the trained adaptor on the dev and held-out clips (does Stage 1 keep it reading?)."""
    from alignment.training import ctc_word_error_rate, load_split

    return {f"{split}_ctc_wer": round(ctc_word_error_rate(model, processor.tokenizer, load_split(corpus_dir / split,
                                                                                                 processor.tokenizer))[0], 4)
            for split in ("dev", "heldout")}


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def _warn_without_jemalloc() -> None:
    """glibc's allocator let this loop's varying batch shapes grow the process ~0.3 GB a step (docs/release.md)."""
    import logging
    import os

    if "jemalloc" not in os.environ.get("LD_PRELOAD", ""):
        logging.getLogger(__name__).warning(
            "training without jemalloc: memory can grow by ~0.3 GB a step with glibc's allocator; run it with "
            f"LD_PRELOAD={JEMALLOC} (Debian: apt-get install libjemalloc2)")


def _aligned_folder(work_dir: Path) -> Path:
    """The aligned release assembled once in `work_dir` (the writer of the targets reads text only: its LLM is the base)."""
    from alignment.release import assemble_aligned

    folder = work_dir / "aligned"
    return folder if (folder / "config.json").is_file() else assemble_aligned(folder)


def speech_llama_lora_mini(out_dir: Path, retrain: bool = False, release_out: Path | None = None) -> Path:
    """The `speech-llama-lora-mini` preset into `out_dir`: assembled from the shipped releases in seconds;
    with `retrain` (or no release for today's recipe), trained with today's recipe on the cached corpus
    (resumable), and with `release_out` its files copied there for the repository."""
    import shutil

    if not retrain and release_out is None and lora_release_available():
        return assemble_lora(out_dir)
    release = build_lora_release()
    if release_out is not None:
        shutil.copytree(release, release_out, dirs_exist_ok=True)
    return assemble_lora(out_dir, release)
