"""Prompts in LLaMA-Omni's format, built in one place for every part (training, importance,
evaluation, the Space), so the text and speech conditions differ only in where the question comes from."""

from __future__ import annotations

import numpy as np

from modeling_speech_llama import SpeechLlamaProcessor

from .audio import SAMPLE_RATE

# The transcript task (training only): the model repeats the spoken words, which teaches the
# adaptor words before answers (docs/paper-in-miniature.md).
TRANSCRIPT_INSTRUCTION = "\nRepeat exactly what was said."


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
