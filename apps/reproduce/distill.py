"""Self-distilled training responses: the base LLM answers the typed questions, and the speech model
learns to answer the spoken ones as it would."""

from __future__ import annotations

from pathlib import Path

from speech_llama.files import write_jsonl


def self_distil(model_dir: Path, rows: list[dict], out: Path, batch_size: int, max_new_tokens: int,
                dtype: str = "float32", progress: bool = True) -> Path:
    """Write `out` (JSONL: question, response) with `model_dir`'s greedy answers (weights in `dtype`)
    to the questions of `rows`, decoded like a T2T eval (length-sorted continuous batches); questions
    it answers with nothing are left out."""
    from speech_llama.evaluation import EvalItem, run_predictions
    from speech_llama.generate import load_model

    model, processor = load_model(model_dir, dtype=dtype)
    questions = [row["question"] for row in rows]
    responses, _ = run_predictions(model, processor, [EvalItem(question, [], None) for question in questions], "t2t",
                                   batch_size, max_new_tokens, progress=progress, description="self-distilled responses")
    return write_jsonl(out, [{"question": q, "response": r} for q, r in zip(questions, responses) if r])
