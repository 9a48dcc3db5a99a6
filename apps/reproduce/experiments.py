"""The reproduction's experiment presets and training runs: sizes and settings of one run, chosen
before looking at results. (Not to be confused with the model-build presets of `speech_llama.presets`.)"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from speech_llama.precision import AUTO, cpu_runs_bfloat16, resolve_dtype_name
from speech_llama.synthesize import TRAINING_MIX

METHODS = ("full", "layer_lr", "lora")
ALIGN = "adaptor"  # the shared alignment stage (trainers' method `adaptor` with CTC: LLM frozen)
# Beyond the paper: adaptor-only DiVA-style distillation from the frozen LLM reading the transcript, on
# the methods' prompts, steps and seeds. Its text ability is the start model's by construction: the
# reference for how much S2T is reachable at zero textual cost.
DISTILL = "distill"
# Beyond the paper, `--ablation importance-per-parameter`: Full-FT with the pre-trained model's text importance
# per parameter (trainers/constraints.py) — its top fraction p frozen, or an anchor λ Σ Ĩ (θ − θ⁰)² — and the
# uniform anchor (Ĩ = 1: L2-SP), the control that tells the importance weighting from the anchoring.
CONSTRAINED = ("region_freeze", "importance_anchor", "uniform_anchor")
# Each one's dev sweep (region_freeze: p; the anchors: λ); the middle value is the trainers' default.
CONSTRAINT_SETTINGS = {"region_freeze": (0.01, 0.03, 0.1), "importance_anchor": (0.3, 1.0, 3.0),
                       "uniform_anchor": (0.3, 1.0, 3.0)}
FROZEN_LLM = (ALIGN, DISTILL)  # runs whose LLM is the pre-trained one: their T2T and text PPL are No-FT's
LORA_RANKS = (8, 16, 24)  # Table 3 (`--ablation lora-rank`); the main run's LoRA is `ExperimentPreset.lora_rank`
LR_FACTORS = (0.5, 2.0)  # `--ablation learning-rate`: the preset's learning rates times these, beside the main run's

# Whose responses a run learns: "other" = the other writer's (chatterbot-corpus, the paper's condition),
# "self" = the base LLM's own greedy answers to the same prompts (self-distillation).
OTHER, SELF = "other", "self"
# The paper's condition: another writer's responses, learned from the spoken question.
PAPER_CONDITION = (OTHER, "speech")
# The control the paper lacks, Full-FT on the same prompts and steps: which of the two changes costs T2T?
CONTROL_CONDITIONS = ((SELF, "speech"), (OTHER, "text"), (SELF, "text"))
METHOD_LABELS = {"full": "Full-FT", "layer_lr": "Layer-LR", "lora": "LoRA", DISTILL: "Distill", ALIGN: "CTC-aligned adaptor",
                 "region_freeze": "Region freeze", "importance_anchor": "Importance anchor",
                 "uniform_anchor": "Uniform anchor, L2-SP"}


@dataclass(frozen=True)
class TrainingRun:
    """One training run: a method on a condition (whose targets, which input) with one seed."""

    method: str
    targets: str = OTHER
    input: str = "speech"
    seed: int = 0
    setting: float | None = None  # a constrained method's p or λ (`CONSTRAINT_SETTINGS`)

    @property
    def series(self) -> str:
        """The run without its seed: what pooling over seeds groups by (`full`, `full-self-text`,
        `region_freeze@0.01`, …)."""
        method = self.method if self.setting is None else f"{self.method}@{self.setting:g}"
        if self.in_paper_condition:
            return method
        return f"{method}-{self.targets}-{self.input}"

    @property
    def name(self) -> str:
        """Its folder under DIR/train and DIR/eval."""
        return f"{self.series}-seed{self.seed}"

    @property
    def in_paper_condition(self) -> bool:
        # Distillation learns the frozen LLM's own distribution, whatever text follows the prompt: its
        # records carry the LLM's own responses (the `self` targets) on the same spoken prompts.
        return (self.targets, self.input) == PAPER_CONDITION or (self.method == DISTILL and self.input == "speech")

    @property
    def frozen_llm(self) -> bool:
        return self.method in FROZEN_LLM


def series_label(series: str) -> str:
    """A series for tables and figures: `Full-FT`, `Full-FT (self targets, typed)`, …"""
    method, _, condition = series.partition("-")
    method, _, setting = method.partition("@")
    label = METHOD_LABELS.get(method, method)
    if setting:
        label += f" ({setting_label(method, float(setting))})"
    if not condition:
        return label
    targets, input_kind = condition.split("-")
    parts = ["self targets" if targets == SELF else "other targets", "typed questions" if input_kind == "text" else "spoken"]
    return f"{label} ({', '.join(parts)})"


def setting_label(method: str, setting: float) -> str:
    """`p 1 %` for region_freeze, `λ 0.3` for the anchors."""
    return f"p {setting:.0%}" if method == "region_freeze" else f"λ {setting:g}"


def constrained_series(series: list[str]) -> list[str]:
    """The series of `series` that are constrained methods (`region_freeze@0.01`, …)."""
    return [name for name in series if name.partition("@")[0] in CONSTRAINED]


def paper_runs(seeds: int) -> list[TrainingRun]:
    """Every method and distill in the paper's condition, seed by seed (seed 0 of all first)."""
    return [TrainingRun(method, SELF if method == DISTILL else OTHER, "speech", seed)
            for seed in range(seeds) for method in (*METHODS, DISTILL)]


def control_runs(seeds: int) -> list[TrainingRun]:
    """Full-FT in the other three cells of targets × input."""
    return [TrainingRun("full", targets, input_kind, seed)
            for seed in range(seeds) for targets, input_kind in CONTROL_CONDITIONS]


@dataclass
class ExperimentPreset:
    """Sizes and settings of one reproduction (chosen before looking at results)."""

    name: str
    llm: str | None  # None: an offline build preset (`model_preset`)
    encoder: str | None
    train_records: int  # other-writer prompts every run trains on (one epoch at max_steps × batch_size when equal)
    ppl_records: int  # held-out training-question prompts (base-LLM responses): Table 1's perplexity set
    test_records: int  # held-out QA questions for Table 2 (the corpus's held-out split, held-out voice)
    max_steps: int
    batch_size: int
    learning_rate: float
    lora_learning_rate: float
    adaptor_learning_rate: float
    lora_rank: int = 16
    model_preset: str = "offline-mini"  # `speech-llama build --preset` when llm is None
    align_steps: int = 0  # CTC alignment steps of the adaptor (LLM frozen), run once; every method starts from them
    align_records: int = 0  # spoken other-writer prompts the alignment reads (the methods' prompts are a prefix)
    align_batch_size: int = 16
    dev_records: int = 64  # other-writer pairs held back from training, read by training voices: the dev split
    seeds: int = 3  # seeds of every method in the paper's condition (0 … seeds-1)
    control_seeds: int = 1  # seeds of the Full-FT controls (self targets, typed questions)
    # Checkpoints along training whose T2T / S2T make each method's forgetting curve (0 = the start
    # model and 1 = the final model are always there), for the paper condition's first `curve_seeds`
    # seeds, on the first `curve_records` test questions (None: all).
    curve_fractions: tuple[float, ...] = (0.25, 0.5)
    curve_seeds: int = 1
    curve_records: int | None = None
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

    def checkpoint_steps(self) -> tuple[int, ...]:
        """The intermediate steps of the forgetting curve (distinct, between 1 and max_steps - 1)."""
        steps = {round(fraction * self.max_steps) for fraction in self.curve_fractions}
        return tuple(sorted(step for step in steps if 0 < step < self.max_steps))

    def runs(self) -> list[TrainingRun]:
        return paper_runs(self.seeds) + control_runs(self.control_seeds)

    def has_curve(self, run: TrainingRun) -> bool:
        """Whether this run's intermediate checkpoints are kept and evaluated."""
        return run.in_paper_condition and run.seed < self.curve_seeds and bool(self.checkpoint_steps())


def for_this_machine(preset: ExperimentPreset) -> ExperimentPreset:
    """`preset` with its automatic precisions decided for this machine (results.json records these)."""
    device = "cpu" if preset.use_cpu else "cuda"
    train_bf16 = cpu_runs_bfloat16() if preset.train_bf16 is None and preset.use_cpu else bool(preset.train_bf16)
    return replace(preset, inference_dtype=resolve_dtype_name(preset.inference_dtype, device), train_bf16=train_bf16)


def lora_run_name(rank: int, main_rank: int) -> str:
    """The training folder of a LoRA rank: the main run's seed-0 LoRA for its rank, `lora-rR` for the others."""
    return TrainingRun("lora").name if rank == main_rank else f"lora-r{rank}"


EXPERIMENT_PRESETS = {
    # 15 trainings of 48 steps, 3 seeds of each method: about 127 min on 2 cores with native bf16 from a
    # cached corpus and aligned preset (docs/paper-in-miniature.md, "Time"; the goal is 120).
    "cpu-mini": ExperimentPreset(
        name="cpu-mini", llm=None, encoder=None, train_records=384, ppl_records=300,
        test_records=404, max_steps=48, batch_size=8, learning_rate=1e-4, lora_learning_rate=5e-4,
        # adaptor lr 1e-4 chosen on the dev speech PPL (distil, 60 steps): 1e-3 → 5.88, 3e-4 → 4.78, 1e-4 → 4.62.
        adaptor_learning_rate=1e-4, train_bf16=None, max_new_tokens=32, inference_dtype=AUTO, eval_batch_size=16,
        # The cached aligned preset (its alignment is reused, not rerun): No-FT is the aligned-only model.
        model_preset="offline-mini-aligned", curve_records=202,
    ),
    # Every stage and run of cpu-mini at smoke sizes (≤ 10 min): 12 trainings, two seeds, one checkpoint.
    "cpu-mini-fast": ExperimentPreset(
        name="cpu-mini-fast", llm=None, encoder=None, train_records=24, ppl_records=12,
        test_records=12, max_steps=6, batch_size=4, learning_rate=1e-4, lora_learning_rate=5e-4,
        adaptor_learning_rate=1e-3, max_new_tokens=16, response_tokens=24, align_steps=16, align_records=48, train_bf16=None,
        inference_dtype=AUTO, dev_records=12, seeds=2, curve_fractions=(0.5,),
    ),
    "gpu-1b": ExperimentPreset(
        name="gpu-1b", llm="meta-llama/Llama-3.2-1B-Instruct", encoder="openai/whisper-large-v3", train_records=768,
        ppl_records=300, test_records=404, max_steps=72, batch_size=32,
        learning_rate=2e-5, lora_learning_rate=2e-4, adaptor_learning_rate=1e-3, dtype="bfloat16", use_cpu=False,
        notes=["Needs Hub access and a GPU; LLaMA-Omni Stage-1 settings (lr 2e-5, cosine, 3 % warmup).",
               "768 training records: most of the usable other-writer pairs (the rest are the dev split); 3 epochs."],
    ),
}
