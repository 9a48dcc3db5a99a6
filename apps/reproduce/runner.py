"""The reproduction's stages, each calling the project's own commands in this process."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from apps.eval_diff import compare_runs, correct_column
from speech_llama.files import atomic_write_json, read_jsonl, write_jsonl
from speech_llama.statistics import bootstrap_interval
from speech_llama.tts import HELD_OUT_VOICE

from .analysis import Outcomes, accuracy_tables, curves, differences, frontier, shift_summary
from .checkpoints import keep_curve_checkpoints, remove_checkpoint
from .configs import write_train_config
from .distill import self_distil
from .experiments import (ALIGN, CONSTRAINED, CONSTRAINT_SETTINGS, DISTILL, LORA_RANKS, LR_FACTORS, METHODS, OTHER, SELF,
                          ExperimentPreset, TrainingRun, lora_run_name)
from .figures import save_accuracy_figure, save_frontier_figure
from .layout import FINAL, RunLayout, done
from .report import hypotheses, render_report
from .splits import held_out_prompts, importance_count, other_writer_data, other_writer_splits, qa_splits, training_prompts

# Table 1's rows: the perplexity set each reads (DIR/data/<split>).
TABLE1_SETS = {"paper": "ppl", "short_answers": "test"}
# The stages of `run`; `wall_s` is their sum (ablations are reported apart).
MAIN_STAGES = ("model", "data", "importance", "train", "evaluate", "figures")
# Preset fields a resumed run may change: more seeds reuse every finished run of the fewer.
RESUMABLE_CHANGES = ("seeds", "control_seeds", "notes")
# `--ablation NAME` → its key in results.json; a later run keeps the ones already there (their runs are cached).
ABLATION_KEYS = {"lora-rank": "table3", "learning-rate": "learning_rates",
                 "importance-per-parameter": "importance_per_parameter"}


def run_command(argv: list[str]) -> Any:
    """Run one `speech-llama` command in-process; errors propagate (the run stops where it failed)."""
    from speech_llama.commands import run_parsed

    from apps.cli import parse

    return run_parsed(parse(argv))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _table1_rows(by_input: dict[str, dict]) -> dict[str, dict]:
    return {kind: {"ppl": result["ppl"], "counts": result.get("counts")} for kind, result in by_input.items()}


class Reproduction(RunLayout):
    """One run of the miniature: DIR layout (`RunLayout`), stage by stage."""

    def __init__(self, preset: ExperimentPreset, out_dir: Path, progress: bool = True):
        super().__init__(preset, out_dir)
        self.progress = progress
        # A rerun that finds a stage done adds ~0 s: results report the time the work took, not the rerun's.
        self.timings: dict[str, float] = _read_json(self.timings_file) if self.timings_file.is_file() else {}

    def stage(self, name: str, function) -> Any:
        started = time.perf_counter()
        print(f"[reproduce] stage {name} …", flush=True)
        try:
            result = function()
        finally:  # an interrupted stage's time counts too: the rerun continues its work
            elapsed = time.perf_counter() - started
            self.timings[name] = round(self.timings.get(name, 0.0) + elapsed, 1)
            atomic_write_json(self.timings_file, self.timings)
        print(f"[reproduce] stage {name} done in {elapsed:.1f} s (all runs: {self.timings[name]} s)", flush=True)
        return result

    @property
    def runs(self) -> list[TrainingRun]:
        return self.preset.runs()

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
    def prepare_data(self) -> dict[str, Any]:
        """Text splits (disjoint by construction), the base LLM's own responses, then speech: the
        other-writer prompts (training and dev) read by `preset.train_voice` (the training voices in
        turn), every held-out set by the held-out voice. Returns the other-writer data's summary."""
        preset, text_dir = self.preset, self.text_dir
        for name, rows in qa_splits(preset).items():
            if not done(self.spoken(name)):
                write_jsonl(text_dir / f"{name}.jsonl", [{"question": r["question"], "answers": r["answers"]} for r in rows])
                self._speak(text_dir / f"{name}.jsonl", name, HELD_OUT_VOICE)
        splits = other_writer_splits(preset)
        if not done(self.spoken("train")):
            # Every training prompt is spoken once; the alignment stage reads them all (question only).
            write_jsonl(text_dir / "align.jsonl", [{"question": row["question"], "answers": []} for row in splits["align"]])
            self._speak(text_dir / "align.jsonl", "train", preset.train_voice)
        if not done(self.spoken("dev")):
            write_jsonl(text_dir / "dev.jsonl", splits["dev"])
            self._speak(text_dir / "dev.jsonl", "dev", preset.train_voice)
        self._training_records(splits["train"])
        if not done(self.spoken("importance")):
            importance_text = text_dir / "importance.jsonl"
            self._self_distil(training_prompts(importance_count(preset)), importance_text)
            self._speak(importance_text, "importance", preset.train_voice)
        if not done(self.spoken("ppl")):
            ppl_text = text_dir / "ppl.jsonl"
            self._self_distil(held_out_prompts(preset.ppl_records, importance_count(preset)), ppl_text)
            self._speak(ppl_text, "ppl", HELD_OUT_VOICE)
        return {**other_writer_data().summary(), "train": len(splits["train"]), "dev": len(splits["dev"]),
                "aligned": len(splits["align"])}

    def _training_records(self, rows: list[dict]) -> None:
        """DIR/data/train/{other,self}.jsonl: the same spoken prompts, the other writer's responses and
        the base LLM's own (a prompt it answers with nothing is left out of both)."""
        if done(self.train_records(OTHER)) and done(self.train_records(SELF)):
            return
        own_text = self.text_dir / "self.jsonl"
        self._self_distil(rows, own_text)
        own = {row["question"]: row["response"] for row in read_jsonl(own_text)}
        audio_of = {row["question"]: row["audio"] for row in read_jsonl(self.spoken("train"))}
        kept = [row for row in rows if row["question"] in own]
        write_jsonl(self.train_records(SELF), [{"question": r["question"], "response": own[r["question"]],
                                                "audio": audio_of[r["question"]]} for r in kept])
        write_jsonl(self.train_records(OTHER), [{"question": r["question"], "response": r["response"],
                                                 "audio": audio_of[r["question"]]} for r in kept])

    def _speak(self, text_file: Path, name: str, voice: str) -> None:
        run_command(["synthesize", "--data", str(text_file), "--out", str(self.spoken(name).parent), "--voice", voice])

    def _self_distil(self, prompts: list[dict], out: Path) -> None:
        if not done(out):
            self_distil(self.base_model, prompts, out, batch_size=self.preset.eval_batch_size * 2,
                        max_new_tokens=self.preset.response_tokens, dtype=self.preset.inference_dtype,
                        progress=self.progress)

    # --- 3. importance ---
    def _importance(self, model_dir: Path, input_kind: str, artifact: Path) -> None:
        if not done(artifact):
            run_command(["importance", "--model", str(model_dir), "--data", str(self.importance_data),
                         "--input", input_kind, "--out", str(artifact),
                         "--batch-size", str(self.preset.importance_batch_size), "--no-progress"])

    def base_importance(self) -> dict[str, dict[str, dict]]:
        """Importance of the pre-trained model (text and speech input) on D, and Table 1's two rows:
        `paper` (PPL of the base LLM's responses to held-out training-question prompts) and
        `short_answers` (PPL of the QA test set's short gold answers)."""
        table1: dict[str, dict[str, dict]] = {row: {} for row in TABLE1_SETS}
        for input_kind in ("text", "speech"):
            artifact = self.importance(f"base-{input_kind}")
            self._importance(self.base_model, input_kind, artifact)
            for row, split in TABLE1_SETS.items():
                result_path = self.table1_result(row, input_kind)
                if not done(result_path):
                    run_command(["deactivate", "--model", str(self.base_model), "--importance", str(artifact),
                                 "--data", str(self.spoken(split)), "--input", input_kind, "--fraction", "0.03",
                                 "--batch-size", str(self.preset.importance_batch_size), "--out", str(result_path),
                                 "--dtype", self.preset.inference_dtype, "--no-progress"])
                table1[row][input_kind] = _read_json(result_path)
        return table1

    # --- 4. train ---
    def train_methods(self) -> dict[str, dict]:
        """The alignment stage (when the preset has one), then every run; each paper-condition method's
        final model gets its text-input importance (the layer-shift claim, per seed)."""
        summaries = {}
        if self.preset.align_steps:
            summaries[ALIGN] = self._train(TrainingRun(ALIGN), run_name=ALIGN)
        for run in self.runs:
            summaries[run.name] = self._distil(run) if run.method == DISTILL else self._train(run)
            if run.method in METHODS and run.in_paper_condition:
                self._importance(self.trained_model(run.name), "text", self.importance(f"{run.name}-text"))
        return summaries

    def _curve_steps(self, run: TrainingRun) -> tuple[int, ...]:
        return self.preset.checkpoint_steps() if self.preset.has_curve(run) else ()

    def _distil(self, run: TrainingRun) -> dict:
        """The adaptor distilled from the frozen LLM on the runs' prompts (the LLM's own responses),
        steps, batch and seed."""
        from alignment.distillation import DistillationSettings, distil_model_folder

        out_dir = self.train_dir(run.name)
        summary_path = out_dir / "summary.json"
        if not done(summary_path):
            preset = self.preset
            settings = DistillationSettings(steps=preset.max_steps, batch_size=preset.batch_size, seed=run.seed,
                                            learning_rate=preset.adaptor_learning_rate,
                                            max_response_tokens=preset.response_tokens,
                                            checkpoint_every=max(1, preset.max_steps // 4), bf16=preset.train_bf16)
            distil_model_folder(self.start_model, self.train_records(SELF), out_dir, settings, self.progress,
                                stops=self._curve_steps(run))
            log = read_jsonl(out_dir / "distillation-log.jsonl")
            atomic_write_json(summary_path, {"output_dir": str(out_dir), "global_step": log[-1]["step"],
                                             "loss_curve": [entry["loss"] for entry in log], "settings": asdict(settings)})
        return _read_json(summary_path)

    def _train(self, run: TrainingRun, lora_rank: int | None = None, run_name: str | None = None,
               learning_rate: float | None = None, checkpoint_steps: tuple[int, ...] | None = None) -> dict:
        name = run_name or run.name
        summary_path = self.train_dir(name) / "summary.json"
        if not done(summary_path):
            steps = self._curve_steps(run) if checkpoint_steps is None else checkpoint_steps
            config = write_train_config(self, run, self.progress, lora_rank, name, learning_rate, steps)
            summary = run_command(["train", str(config)])
            keep_curve_checkpoints(self.train_dir(name), steps, self.start_model, lora=run.method == "lora")
            summary["loss_curve"] = self._loss_curve(Path(summary["output_dir"]))
            atomic_write_json(summary_path, summary)
        return _read_json(summary_path)

    @staticmethod
    def _loss_curve(output_dir: Path) -> list[float]:
        state = output_dir / "trainer_state.json"
        if not state.exists():
            return []
        return [entry["loss"] for entry in _read_json(state)["log_history"] if "loss" in entry]

    # --- 5. evaluate ---
    def _eval(self, model_dir: Path, task: str, out: Path, limit: int | None = None) -> float:
        if not done(out / "metrics.json"):
            run_command(["eval", "--model", str(model_dir), "--data", str(self.spoken("test")), "--task", task,
                         "--out", str(out), "--batch-size", str(self.preset.eval_batch_size),
                         "--max-new-tokens", str(self.preset.max_new_tokens), "--dtype", self.preset.inference_dtype,
                         *(["--max-samples", str(limit)] if limit else [])])
        return _read_json(out / "metrics.json")["accuracy"]

    def evaluate(self) -> dict[str, Any]:
        """No-FT, the start model and the cascade; every run's final model; the curve runs at each
        intermediate checkpoint (first `curve_records` questions; the checkpoint is removed once
        evaluated) with the dev perplexity along them; the response perplexity table."""
        for task in ("t2t", "s2t"):
            self._eval(self.base_model, task, self.eval_dir("no_ft", task))
        if self.preset.align_steps:
            self._eval(self.start_model, "s2t", self.start_eval_dir("s2t"))
        self._eval(self.base_model, "cascade", self.eval_dir("cascade", "s2t"))
        dev_ppl = {"start": {"0": self._dev_perplexity_of("start", self.start_model, 0)}}
        for run in self.runs:
            along = dev_ppl.setdefault(run.name, {}) if self.preset.has_curve(run) else {}
            for step in self._curve_steps(run):
                self._evaluate_model(run, step)
                along[str(step)] = self._dev_perplexity_of(run.name, self.checkpoint(run.name, step), step)
                remove_checkpoint(self.checkpoint(run.name, step))
            self._evaluate_model(run, FINAL)
            if self.preset.has_curve(run):
                along[str(self.preset.max_steps)] = self._dev_perplexity_of(run.name, self.trained_model(run.name),
                                                                            self.preset.max_steps)
        ppl_path = self.dir / "eval" / "perplexity.json"
        if not done(ppl_path):
            atomic_write_json(ppl_path, self._perplexity())
        return {"dev_ppl": dev_ppl, "perplexity": _read_json(ppl_path)}

    def _evaluate_model(self, run: TrainingRun, step: int | str) -> None:
        limit = None if step == FINAL else self.preset.curve_records
        for task in ("t2t", "s2t"):
            if not (run.frozen_llm and task == "t2t"):
                self._eval(self.model_at(run.name, step), task, self.eval_dir(run.name, task, step), limit)

    def _dev_perplexity_of(self, name: str, model_dir: Path, step: int) -> float:
        """The dev split's other-writer responses' PPL, speech input, of `name` at `step` (cached in DIR/eval/dev)."""
        return self._cached_perplexity(self.dir / "eval" / "dev" / f"{name}-{step}.json", model_dir, self.dev_records,
                                       "speech")

    def _dev_text_perplexity_of(self, name: str, model_dir: Path) -> float:
        """The base LLM's own responses to the dev prompts, typed: how far `name` moved from the text
        behaviour it started with, on prompts no run trains on (cached in DIR/eval/dev)."""
        records = self.text_dir / "dev-self.jsonl"
        self._self_distil(read_jsonl(self.text_dir / "dev.jsonl"), records)
        return self._cached_perplexity(self.dir / "eval" / "dev" / f"{name}-text.json", model_dir, records, "text")

    def _cached_perplexity(self, path: Path, model_dir: Path, records_path: Path, input_kind: str) -> float:
        if not done(path):
            from speech_llama.generate import load_model
            from speech_llama.perplexity import response_perplexity
            from speech_llama.records import load_records

            model, processor = load_model(model_dir, dtype=self.preset.inference_dtype)
            records = load_records(records_path, require_audio=input_kind == "speech")
            result = response_perplexity(model, processor, records, input=input_kind,
                                         batch_size=self.preset.importance_batch_size)
            atomic_write_json(path, {"ppl": result.ppl})
        return _read_json(path)["ppl"]

    def _perplexity(self) -> dict[str, dict[str, float]]:
        """Response PPL on Table 1's held-out set (the base LLM's responses), text and speech input, of
        No-FT and each seed-0 final of the paper's condition; text input of the controls'."""
        from speech_llama.generate import load_model
        from speech_llama.perplexity import response_perplexity
        from speech_llama.records import load_records

        records = load_records(self.spoken("ppl"), require_audio=True)
        # Table 1's intact base model: the same model, records, batch and function
        perplexity = {"no_ft": {kind: _read_json(self.table1_result("paper", kind))["ppl"]["base"]
                                for kind in ("text", "speech")}}
        for run in (run for run in self.runs if run.seed == 0):
            model, processor = load_model(self.trained_model(run.name), dtype=self.preset.inference_dtype)
            # The controls' speech-input PPL says little (a typed-question run never trained its adaptor): text only.
            kinds = ("text", "speech") if run.in_paper_condition else ("text",)
            perplexity[run.series] = {
                kind: perplexity["no_ft"]["text"] if run.frozen_llm and kind == "text" else  # the frozen LLM's, as No-FT's
                response_perplexity(model, processor, records, input=kind, batch_size=self.preset.importance_batch_size).ppl
                for kind in kinds
            }
        return perplexity

    # --- 6. figures and results ---
    def compare(self) -> dict[str, Any]:
        """Layer-profile shift of each seed-0 method vs the pre-trained model (+ figures)."""
        compare_dir = self.dir / "figures"
        names = [TrainingRun(method).name for method in METHODS]
        artifacts = [self.importance("base-text"), self.importance("base-speech"),
                     *(self.importance(f"{name}-text") for name in names)]
        labels = ["base (text)", "base (speech)"] + [f"{method} (text)" for method in METHODS]
        if not done(compare_dir / "compare.json"):
            run_command(["compare", *map(str, artifacts), "--labels", *labels, "--out", str(compare_dir),
                         "--checkpoint-a", str(self.base_model), "--checkpoint-b", str(self.trained_model(names[0]))])
        return _read_json(compare_dir / "compare.json")

    def shift_per_seed(self) -> dict[str, list[dict]]:
        """Each method's text-input layer-profile shift vs the pre-trained model, one row per seed."""
        from importance.analyse import layer_profile, shift_metrics
        from importance.artifact import load_artifact

        base = layer_profile(load_artifact(self.importance("base-text")).summary)
        table: dict[str, list[dict]] = {method: [] for method in METHODS}
        for run in self.runs:
            if run.method in METHODS and run.in_paper_condition:
                metrics = shift_metrics(base, layer_profile(load_artifact(self.importance(f"{run.name}-text")).summary))
                table[run.method].append({"seed": run.seed, "js_divergence": metrics["js_divergence"],
                                          "spearman": metrics["spearman"], "peak_layer": metrics["peak_layer"]["after"]})
        return table

    def outcome_tables(self, runs: list[TrainingRun], curve_table: dict[str, list[dict]]) -> dict[str, Any]:
        """Table 2, the paired differences and the frontier of `runs`' final models."""
        outcomes = Outcomes(self, runs)
        return {**accuracy_tables(outcomes), "differences": differences(outcomes),
                "frontier": frontier(curve_table, outcomes, self.preset.curve_records)}

    def results(self, table1: dict, other_writer: dict, training: dict, evaluation: dict,
                ablations: dict[str, Any]) -> dict[str, Any]:
        """Everything results.json holds, computed from the stages' files; `ablations` (results.json keys →
        tables) are kept, and their runs join Table 2, the differences and the frontier."""
        curve_runs = [run for run in self.runs if self.preset.has_curve(run)]
        curve_table = curves(Outcomes(self, curve_runs), curve_runs, self.preset.checkpoint_steps(), self.preset.max_steps,
                             self.preset.curve_records, evaluation["dev_ppl"])
        tables = self.outcome_tables(self.runs + self.ablation_runs(ablations), curve_table)
        shift = shift_summary(self.shift_per_seed())
        return {
            "preset": {**asdict(self.preset), "curve_fractions": list(self.preset.curve_fractions)},  # as JSON reads it back
            "other_writer": other_writer,
            "importance_records": importance_count(self.preset),
            "table1": _table1_rows(table1["paper"]),
            "table1_short_answers": _table1_rows(table1["short_answers"]),
            **{key: value for key, value in tables.items() if key not in ("differences", "frontier")},
            "perplexity": evaluation["perplexity"],
            "differences": tables["differences"],
            "curves": curve_table,
            "dev_choice": dev_choice(curve_table),
            "frontier": tables["frontier"],
            "shift": shift,
            "training": {name: {"first_loss": (s["loss_curve"] or [None])[0], "last_loss": (s["loss_curve"] or [None])[-1],
                                "steps": s.get("global_step")} for name, s in training.items()},
            "hypotheses": hypotheses(table1["paper"], shift, tables["differences"]),
            **ablations,
        }

    def check_design(self) -> None:
        """Refuse a DIR written by another design: its cached stages would be mixed into this run's.
        `DIR/preset.json` records the preset that wrote DIR."""
        stamp = self.dir / "preset.json"
        current = json.loads(json.dumps(asdict(self.preset)))
        if not stamp.is_file():
            if (self.dir / "data").exists():
                raise ValueError(f"{self.dir} holds a reproduction without preset.json (an earlier design): "
                                 "move it away or pass a new --out")
            atomic_write_json(stamp, current)
            return
        written = _read_json(stamp)
        changed = sorted(key for key in current.keys() | written.keys()
                         if key not in RESUMABLE_CHANGES and current.get(key) != written.get(key))
        if changed:
            raise ValueError(f"{stamp}: this folder was written with other settings ({', '.join(changed)}); "
                             "move it away or pass a new --out")

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.check_design()
        self.stage("model", self.build_model)
        other_writer = self.stage("data", self.prepare_data)
        table1 = self.stage("importance", self.base_importance)
        training = self.stage("train", self.train_methods)
        evaluation = self.stage("evaluate", self.evaluate)
        self.stage("figures", self.compare)
        results = self.results(table1, other_writer, training, evaluation, self._earlier_ablations())
        results |= {"stage_seconds": dict(self.timings),
                    "wall_s": round(sum(self.timings.get(stage, 0.0) for stage in MAIN_STAGES), 1),
                    "this_run_s": round(time.perf_counter() - started, 1)}
        self._write(results)
        return results

    def _earlier_ablations(self) -> dict[str, Any]:
        """The ablations an earlier run of this DIR wrote into results.json."""
        path = self.dir / "results.json"
        earlier = _read_json(path) if path.is_file() else {}
        return {key: earlier[key] for key in ABLATION_KEYS.values() if key in earlier}

    def ablation_runs(self, ablations: dict[str, Any]) -> list[TrainingRun]:
        """The runs of `ablations` that join the main methods' tables: the importance-per-parameter methods at
        their chosen settings, every seed."""
        chosen = ablations.get("importance_per_parameter", {}).get("chosen", {})
        return constrained_runs(chosen, self.preset.seeds)

    def _write(self, results: dict[str, Any]) -> None:
        save_accuracy_figure(results, self.dir / "figures")
        save_frontier_figure(results, self.dir / "figures")
        atomic_write_json(self.dir / "results.json", results)
        (self.dir / "report.md").write_text(render_report(results, self.dir))

    # --- ablations, after the main run (its stages reused) ---
    def run_ablation(self, name: str) -> dict[str, Any]:
        """Run (or finish) the main reproduction, then the named ablation; results.json and report.md gain it."""
        functions = {"lora-rank": self.lora_rank_ablation, "learning-rate": self.learning_rate_ablation,
                     "importance-per-parameter": self.importance_per_parameter_ablation}
        if name not in functions:
            raise ValueError(f"unknown ablation {name!r}; the ones there are: {', '.join(functions)}")
        results = self.run()
        key = ABLATION_KEYS[name]
        results[key] = self.stage(f"ablation {name}", functions[name])
        if self.ablation_runs({key: results[key]}):
            results |= self.outcome_tables(self.runs + self.ablation_runs(results), results["curves"])
        results["stage_seconds"] = dict(self.timings)
        self._write(results)
        return results

    def importance_per_parameter_ablation(self) -> dict[str, Any]:
        """Full-FT with the pre-trained model's text importance per parameter — region_freeze, importance_anchor —
        and the uniform anchor (L2-SP). Seed 0 of every setting of `CONSTRAINT_SETTINGS` is scored on the dev
        split (`dev_scores`); each method's setting with the lowest score is trained at every seed of the main
        run and evaluated like the paper's methods. No test question takes part in the choice."""
        start = {"task_ppl": self._dev_perplexity_of("start", self.start_model, 0),
                 "text_ppl": self._dev_text_perplexity_of("no_ft", self.base_model)}
        reference = {"start": start | {"score": round(start["task_ppl"] * start["text_ppl"], 4)},
                     "full": self.dev_scores(TrainingRun("full"))}
        sweep: dict[str, dict[str, dict]] = {}
        for method in CONSTRAINED:
            sweep[method] = {}
            for setting in CONSTRAINT_SETTINGS[method]:
                run = TrainingRun(method, seed=0, setting=setting)
                self._train(run, checkpoint_steps=())
                sweep[method][f"{setting:g}"] = self.dev_scores(run)
        chosen = {method: float(min(rows, key=lambda setting: rows[setting]["score"])) for method, rows in sweep.items()}
        for run in constrained_runs(chosen, self.preset.seeds):
            self._train(run, checkpoint_steps=())
            self._evaluate_model(run, FINAL)
        # Reported beside the choice, never read by it: how each setting did on the test questions.
        reference["start"] |= {"t2t": self._eval(self.base_model, "t2t", self.eval_dir("no_ft", "t2t")),
                               "s2t": self._eval(self.start_model, "s2t", self.start_eval_dir("s2t"))}
        reference["full"] |= self.test_accuracies(TrainingRun("full"))
        for method, rows in sweep.items():
            for setting, row in rows.items():
                row |= self.test_accuracies(TrainingRun(method, seed=0, setting=float(setting)))
        return {"reference": reference, "dev": sweep, "chosen": chosen}

    def test_accuracies(self, run: TrainingRun) -> dict[str, float]:
        """A run's final T2T and S2T on the test questions."""
        return {task: self._eval(self.trained_model(run.name), task, self.eval_dir(run.name, task)) for task in ("t2t", "s2t")}

    def dev_scores(self, run: TrainingRun) -> dict[str, float]:
        """A final model on the dev split: the other writer's responses from the spoken prompts (`task_ppl`,
        what training teaches), the base LLM's own responses from the typed prompts (`text_ppl`, what it
        should keep), and `score`, their product (lower is better: both count alike, in ratios)."""
        model = self.trained_model(run.name)
        task, text = self._dev_perplexity_of(run.name, model, self.preset.max_steps), self._dev_text_perplexity_of(run.name, model)
        return {"task_ppl": task, "text_ppl": text, "score": round(task * text, 4)}

    def lora_rank_ablation(self) -> dict[str, Any]:
        """Table 3: LoRA at each of `LORA_RANKS` in the paper's condition, seed 0, on the main run's data and
        steps: T2T / S2T with 95 % intervals, and the paired difference of each rank to the main run's rank."""
        main_rank = self.preset.lora_rank
        main = TrainingRun("lora")
        rows = {}
        for rank in LORA_RANKS:
            name = lora_run_name(rank, main_rank)
            summary = self._train(main, rank, name, checkpoint_steps=()) if rank != main_rank else self._train(main)
            row = {"run": name, "steps": summary.get("global_step")}
            for task in ("t2t", "s2t"):
                row[task] = self._eval(self.trained_model(name), task, self.eval_dir(name, task))
                row[f"{task}_ci95"] = bootstrap_interval(correct_column(self.eval_dir(name, task))[1])
                if rank != main_rank:
                    row[f"{task}_minus_rank_{main_rank}"] = compare_runs(self.eval_dir(name, task),
                                                                         self.eval_dir(main.name, task))["a_minus_b"]
            rows[str(rank)] = row
        return {"main_rank": main_rank, "ranks": rows}

    def learning_rate_ablation(self) -> dict[str, Any]:
        """How the preset's learning rates and steps are chosen: Full-FT and LoRA in the paper's condition
        (seed 0) at the preset's rate times each of `LR_FACTORS`, checkpoints at the curve's steps, and the
        dev split's response perplexity (speech input) at each; the main run's own rate is the factor 1.
        The choice per method is the (rate, step) with the lowest dev perplexity — never a test question."""
        steps = self.preset.checkpoint_steps()
        table: dict[str, dict] = {}
        for method in ("full", "lora"):
            run = TrainingRun(method)
            base = self.preset.lora_learning_rate if method == "lora" else self.preset.learning_rate
            rows = {f"{base:g}": self._dev_curve(run.name, (*steps, self.preset.max_steps))}
            for factor in LR_FACTORS:
                rate = base * factor
                name = f"{run.name}-lr{rate:g}"
                self._train(run, run_name=name, learning_rate=rate, checkpoint_steps=steps)
                rows[f"{rate:g}"] = self._dev_curve(name, (*steps, self.preset.max_steps))
            best_rate, best_step = min(((rate, step) for rate, curve in rows.items() for step in curve),
                                       key=lambda key: rows[key[0]][key[1]])
            table[method] = {"preset_rate": base, "dev_ppl": rows, "chosen": {"rate": float(best_rate), "step": int(best_step)}}
        return table

    def _dev_curve(self, name: str, steps: tuple[int, ...]) -> dict[str, float]:
        """{step: dev PPL} of a run at `steps` (the last is its final model; a measured step is read from
        DIR/eval/dev); its intermediate checkpoints are removed once measured."""
        curve = {}
        for step in steps:
            model = self.trained_model(name) if step == self.preset.max_steps else self.checkpoint(name, step)
            curve[str(step)] = self._dev_perplexity_of(name, model, step)
            if step != self.preset.max_steps:
                remove_checkpoint(model)
        return curve


def constrained_runs(chosen: dict[str, float], seeds: int) -> list[TrainingRun]:
    """Each constrained method at its chosen setting, seed by seed (the paper's condition)."""
    return [TrainingRun(method, seed=seed, setting=setting) for seed in range(seeds) for method, setting in chosen.items()]


def dev_choice(curve_table: dict[str, list[dict]]) -> dict[str, dict]:
    """Per curve series: the step whose model has the lowest dev perplexity (the dev split's other-writer
    responses, speech input) — where training would stop if the dev split chose it."""
    choice = {}
    for name, points in curve_table.items():
        measured = [point for point in points if point.get("dev_ppl") is not None]
        if measured:
            best = min(measured, key=lambda point: point["dev_ppl"])
            choice[name] = {"step": best["step"], "dev_ppl": best["dev_ppl"]}
    return choice


__all__ = ["MAIN_STAGES", "Reproduction", "dev_choice", "run_command"]
