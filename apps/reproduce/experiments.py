"""The reproduction's experiment presets: sizes and settings of one run, chosen before looking at
results. (Not to be confused with the model-build presets of `speech_llama.presets`.)"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from speech_llama.precision import AUTO, cpu_runs_bfloat16, resolve_dtype_name
from speech_llama.synthesize import TRAINING_MIX

METHODS = ("full", "layer_lr", "lora")
ALIGN = "adaptor"  # the shared alignment stage (trainers' method `adaptor` with CTC: LLM frozen)
# Beyond the paper: adaptor-only DiVA-style distillation from the frozen LLM reading the transcript, on
# the methods' data, steps and seed. Its text ability is the start model's by construction: the
# reference for how much S2T is reachable at zero textual cost.
DISTILL = "distill"
FROZEN_LLM = (ALIGN, DISTILL)  # runs whose LLM is the pre-trained one: their T2T and text PPL are No-FT's
LORA_RANKS = (8, 16, 24)  # Table 3 (`--ablation lora-rank`); the main run's LoRA is `ExperimentPreset.lora_rank`


def lora_run_name(rank: int, main_rank: int) -> str:
    """The training folder of a LoRA rank: the main run's own `lora` for its rank, `lora-rR` for the others."""
    return "lora" if rank == main_rank else f"lora-r{rank}"


def comparisons(trained_names: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(task, a, b) pairs whose paired difference a − b the claims rest on: does Layer-LR / LoRA keep
    more T2T than Full-FT, and does each method's S2T rise above the model it started from (the
    aligned-only model: No-FT when the build preset is aligned, else the shared alignment stage)?"""
    start = ALIGN if ALIGN in trained_names else "no_ft"
    return [("t2t", "layer_lr", "full"), ("t2t", "lora", "full")] + [("s2t", method, start) for method in (*METHODS, DISTILL)]


@dataclass
class ExperimentPreset:
    """Sizes and settings of one reproduction (chosen before looking at results)."""

    name: str
    llm: str | None  # None: an offline build preset (`model_preset`)
    encoder: str | None
    train_records: int
    ppl_records: int  # held-out training-distribution prompts (base-LLM responses): Table 1's perplexity set
    test_records: int  # held-out QA questions for Table 2 (the corpus's held-out split, held-out voice)
    max_steps: int
    batch_size: int
    learning_rate: float
    lora_learning_rate: float
    adaptor_learning_rate: float
    lora_rank: int = 16
    model_preset: str = "offline-mini"  # `speech-llama build --preset` when llm is None
    align_steps: int = 0  # CTC alignment steps of the adaptor (LLM frozen), run once; every method starts from them
    align_records: int = 0  # spoken training prompts the alignment reads (the methods' prompts are a prefix)
    align_batch_size: int = 16
    transcript_ratio: float = 0.5  # share of speech rows trained on the transcript task
    # Who reads the training prompts: every corpus training voice in turn (the held-out speaker never),
    # so the methods do not fit one voice that the held-out tests never use.
    train_voice: str = TRAINING_MIX
    # bf16 autocast in training and alignment (a CPU with AVX512-BF16: ~1.6x faster steps); None: where
    # the CPU runs bf16 natively (emulated bf16 on an AVX2-only CPU is several times slower).
    train_bf16: bool | None = False
    max_new_tokens: int = 48
    response_tokens: int = 48
    eval_batch_size: int = 8
    importance_batch_size: int = 8
    dtype: str = "float32"
    # Weights' precision of every forward-only pass — QA evals, self-distilled responses, Table 1 and
    # response perplexity; importance and training (gradients) stay float32. bf16 is 2-3x faster on a
    # CPU with AVX512-BF16 at the same accuracy and PPL within 0.2 % (bench/inference_dtype.py,
    # bench/perplexity.py), 6x slower on an AVX2-only one. "auto": bfloat16 where it runs natively.
    inference_dtype: str = "float32"
    use_cpu: bool = True
    notes: list[str] = field(default_factory=list)


def for_this_machine(preset: ExperimentPreset) -> ExperimentPreset:
    """`preset` with its automatic precisions decided for this machine (results.json records these)."""
    device = "cpu" if preset.use_cpu else "cuda"
    train_bf16 = cpu_runs_bfloat16() if preset.train_bf16 is None and preset.use_cpu else bool(preset.train_bf16)
    return replace(preset, inference_dtype=resolve_dtype_name(preset.inference_dtype, device), train_bf16=train_bf16)


EXPERIMENT_PRESETS = {
    "cpu-mini": ExperimentPreset(
        name="cpu-mini", llm=None, encoder=None, train_records=480, ppl_records=300,
        test_records=404, max_steps=60, batch_size=8, learning_rate=1e-4, lora_learning_rate=5e-4,
        # adaptor lr 1e-4 chosen on the dev speech PPL (distil, 60 steps): 1e-3 → 5.88, 3e-4 → 4.78, 1e-4 → 4.62.
        adaptor_learning_rate=1e-4, train_bf16=None, max_new_tokens=32, inference_dtype=AUTO, eval_batch_size=16,
        # The cached aligned preset (its alignment is reused, not rerun): No-FT is the aligned-only model.
        model_preset="offline-mini-aligned",
    ),
    "cpu-mini-fast": ExperimentPreset(
        name="cpu-mini-fast", llm=None, encoder=None, train_records=40, ppl_records=16,
        test_records=16, max_steps=10, batch_size=4, learning_rate=1e-4, lora_learning_rate=5e-4,
        adaptor_learning_rate=1e-3, max_new_tokens=24, response_tokens=32, align_steps=20, align_records=80, train_bf16=None,
        inference_dtype=AUTO,
    ),
    "gpu-1b": ExperimentPreset(
        name="gpu-1b", llm="meta-llama/Llama-3.2-1B-Instruct", encoder="openai/whisper-large-v3", train_records=1895,
        ppl_records=300, test_records=404, max_steps=600, batch_size=32,
        learning_rate=2e-5, lora_learning_rate=2e-4, adaptor_learning_rate=1e-3, dtype="bfloat16", use_cpu=False,
        notes=["Needs Hub access and a GPU; LLaMA-Omni Stage-1 settings (lr 2e-5, cosine, 3 % warmup)."],
    ),
}
