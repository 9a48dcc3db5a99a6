"""Where a reproduction keeps its files under DIR (every stage's outputs; a stage whose outputs
exist is skipped)."""

from __future__ import annotations

from pathlib import Path

from .experiments import ALIGN, DISTILL, METHODS, ExperimentPreset, for_this_machine


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

    @property
    def qa_train_data(self) -> Path:
        """The methods' training records: question, self-distilled response, audio (beside the spoken prompts)."""
        return self.spoken("train").parent / "qa.jsonl"

    @property
    def importance_data(self) -> Path:
        """The importance set D: the first 1/30 of the methods' training records (beside them)."""
        return self.spoken("train").parent / "importance.jsonl"

    def importance(self, name: str) -> Path:
        return self.dir / "importance" / f"{name}.safetensors"

    @property
    def timings_file(self) -> Path:
        """Seconds each stage has taken, summed over the runs that worked on it (resumes included)."""
        return self.dir / "timings.json"

    def table1_result(self, row: str, input_kind: str) -> Path:
        """`speech-llama deactivate`'s result for one Table 1 row and input (of the base model)."""
        return self.dir / "importance" / f"table1-{row}-{input_kind}.json"

    def train_dir(self, method: str) -> Path:
        return self.dir / "train" / method

    def trained_model(self, method: str) -> Path:
        return self.train_dir(method) / "final"

    @property
    def start_model(self) -> Path:
        """Where the methods start: the aligned model when an alignment stage runs, else the base."""
        return self.trained_model(ALIGN) if self.preset.align_steps else self.base_model

    @property
    def trained_names(self) -> tuple[str, ...]:
        return ((ALIGN,) if self.preset.align_steps else ()) + METHODS + (DISTILL,)


def done(path: Path) -> bool:
    """A stage's output exists (it is written atomically, so it is complete)."""
    return path.exists()
