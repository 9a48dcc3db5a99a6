"""The reproduction's stages, each calling the project's own commands in this process."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from speech_llama.tts import HELD_OUT_VOICE
from apps.eval_diff import compare_runs, correct_column
from speech_llama.files import atomic_write_json, read_jsonl, write_jsonl
from speech_llama.statistics import bootstrap_interval

from .configs import write_train_config
from .distill import self_distil
from .figures import save_accuracy_figure
from .experiments import DISTILL, FROZEN_LLM, LORA_RANKS, METHODS, ExperimentPreset, comparisons, lora_run_name
from .layout import RunLayout, done
from .report import hypotheses, render_report
from .splits import held_out_prompts, importance_count, qa_splits, training_prompts

# Table 1's rows: the perplexity set each reads (DIR/data/<split>).
TABLE1_SETS = {"paper": "ppl", "short_answers": "test"}
# The stages of `run`; `wall_s` is their sum (ablations and seed repeats are reported apart).
MAIN_STAGES = ("model", "data", "importance", "train", "evaluate", "figures")


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
        """Text splits (disjoint by construction), self-distilled responses, then speech: the training
        prompts read by `preset.train_voice` (the training voices in turn), every held-out set by the
        held-out voice."""
        preset, text_dir = self.preset, self.text_dir
        trained = max(preset.align_records, preset.train_records)
        for name, rows in qa_splits(preset).items():
            if not done(self.spoken(name)):
                write_jsonl(text_dir / f"{name}.jsonl", [{"question": r["question"], "answers": r["answers"]} for r in rows])
                self._speak(text_dir / f"{name}.jsonl", name, HELD_OUT_VOICE)
        if not done(self.spoken("train")):
            # Every training prompt is spoken once; the alignment stage reads them all (question only).
            write_jsonl(text_dir / "align.jsonl", [{"question": prompt["question"], "answers": []}
                                                   for prompt in training_prompts(trained)])
            self._speak(text_dir / "align.jsonl", "train", preset.train_voice)
        if not done(self.qa_train_data):
            train_text = text_dir / "train.jsonl"
            self._self_distil(training_prompts(preset.train_records), train_text)
            audio_of = {row["question"]: row["audio"] for row in read_jsonl(self.spoken("train"))}
            write_jsonl(self.qa_train_data, [{**row, "audio": audio_of[row["question"]]} for row in read_jsonl(train_text)])
        if not done(self.importance_data):
            write_jsonl(self.importance_data, read_jsonl(self.qa_train_data)[: importance_count(preset)])
        if not done(self.spoken("ppl")):
            ppl_text = text_dir / "ppl.jsonl"
            self._self_distil(held_out_prompts(preset.ppl_records, trained), ppl_text)
            self._speak(ppl_text, "ppl", HELD_OUT_VOICE)

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
        `paper` (PPL of the base LLM's responses to held-out training-distribution prompts) and
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
        summaries = {}
        for method in self.trained_names:
            summaries[method] = self._distil() if method == DISTILL else self._train(method)
            if method in METHODS:
                self._importance(self.trained_model(method), "text", self.importance(f"{method}-text"))
        return summaries

    def _distil(self, run_name: str = DISTILL, seed: int = 0) -> dict:
        """The adaptor distilled from the frozen LLM on the methods' data, steps, batch and seed."""
        from alignment.distillation import DistillationSettings, distil_model_folder

        out_dir = self.train_dir(run_name)
        summary_path = out_dir / "summary.json"
        if not done(summary_path):
            preset = self.preset
            settings = DistillationSettings(steps=preset.max_steps, batch_size=preset.batch_size, seed=seed,
                                            learning_rate=preset.adaptor_learning_rate,
                                            max_response_tokens=preset.response_tokens,
                                            checkpoint_every=max(1, preset.max_steps // 4), bf16=preset.train_bf16)
            distil_model_folder(self.start_model, self.qa_train_data, out_dir, settings, self.progress)
            log = read_jsonl(out_dir / "distillation-log.jsonl")
            atomic_write_json(summary_path, {"output_dir": str(out_dir), "global_step": log[-1]["step"],
                                             "loss_curve": [entry["loss"] for entry in log], "settings": asdict(settings)})
        return _read_json(summary_path)

    def _train(self, method: str, lora_rank: int | None = None, run_name: str | None = None, seed: int = 0) -> dict:
        summary_path = self.train_dir(run_name or method) / "summary.json"
        if not done(summary_path):
            summary = run_command(["train", str(write_train_config(self, method, self.progress, lora_rank, run_name, seed))])
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
    def _eval(self, model_dir: Path, task: str, out: Path) -> float:
        if not done(out / "metrics.json"):
            run_command(["eval", "--model", str(model_dir), "--data", str(self.spoken("test")), "--task", task,
                         "--out", str(out), "--batch-size", str(self.preset.eval_batch_size),
                         "--max-new-tokens", str(self.preset.max_new_tokens), "--dtype", self.preset.inference_dtype])
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
        if name in FROZEN_LLM and task == "t2t":  # the LLM is the pre-trained one: No-FT's text answers, not re-run
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
            if name == "no_ft":  # Table 1's intact base model: the same model, records, batch and function
                perplexity[name] = {kind: _read_json(self.table1_result("paper", kind))["ppl"]["base"]
                                    for kind in ("text", "speech")}
                continue
            model, processor = load_model(model_dir, dtype=self.preset.inference_dtype)
            perplexity[name] = {
                input_kind: response_perplexity(model, processor, records, input=input_kind,
                                                batch_size=self.preset.importance_batch_size).ppl
                for input_kind in ("text", "speech") if not (name in FROZEN_LLM and input_kind == "text")
            }
        for name in FROZEN_LLM:  # frozen LLM: text input reads the same weights as No-FT
            if name in perplexity:
                perplexity[name] = {"text": perplexity["no_ft"]["text"], **perplexity[name]}
        return perplexity

    # --- Table 3: the LoRA-rank ablation (`--ablation lora-rank`, after the main run) ---
    def lora_rank_ablation(self) -> dict[str, Any]:
        """LoRA at each of `LORA_RANKS` on the main run's data, steps and seed: T2T / S2T with 95 % intervals,
        and the paired difference of each rank to the main run's rank. Returns results.json's `table3`."""
        main_rank = self.preset.lora_rank
        rows = {}
        for rank in LORA_RANKS:
            name = lora_run_name(rank, main_rank)
            summary = self._train("lora", rank, name)
            row = {"run": name, "steps": summary.get("global_step")}
            for task in ("t2t", "s2t"):
                row[task] = self._eval(self.trained_model(name), task, self._eval_dir(name, task))
                row[f"{task}_ci95"] = bootstrap_interval(correct_column(self._eval_dir(name, task))[1])
                if rank != main_rank:
                    row[f"{task}_minus_rank_{main_rank}"] = compare_runs(self._eval_dir(name, task),
                                                                         self._eval_dir("lora", task))["a_minus_b"]
            rows[str(rank)] = row
        return {"main_rank": main_rank, "ranks": rows}

    def run_ablation(self, name: str) -> dict[str, Any]:
        """Run (or finish) the main reproduction, then the named ablation; results.json and report.md gain it."""
        if name != "lora-rank":
            raise ValueError(f"unknown ablation {name!r}; the one there is: lora-rank")
        return self._extend(self.run(), "table3", "ablation lora-rank", self.lora_rank_ablation)

    # --- --seeds N: every method trained again with seeds 1 … N-1 ---
    def seed_repeats(self, seeds: int) -> dict[str, Any]:
        """Each method (and distill) with seeds 0 … N-1 on the same data and steps (seed 0 is the main
        run): T2T / S2T per seed, their mean and sample standard deviation. Returns results.json's `seeds`."""
        import statistics

        methods = {}
        for method in (*METHODS, DISTILL):
            values: dict[str, list[float]] = {"t2t": [], "s2t": []}
            for seed in range(seeds):
                name = method if seed == 0 else f"{method}-seed{seed}"
                if seed:
                    self._distil(name, seed) if method == DISTILL else self._train(method, run_name=name, seed=seed)
                for task in values:
                    eval_name = name if not (method in FROZEN_LLM and task == "t2t") else "no_ft"
                    values[task].append(self._eval(self.trained_model(name), task, self._eval_dir(eval_name, task)))
            methods[method] = {task: {"values": v, "mean": round(statistics.fmean(v), 4),
                                      "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0}
                               for task, v in values.items()}
        return {"n": seeds, "methods": methods}

    def run_seeds(self, seeds: int, results: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run (or finish) the main reproduction, then `seed_repeats`; results.json and report.md gain them."""
        if seeds < 2:
            raise ValueError(f"--seeds must be at least 2 to measure a spread, got {seeds}")
        return self._extend(results or self.run(), "seeds", f"seeds x{seeds}", lambda: self.seed_repeats(seeds))

    def _extend(self, results: dict[str, Any], key: str, stage: str, function) -> dict[str, Any]:
        results[key] = self.stage(stage, function)
        results["stage_seconds"] = dict(self.timings)
        atomic_write_json(self.dir / "results.json", results)
        (self.dir / "report.md").write_text(render_report(results, self.dir))
        return results

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
        save_accuracy_figure(evaluation, self.dir / "figures")
        shift = self.shift_table()
        results = {
            "preset": asdict(self.preset),
            "table1": _table1_rows(table1["paper"]),
            "table1_short_answers": _table1_rows(table1["short_answers"]),
            "table2": evaluation["table2"],
            "cascade": evaluation["cascade"],
            "perplexity": evaluation["perplexity"],
            "shift": shift,
            "training": {m: {"first_loss": (s["loss_curve"] or [None])[0], "last_loss": (s["loss_curve"] or [None])[-1],
                             "steps": s.get("global_step")} for m, s in training.items()},
            "intervals": evaluation["intervals"],
            "differences": evaluation["differences"],
            "hypotheses": hypotheses(table1["paper"], shift, evaluation["table2"], evaluation["differences"]),
            "stage_seconds": dict(self.timings),
            "wall_s": round(sum(self.timings[stage] for stage in MAIN_STAGES), 1),
            "this_run_s": round(time.perf_counter() - started, 1),
        }
        atomic_write_json(self.dir / "results.json", results)
        (self.dir / "report.md").write_text(render_report(results, self.dir))
        return results
