"""Where a reproduction keeps its files under DIR (every stage's outputs; a stage whose outputs
exist is skipped)."""

from __future__ import annotations

from pathlib import Path

from .experiments import ALIGN, ExperimentPreset, TrainingRun, for_this_machine

FINAL = "final"  # the step label of a run's last model (its `final/` folder)


class RunLayout:
    """The paths of one run: DIR/models, data, importance, configs, train, eval, figures."""

    def __init__(self, preset: ExperimentPreset, out_dir: Path):
        self.preset = for_this_machine(preset)
        self.dir = Path(out_dir)

    @property
    def base_model(self) -> Path:
        return self.dir / "models" / "base"

    def spoken(self, name: str) -> Path:
        return self.dir / "data" / name / "data.jsonl"

    @property
    def text_dir(self) -> Path:
        return self.dir / "data" / "text"

    def train_records(self, targets: str) -> Path:
        """The runs' training records for one kind of targets: question, response, audio (beside the spoken prompts)."""
        return self.spoken("train").parent / f"{targets}.jsonl"

    @property
    def dev_records(self) -> Path:
        """The dev split: held-back other-writer pairs (question, response) with their audio."""
        return self.spoken("dev")

    @property
    def importance_data(self) -> Path:
        """The importance set D: training-question prompts with the base LLM's responses, spoken."""
        return self.spoken("importance")

    def importance(self, name: str) -> Path:
        return self.dir / "importance" / f"{name}.safetensors"

    @property
    def timings_file(self) -> Path:
        """Seconds each stage has taken, summed over the runs that worked on it (resumes included)."""
        return self.dir / "timings.json"

    def table1_result(self, row: str, input_kind: str) -> Path:
        """`speech-llama deactivate`'s result for one Table 1 row and input (of the base model)."""
        return self.dir / "importance" / f"table1-{row}-{input_kind}.json"

    def train_dir(self, name: str) -> Path:
        return self.dir / "train" / name

    def trained_model(self, name: str) -> Path:
        return self.train_dir(name) / FINAL

    def checkpoint(self, name: str, step: int) -> Path:
        """An intermediate model folder (trainer checkpoint, or LoRA merged into one); removed once evaluated."""
        return self.train_dir(name) / f"checkpoint-{step}"

    def model_at(self, name: str, step: int | str) -> Path:
        return self.trained_model(name) if step == FINAL else self.checkpoint(name, int(step))

    def eval_dir(self, name: str, task: str, step: int | str = FINAL) -> Path:
        """`speech-llama eval`'s output of one model (a run at a step, `no_ft` or `cascade`) and task."""
        if name in ("no_ft", "cascade"):
            return self.dir / "eval" / name / task
        return self.dir / "eval" / name / str(step) / task

    @property
    def start_model(self) -> Path:
        """Where the methods start: the aligned model when an alignment stage runs, else the base."""
        return self.trained_model(ALIGN) if self.preset.align_steps else self.base_model

    @property
    def start_name(self) -> str:
        """The start model's name in evals: the alignment stage's (`adaptor`) or the base's (`no_ft`)."""
        return ALIGN if self.preset.align_steps else "no_ft"

    def start_eval_dir(self, task: str) -> Path:
        """The start model's eval; its LLM is the pre-trained one, so its text answers are No-FT's."""
        return self.eval_dir("no_ft" if task == "t2t" else self.start_name, task)

    def run_eval_dir(self, run: TrainingRun, task: str, step: int | str = FINAL) -> Path:
        """A run's eval folder; a frozen LLM's text answers are No-FT's (not re-run)."""
        if run.frozen_llm and task == "t2t":
            return self.eval_dir("no_ft", task)
        return self.eval_dir(run.name, task, step)


def done(path: Path) -> bool:
    """A stage's output exists (it is written atomically, so it is complete)."""
    return path.exists()
