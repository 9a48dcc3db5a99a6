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


def response_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """S = Σ −log p(token) over the labelled (response) tokens of one batch, keeping the graph.

    Args:
        batch: a `QACollator` batch (``labels`` (B, L), −100 where no loss is taken).
    Returns:
        (S as a 0-d tensor, fp32 or the model's wider dtype; n = number of labelled tokens).
    Logits come only from the first labelled position on (`logits_to_keep`) and the loss only from
    labelled tokens: the prompt's (B, L, V) logits would dominate the cost of a small model with a
    large vocabulary, and carry no loss.
    """
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
    targets = batch["labels"][:, 1:].to(device)  # logits at position t predict token t + 1
    labelled = targets != -100
    labelled_columns = labelled.any(dim=0).nonzero()
    first = int(labelled_columns[0]) if labelled_columns.numel() else targets.shape[1] - 1
    logits = model(**inputs, logits_to_keep=targets.shape[1] - first + 1).logits[:, :-1]
    targets, labelled = targets[:, first:], labelled[:, first:]
    scored = logits[labelled]
    if scored.dtype in (torch.float16, torch.bfloat16):
        scored = scored.float()  # log-softmax over the vocabulary in half precision is lossy
    nll = torch.nn.functional.cross_entropy(scored, targets[labelled], reduction="sum")
    return nll, int(labelled.sum())


@torch.no_grad()
def response_perplexity(
    model,
    processor,
    records,
    input: InputKind = "text",
    batch_size: int = 8,
    max_length: int | None = 512,
    progress: bool = False,
    by_length: bool = True,
) -> PerplexityResult:
    """exp(mean NLL) over all response tokens of `records` (not a mean of per-record perplexities).

    `by_length` batches rows of similar length together (less left padding; the sum is the same up
    to float rounding), else batches follow the records' order."""
    collator = QACollator(processor, input=input, max_length=max_length)
    total_nll, total_tokens = 0.0, 0
    batches = iterate_batches(records, collator, batch_size, by_length=by_length)
    for batch in tqdm(batches, total=math.ceil(len(records) / batch_size), desc=f"perplexity ({input})", disable=not progress):
        nll, tokens = response_nll(model, batch)
        total_nll += float(nll)
        total_tokens += tokens
    if total_tokens == 0:
        raise ValueError("no response tokens to score: are the records' responses/answers empty?")
    mean_nll = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean_nll), nll=mean_nll, tokens=total_tokens)
