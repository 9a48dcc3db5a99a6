"""Perplexity of the response tokens given a text or speech question (the paper's Table 1 quantity).

One implementation, used by the deactivation check, the evaluation runner and the reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .collate import InputKind, QACollator, iterate_batches


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per response token (nats)
    tokens: int  # response tokens scored


def summed_response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Σ −log p(token) over the labelled tokens of one batch, and how many there were."""
    batch = {key: value.to(model.device) for key, value in batch.items()}
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    return float(nll), int((targets != -100).sum())


@torch.no_grad()
def response_perplexity(
    model,
    processor,
    records,
    input: InputKind = "text",
    batch_size: int = 8,
    max_length: int | None = 512,
    progress: bool = False,
) -> PerplexityResult:
    """exp(mean NLL) over all response tokens of `records` (not a mean of per-record perplexities)."""
    collator = QACollator(processor, input=input, max_length=max_length)
    total_nll, total_tokens = 0.0, 0
    batches = iterate_batches(records, collator, batch_size)
    for batch in tqdm(batches, total=math.ceil(len(records) / batch_size), desc=f"perplexity ({input})", disable=not progress):
        nll, tokens = summed_response_nll(model, batch)
        total_nll += nll
        total_tokens += tokens
    if total_tokens == 0:
        raise ValueError("no response tokens to score: are the records' responses/answers empty?")
    mean_nll = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean_nll), nll=mean_nll, tokens=total_tokens)
