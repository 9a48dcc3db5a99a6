"""First-order (Taylor) parameter importance: I(θ) ≈ |θ · ∂L(D)/∂θ| (the seed paper's Eq. 2).

L(D) is the mean negative log-likelihood of the response tokens over all of D (the same loss the
model trains on). For each batch b with n_b response tokens and summed loss S_b = Σ −log p, the
backward pass runs on S_b, and a post-accumulate-grad hook on every analysed parameter adds
θ·∇S_b into a float32 accumulator and frees the gradient at once (``param.grad = None``), so the
memory is one fp32 accumulator per analysed parameter on top of a plain forward/backward, and no
optimizer exists. After the last batch the accumulators are divided by N = Σ_b n_b:

- ``mean`` (default, Eq. 2): A = Σ_b θ·∇S_b (signed), I = |A| / N. Since ∇L(D) = Σ_b ∇S_b / N,
  this is exactly |θ·∇L(D)| — each batch's mean-loss gradient weighted by its token share
  n_b / N — independent of how D is cut into batches.
- ``abs_per_batch`` (Molchanov et al.): I = Σ_b |θ·∇S_b| / N = Σ_b (n_b/N) |θ·∇l_b| with
  l_b = S_b / n_b, i.e. the token-weighted mean over batches of the per-batch |θ·g_b|. It is
  ≥ the ``mean`` estimate and depends on the batching.

A batch whose loss is not finite is skipped before its backward pass: counted, reported, and
neither its gradient nor its tokens enter the result.

Several processes (``accelerate launch`` / ``torchrun``): batch i goes to rank i mod W, each rank
accumulates its own batches, and the accumulators, token and sample counts are summed with one
all-reduce per parameter at the end, so the result equals a single-process run on the same data
(up to float summation order) for both reductions.

Sharded (FSDP2, `speech_llama.fsdp.load_sharded_model`): the analysed parameters are DTensors and
every rank holds 1/W of each. Every rank then reads every batch and back-propagates its own
contiguous slice of the batch's rows; FSDP reduce-scatters (sums) the gradients, so each rank's
hook receives its shard of ∇S_b for the whole batch b and adds θ·g (or |θ·g|) into a float32
accumulator of its shard's size. Both reductions therefore keep their per-batch meaning. One
all-reduce per batch sums the slices' losses and token counts: a non-finite sum skips the batch on
every rank before backward. The result's importances stay sharded (`EstimateResult.sharded`); the
artifact writer gathers them one tensor at a time.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from speech_llama.fsdp import is_sharded, local
from speech_llama.perplexity import response_nll

from .artifact import DEFAULT_PARAMS

Reduction = Literal["mean", "abs_per_batch"]
REDUCTIONS = ("mean", "abs_per_batch")


@dataclass
class EstimateResult:
    """What one estimation produced (identical on every rank after the all-reduce).

    Attributes:
        importances: name → fp32 tensor of the parameter's shape, |θ·∂L/∂θ| ≥ 0 (sharded runs:
            DTensors, each rank holding its shard).
        num_tokens: N, response tokens of the batches that were used.
        num_samples: records of the batches that were used.
        skipped_batches: batches dropped for a non-finite loss.
        seconds: wall time of the forward/backward loop on this rank.
        sharded: the importances are FSDP-sharded DTensors.
    """

    importances: dict[str, torch.Tensor]
    num_tokens: int
    num_samples: int
    skipped_batches: int
    seconds: float = 0.0
    skipped_at: list[int] = field(default_factory=list)
    sharded: bool = False

    @property
    def local_elements(self) -> int:
        """Accumulator elements this rank holds (all of them unless sharded)."""
        return sum(local(tensor).numel() for tensor in self.importances.values())


def select_parameters(model: torch.nn.Module, pattern: str = DEFAULT_PARAMS) -> dict[str, torch.nn.Parameter]:
    """The parameters whose name matches ``pattern`` (``re.search``), in model order.

    Raises:
        ValueError: the pattern is invalid or matches nothing (the message shows example names).
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"--params {pattern!r} is not a valid regular expression: {error}") from error
    named = dict(model.named_parameters())
    selected = {name: param for name, param in named.items() if regex.search(name)}
    if not selected:
        examples = list(named)[:5]
        raise ValueError(f"--params {pattern!r} matches no parameter; names look like {examples}")
    return selected


@contextmanager
def analysed_only(model: torch.nn.Module, params: Mapping[str, torch.nn.Parameter]):
    """Temporarily: only ``params`` require grad, the model is in eval mode, and their stale
    ``.grad`` is cleared. Requires-grad flags and the train/eval mode are restored on exit.

    Freezing the rest means autograd computes no gradient for encoder / embeddings unless they
    are analysed (faster, less memory); eval mode makes the estimate deterministic (no dropout).
    """
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    was_training = model.training
    analysed = {id(param) for param in params.values()}
    try:
        for param in model.parameters():
            param.requires_grad_(id(param) in analysed)
        for param in params.values():
            param.grad = None
        model.eval()
        yield
    finally:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        model.train(was_training)


class ImportanceAccumulator:
    """fp32 accumulators fed by post-accumulate-grad hooks (see the module docstring).

    Use as a context manager: hooks are registered on enter and removed on exit. After each
    ``backward`` every analysed parameter's accumulator has received θ·g (``mean``) or |θ·g|
    (``abs_per_batch``) and its ``.grad`` is None again.
    """

    def __init__(self, params: Mapping[str, torch.nn.Parameter], reduction: Reduction = "mean"):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.params = dict(params)
        self.reduction = reduction
        # zeros_like of a DTensor parameter is a DTensor with the same layout: one shard per rank.
        self.sums = {name: torch.zeros_like(param, dtype=torch.float32) for name, param in self.params.items()}
        self._handles: list[Any] = []

    def _hook(self, accumulator: torch.Tensor):
        signed = self.reduction == "mean"
        accumulator = local(accumulator)  # an FSDP2 parameter's hook sees its shard: add into ours

        def hook(param: torch.Tensor) -> None:
            grad, value = local(param.grad), local(param.detach())
            if grad.dtype == torch.float32 and value.dtype == torch.float32:
                if signed:
                    accumulator.addcmul_(value, grad)  # fused: no temporary of the parameter's size
                else:
                    accumulator.add_(grad.mul_(value).abs_())  # the gradient is ours to overwrite
            else:
                product = grad.float() * value.float()
                accumulator.add_(product if signed else product.abs_())
            param.grad = None  # free it now: memory stays at one accumulator per parameter

        return hook

    def __enter__(self) -> ImportanceAccumulator:
        for name, param in self.params.items():
            if not param.requires_grad:
                raise ValueError(f"{name} does not require grad; cannot analyse it")
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook(self.sums[name])))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# --- processes -----------------------------------------------------------------------------


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under a launcher (``WORLD_SIZE`` > 1 in the environment, as set by
    ``accelerate launch`` and ``torchrun``) the default process group is created with gloo when
    not yet initialised; the CPU all-reduce of the accumulators needs nothing more."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend="gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(result: EstimateResult) -> None:
    """Sum accumulators and counts over all ranks, in place (a no-op with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for tensor in result.importances.values():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    counts = torch.tensor([result.num_tokens, result.num_samples, result.skipped_batches], dtype=torch.float64)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    result.num_tokens, result.num_samples, result.skipped_batches = (int(value) for value in counts.tolist())


def load_slice(source, split: str = "test", skip: int = 0, max_samples: int | None = None, require_audio: bool = False):
    """Records [skip, skip + max_samples) of a source (`speech_llama.records.load_records`).

    ``skip`` lets two commands share one file without overlap: importance on the first N
    records (``--max-samples N``), perplexity on the rest (``--skip N``).
    """
    from speech_llama.records import load_records

    if skip < 0:
        raise ValueError(f"--skip must be >= 0, got {skip}")
    limit = None if max_samples is None else skip + max_samples
    records = load_records(source, split=split, max_samples=limit, require_audio=require_audio)
    if skip >= len(records):
        raise ValueError(f"{source}: --skip {skip} leaves no record (the source has {len(records)})")
    return records.select(range(skip, len(records))) if skip else records


def batch_rows(batch: Mapping[str, torch.Tensor], rank: int, world: int) -> tuple[dict[str, torch.Tensor], bool]:
    """This rank's contiguous slice of a collated batch's rows (`torch.tensor_split` over ``world``).

    Returns (the slice, whether it holds real rows). A rank left without rows (a batch smaller than
    the number of processes) gets a copy of the first row with every label −100: it still runs
    forward and backward (FSDP's collectives need every rank), and adds neither loss nor tokens.

    Raises:
        ValueError: the batch's speech clips are not one per row.
    """
    size = batch["input_ids"].shape[0]
    rows = torch.tensor_split(torch.arange(size), world)[rank]
    if rows.numel() == 0:
        dummy = {key: value[:1] for key, value in batch.items()}
        dummy["labels"] = torch.full_like(dummy["labels"], -100)
        return dummy, False
    sliced = {}
    for key, value in batch.items():
        if value.shape[0] != size:
            raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows for {size} records; sharded importance "
                             "splits batches by row and needs one speech clip per record")
        sliced[key] = value[rows[0] : rows[-1] + 1]
    return sliced, True


def _records_slice(records, start: int, stop: int):
    """records[start:stop] as something `iterate_batches` accepts (Dataset or list)."""
    if hasattr(records, "select"):
        return records.select(range(start, stop))
    return records[start:stop]


def sharded_batches(records, collator, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int, dict]]:
    """(batch index, records in it, collated batch) for batches i ≡ rank (mod world).

    Batch i always holds records [i·B, (i+1)·B), whatever the number of processes, so the
    per-batch terms — and with them both reductions — match a single-process run.
    """
    from speech_llama.collate import iterate_batches

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_batches = math.ceil(len(records) / batch_size)
    for index in range(rank, num_batches, world):
        chunk = _records_slice(records, index * batch_size, min(len(records), (index + 1) * batch_size))
        yield index, len(chunk), next(iterate_batches(chunk, collator, batch_size))


# --- the estimator -------------------------------------------------------------------------


def estimate_importance(
    model: torch.nn.Module,
    batches: Iterable[tuple[int, int, Mapping[str, torch.Tensor]]],
    params: Mapping[str, torch.nn.Parameter],
    reduction: Reduction = "mean",
    progress: bool = False,
    total_batches: int | None = None,
) -> EstimateResult:
    """Accumulate θ·g over ``batches`` and reduce (see the module docstring for the weighting).

    Args:
        model: the model (any causal LM taking a `QACollator` batch).
        batches: (batch index, records in it, batch) triples, e.g. from `sharded_batches`.
            Sharded model (FSDP2): every rank must be given every batch (``sharded_batches(…, 0, 1)``);
            each back-propagates its slice of the rows (`batch_rows`).
        params: name → parameter to analyse (`select_parameters`); the others are frozen
            during the call and restored afterwards.
        reduction: ``mean`` or ``abs_per_batch``.
        progress: show a progress bar with tokens/s (rank 0 only).
    Returns:
        `EstimateResult`, summed over ranks when a process group is initialised (sharded: each
        rank's importances are its shards).
    Raises:
        ValueError: every batch was skipped or held no response token.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    sharded = any(is_sharded(param) for param in params.values())
    if sharded and not all(is_sharded(param) for param in params.values()):
        raise ValueError("some analysed parameters are FSDP-sharded and some are not; shard the whole model")
    num_tokens = num_samples = 0
    skipped: list[int] = []
    started = time.perf_counter()
    with analysed_only(model, params), ImportanceAccumulator(params, reduction) as accumulator:
        bar = tqdm(batches, total=total_batches, desc=f"importance ({reduction})", disable=not progress or rank != 0)
        seen_tokens = 0
        for index, size, batch in bar:
            if sharded:
                batch, _ = batch_rows(batch, rank, world)
            loss_sum, tokens = response_nll(model, batch)
            seen_tokens += int(batch["attention_mask"].sum())
            if sharded:
                # The batch's loss and tokens are the sum of the ranks' slices; one verdict for all ranks.
                totals = torch.tensor([float(loss_sum.detach()), float(tokens)], dtype=torch.float64,
                                      device=loss_sum.device)
                dist.all_reduce(totals, op=dist.ReduceOp.SUM)
                batch_loss, tokens = totals[0], int(totals[1])
            else:
                batch_loss = loss_sum
            if not torch.isfinite(batch_loss):
                # Dropped before backward: no hook fires, so nothing of this batch is added.
                skipped.append(index)
                bar.write(f"importance: batch {index} has a non-finite loss ({float(batch_loss.detach())}); skipped")
                continue
            loss_sum.backward()
            num_tokens += tokens
            num_samples += size
            bar.set_postfix(tok_s=f"{seen_tokens / max(time.perf_counter() - started, 1e-9):.0f}", skipped=len(skipped))
        bar.close()
    result = EstimateResult(
        importances=accumulator.sums,
        num_tokens=num_tokens,
        num_samples=num_samples,
        skipped_batches=len(skipped),
        seconds=time.perf_counter() - started,
        skipped_at=skipped,
        sharded=sharded,
    )
    if not sharded:  # sharded: FSDP summed the gradients, and every rank counted every batch
        _all_reduce_sum(result)
    if result.num_tokens == 0:
        raise ValueError(
            f"no usable response tokens: {result.skipped_batches} batch(es) skipped for a non-finite loss, "
            "the rest held no labelled tokens"
        )
    for tensor in result.importances.values():
        local(tensor).div_(result.num_tokens).abs_()
    return result
