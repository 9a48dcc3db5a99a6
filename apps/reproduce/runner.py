"""The reproduction's stages, each calling the project's own commands in this process."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from speech_llama.eval_diff import compare_runs, correct_column
from speech_llama.files import atomic_write_json, read_jsonl, write_jsonl
from speech_llama.statistics import bootstrap_interval

from .configs import write_train_config
from .distill import self_distil
from .experiments import ALIGN, METHODS, ExperimentPreset, comparisons
from .layout import RunLayout, done
from .report import hypotheses, render_report
from .splits import qa_splits, training_prompts


def run_command(argv: list[str]) -> Any:
    """Run one `speech-llama` command in-process; errors propagate (the run stops where it failed)."""
    from speech_llama.commands import run_parsed

    from apps.cli import parse

    return run_parsed(parse(argv))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class Reproduction(RunLayout):
    """One run of the miniature: DIR layout (`RunLayout`), stage by stage."""

    def __init__(self, preset: ExperimentPreset, out_dir: Path, progress: bool = True):
        super().__init__(preset, out_dir)
        self.progress = progress
        self.timings: dict[str, float] = {}

    def stage(self, name: str, function) -> Any:
        started = time.perf_counter()
        print(f"[reproduce] stage {name} …", flush=True)
        result = function()
        self.timings[name] = round(time.perf_counter() - started, 1)
        print(f"[reproduce] stage {name} done in {self.timings[name]} s", flush=True)
        return result

    # --- 1. model ---
    def build_model(self) -> None:
        if done(self.base_model / "config.json"):
            return
        if self.preset.llm is None:
            run_command(["build", "--preset", self.preset.model_preset, "--out", str(self.base_model)])
        else:
            run_command(["build", "--llm", self.preset.llm, "--encoder", self.preset.encoder, "--out", str(self.base_model),
                         "--dtype", self.preset.dtype])

    # --- 2. data ---
    def prepare_data(self) -> None:
        """Text splits (disjoint by construction), self-distilled responses, then speech."""
        preset, text_dir = self.preset, self.text_dir
        for name, rows in qa_splits(preset).items():
            if not done(self.spoken(name)):
                write_jsonl(text_dir / f"{name}.jsonl", [{"question": r["question"], "answers": r["answers"]} for r in rows])
                run_command(["synthesize", "--data", str(text_dir / f"{name}.jsonl"), "--out", str(self.spoken(name).parent)])
        if not done(self.spoken("train")):
            # Every training prompt is spoken once; the alignment stage reads them all (question only).
            prompts = training_prompts(max(preset.align_records, preset.train_records))
            write_jsonl(text_dir / "align.jsonl", [{"question": prompt["question"], "answers": []} for prompt in prompts])
            run_command(["synthesize", "--data", str(text_dir / "align.jsonl"), "--out", str(self.spoken("train").parent)])
        if not done(self.qa_train_data):
            train_text = text_dir / "train.jsonl"
            if not done(train_text):
                self_distil(self.base_model, training_prompts(preset.train_records), train_text,
                            batch_size=preset.eval_batch_size * 2, max_new_tokens=preset.response_tokens,
                            progress=self.progress)
            audio_of = {row["question"]: row["audio"] for row in read_jsonl(self.spoken("train"))}
            write_jsonl(self.qa_train_data, [{**row, "audio": audio_of[row["question"]]} for row in read_jsonl(train_text)])

    # --- 3. importance ---
    def _importance(self, model_dir: Path, input_kind: str, artifact: Path) -> None:
        if not done(artifact):
            run_command(["importance", "--model", str(model_dir), "--data", str(self.spoken("importance")),
                         "--input", input_kind, "--out", str(artifact),
                         "--batch-size", str(self.preset.importance_batch_size), "--no-progress"])

    def base_importance(self) -> dict[str, dict]:
        """Importance of the pre-trained model (text and speech input) and its Table 1."""
        table1 = {}
        for input_kind in ("text", "speech"):
            artifact = self.importance(f"base-{input_kind}")
            self._importance(self.base_model, input_kind, artifact)
            result_path = self.dir / "importance" / f"table1-{input_kind}.json"
            if not done(result_path):
                run_command(["deactivate", "--model", str(self.base_model), "--importance", str(artifact),
                             "--data", str(self.spoken("ppl")), "--input", input_kind, "--fraction", "0.03",
                             "--batch-size", str(self.preset.importance_batch_size), "--out", str(result_path),
                             "--no-progress"])
            table1[input_kind] = _read_json(result_path)
        return table1

    # --- 4. train ---
    def train_methods(self) -> dict[str, dict]:
        summaries = {}
        for method in self.trained_names:
            summary_path = self.train_dir(method) / "summary.json"
            if not done(summary_path):
                summary = run_command(["train", str(write_train_config(self, method, self.progress))])
                summary["loss_curve"] = self._loss_curve(Path(summary["output_dir"]))
                atomic_write_json(summary_path, summary)
            summaries[method] = _read_json(summary_path)
            if method != ALIGN:
                self._importance(self.trained_model(method), "text", self.importance(f"{method}-text"))
        return summaries

    @staticmethod
    def _loss_curve(output_dir: Path) -> list[float]:
        state = output_dir / "trainer_state.json"
        if not state.exists():
            return []
        return [entry["loss"] for entry in _read_json(state)["log_history"] if "loss" in entry]

    # --- 5. evaluate ---
    def _eval(self, model_dir: Path, task: str, out: Path) -> float:
        if not done(out / "metrics.json"):
            run_command(["eval", "--model", str(model_dir), "--data", str(self.spoken("test")), "--task", task,
                         "--out", str(out), "--batch-size", str(self.preset.eval_batch_size),
                         "--max-new-tokens", str(self.preset.max_new_tokens)])
        return _read_json(out / "metrics.json")["accuracy"]

    def evaluate(self) -> dict[str, Any]:
        models = {"no_ft": self.base_model, **{name: self.trained_model(name) for name in self.trained_names}}
        table2: dict[str, dict[str, float]] = {}
        for name, model_dir in models.items():
            table2[name] = {}
            for task in ("t2t", "s2t"):
                table2[name][task] = self._eval(model_dir, task, self._eval_dir(name, task))
        cascade = self._eval(self.base_model, "cascade", self.dir / "eval" / "cascade")
        ppl_path = self.dir / "eval" / "perplexity.json"
        if not done(ppl_path):
            atomic_write_json(ppl_path, self._perplexity(models))
        return {"table2": table2, "cascade": cascade, "perplexity": _read_json(ppl_path),
                "intervals": self._intervals(models), "differences": self._differences()}

    def _eval_dir(self, name: str, task: str) -> Path:
        if name == ALIGN and task == "t2t":  # the alignment leaves the LLM frozen: No-FT's text answers, not re-run
            name = "no_ft"
        return self.dir / "eval" / name / task

    def _intervals(self, models: dict[str, Path]) -> dict[str, dict[str, dict]]:
        """95 % bootstrap interval of every Table 2 accuracy (and the cascade's), over the test questions."""
        intervals = {name: {task: bootstrap_interval(correct_column(self._eval_dir(name, task))[1]) for task in ("t2t", "s2t")}
                     for name in models}
        intervals["cascade"] = {"s2t": bootstrap_interval(correct_column(self.dir / "eval" / "cascade")[1])}
        return intervals

    def _differences(self) -> dict[str, dict]:
        """Paired 95 % bootstrap intervals of the differences the claims rest on (`report.COMPARISONS`)."""
        return {f"{task}: {a} − {b}": compare_runs(self._eval_dir(a, task), self._eval_dir(b, task))["a_minus_b"]
                for task, a, b in comparisons(self.trained_names)}

    def _perplexity(self, models: dict[str, Path]) -> dict[str, dict[str, float]]:
        from speech_llama.generate import load_model
        from speech_llama.perplexity import response_perplexity
        from speech_llama.records import load_records

        records = load_records(self.spoken("ppl"), require_audio=True)
        perplexity = {}
        for name, model_dir in models.items():
            model, processor = load_model(model_dir)
            perplexity[name] = {
                input_kind: response_perplexity(model, processor, records, input=input_kind,
                                                batch_size=self.preset.importance_batch_size).ppl
                for input_kind in ("text", "speech") if not (name == ALIGN and input_kind == "text")
            }
        if ALIGN in perplexity:  # frozen LLM: text input reads the same weights as No-FT
            perplexity[ALIGN] = {"text": perplexity["no_ft"]["text"], **perplexity[ALIGN]}
        return perplexity

    # --- 6. figures and results ---
    def compare(self) -> dict[str, Any]:
        """Layer-profile shift of each trained model vs the pre-trained one (+ figures)."""
        compare_dir = self.dir / "figures"
        artifacts = [self.importance("base-text"), self.importance("base-speech")] + [
            self.importance(f"{method}-text") for method in METHODS
        ]
        labels = ["base (text)", "base (speech)"] + [f"{method} (text)" for method in METHODS]
        if not done(compare_dir / "compare.json"):
            run_command(["compare", *map(str, artifacts), "--labels", *labels, "--out", str(compare_dir),
                         "--checkpoint-a", str(self.base_model), "--checkpoint-b", str(self.trained_model("full"))])
        return _read_json(compare_dir / "compare.json")

    def shift_table(self) -> dict[str, dict[str, float]]:
        from importance.analyse import layer_profile, shift_metrics
        from importance.artifact import load_artifact

        base = layer_profile(load_artifact(self.importance("base-text")).summary)
        table = {}
        for method in METHODS:
            after = layer_profile(load_artifact(self.importance(f"{method}-text")).summary)
            metrics = shift_metrics(base, after)
            table[method] = {"js_divergence": metrics["js_divergence"], "spearman": metrics["spearman"],
                             "peak_layer": metrics["peak_layer"]["after"]}
        return table

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stage("model", self.build_model)
        self.stage("data", self.prepare_data)
        table1 = self.stage("importance", self.base_importance)
        training = self.stage("train", self.train_methods)
        evaluation = self.stage("evaluate", self.evaluate)
        self.stage("figures", self.compare)
        shift = self.shift_table()
        results = {
            "preset": asdict(self.preset),
            "table1": {kind: {"ppl": table1[kind]["ppl"], "counts": table1[kind].get("counts")} for kind in table1},
            "table2": evaluation["table2"],
            "cascade": evaluation["cascade"],
            "perplexity": evaluation["perplexity"],
            "shift": shift,
            "training": {m: {"first_loss": (s["loss_curve"] or [None])[0], "last_loss": (s["loss_curve"] or [None])[-1],
                             "steps": s.get("global_step")} for m, s in training.items()},
            "intervals": evaluation["intervals"],
            "differences": evaluation["differences"],
            "hypotheses": hypotheses(table1, shift, evaluation["table2"], evaluation["differences"]),
            "stage_seconds": self.timings,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        atomic_write_json(self.dir / "results.json", results)
        (self.dir / "report.md").write_text(render_report(results, self.dir))
        return results
