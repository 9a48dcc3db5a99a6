"""Loading a built model folder and batched greedy answering (T2T and S2T)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from modeling_speech_llama import SpeechLlamaForCausalLM, SpeechLlamaProcessor

from .build import DTYPES
from .prompts import qa_inputs
from .remote_code import load_processor


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
