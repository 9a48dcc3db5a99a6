"""Prompts in LLaMA-Omni's format and batched greedy answering (T2T and S2T).

One place builds the prompts every part uses (training, importance, evaluation, the Space), so the
text and speech conditions differ only in where the question comes from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from modeling_speech_llama import SpeechLlamaForCausalLM, SpeechLlamaProcessor

from .audio import SAMPLE_RATE, read_audio
from .build import DTYPES
from .remote_code import add_trust_argument, load_processor

# The transcript task (training only): the model repeats the spoken words, which teaches the
# adaptor words before answers (README, "The paper in miniature": why the transcript task).
TRANSCRIPT_INSTRUCTION = "\nRepeat exactly what was said."


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """`--dtype`: the precision the weights load in for inference (float32 unless asked)."""
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="weights' precision for inference (bfloat16: ~2-3x faster generation on CPUs with AVX512-BF16)")


def load_model(model_dir: str | Path, dtype: torch.dtype | str = torch.float32, trust_remote_code: bool | None = None,
               processor: SpeechLlamaProcessor | None = None):
    """Load a built folder with the installed package's classes → (model in eval mode, processor).

    The folder's own Python files are not imported; a tokenizer / feature extractor that exists only
    as code in the folder runs with `trust_remote_code=True` only (`speech_llama.remote_code`).
    `processor`: one already loaded from the folder (e.g. to check the data before the weights load).
    `dtype`: a torch dtype or its name in `DTYPES` ("float32", "bfloat16", "float16").
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json); build one with `speech-llama build`")
    if processor is None:
        processor = load_processor(model_dir, trust_remote_code)  # first: a refusal costs no weight loading
    model = SpeechLlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    return model, processor


def user_content(processor: SpeechLlamaProcessor, question: str | None, speech: bool,
                 instruction: str | None = None) -> list[dict]:
    """The user turn: `<speech>` + instruction (S2T), or the question text in its place (T2T).

    `instruction` replaces the processor's `speech_instruction` (and follows the question text in
    T2T); QA prompts leave it None.
    """
    if speech:
        text = processor.speech_instruction if instruction is None else instruction
        return [{"type": "audio"}] + ([{"type": "text", "text": text}] if text else [])
    if not question:
        raise ValueError("a text-input (T2T) prompt needs the question text")
    content = [{"type": "text", "text": question}]
    return content + [{"type": "text", "text": instruction}] if instruction else content


def qa_prompt(processor: SpeechLlamaProcessor, question: str | None = None, speech: bool = False,
              instruction: str | None = None) -> str:
    """Chat-template prompt ending with the assistant header, ready for generation."""
    messages = [{"role": "user", "content": user_content(processor, question, speech, instruction)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def qa_training_text(processor: SpeechLlamaProcessor, response: str, question: str | None = None, speech: bool = False,
                     instruction: str | None = None) -> tuple[str, str]:
    """(prompt, completion): the loss is taken on the completion only (response + end-of-turn)."""
    prompt = qa_prompt(processor, question, speech, instruction)
    full = processor.apply_chat_template(
        [{"role": "user", "content": user_content(processor, question, speech, instruction)},
         {"role": "assistant", "content": response}],
        add_generation_prompt=False,
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the assistant turn in a way that does not extend the prompt")
    return prompt, full[len(prompt):].rstrip("\n")


def qa_inputs(processor: SpeechLlamaProcessor, questions: list[str | None], audios: list[np.ndarray | None],
              instruction: str | None = None):
    """Generation-ready prompts for one batch (left-padded tensors); a row is S2T when its audio is given.

    `instruction` replaces the S2T instruction (e.g. `TRANSCRIPT_INSTRUCTION` for read-back)."""
    prompts = [qa_prompt(processor, q, speech=a is not None, instruction=instruction) for q, a in zip(questions, audios)]
    return processor(text=prompts, audio=audios if any(a is not None for a in audios) else None, sampling_rate=SAMPLE_RATE)


@torch.no_grad()
def generate_answers(
    model,
    processor: SpeechLlamaProcessor,
    questions: list[str | None],
    audios: list[np.ndarray | None] | None = None,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy answers for one batch; a row is S2T when its audio is given, else T2T."""
    audios = audios if audios is not None else [None] * len(questions)
    if len(audios) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(audios)} audio entries")
    inputs = qa_inputs(processor, questions, audios).to(model.device)
    output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output_ids[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder (speech-llama build)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="typed question (T2T)")
    source.add_argument("--audio", type=Path, help="spoken question, any sampling rate (S2T)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    add_trust_argument(parser)


def run(args: argparse.Namespace) -> str:
    model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code)
    if args.audio is not None:
        audio = read_audio(str(args.audio), where=str(args.audio))
        answer = generate_answers(model, processor, [None], [audio], args.max_new_tokens)[0]
        print(f"speech: {len(audio) / SAMPLE_RATE:.1f} s → {processor.num_speech_tokens(len(audio))} speech tokens")
    else:
        answer = generate_answers(model, processor, [args.question], None, args.max_new_tokens)[0]
    print(answer)
    return answer
