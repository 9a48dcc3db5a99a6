"""`speech-llama reproduce`: the seed paper's experiments in miniature, end to end, offline.

Stages (each writes its outputs under DIR and is skipped when they already exist, so an
interrupted run continues where it stopped):

1. model      — build the preset's model (offline-mini on CPU).
2. data       — training prompts from `data/train_questions.jsonl` answered by the base LLM itself
                (self-distilled responses, greedy), and QA test sets; all spoken with Piper.
3. importance — text- and speech-input importance of the pre-trained model; deactivation check
                (Table 1) for both inputs.
4. train      — Stage 1 with Full-FT, Layer-LR (from stage 3's text summary) and LoRA: same data,
                steps and seed; then text-input importance of each trained model.
5. evaluate   — No-FT and per-method T2T / S2T accuracy, the Whisper-ASR cascade, perplexity.
6. report     — `results.json`, `report.md` and figures (Fig. 1–4 analogues).

Every stage calls the project's own commands (build, synthesize, importance, deactivate,
trainers/run.py, eval, compare): nothing here is a second implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from speech_llama.files import atomic_write_json, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
METHODS = ("full", "layer_lr", "lora")
ALIGN = "adaptor"  # the shared alignment stage (trainers' method `adaptor` with CTC: LLM frozen)


@dataclass
class Preset:
    """Sizes and settings of one reproduction (chosen before looking at results)."""

    name: str
    llm: str | None  # None: the offline-mini build
    encoder: str | None
    train_records: int
    importance_records: int  # D: QA records for importance (first N of general_knowledge_qa)
    ppl_records: int  # held-out QA records for the perplexity of Table 1
    test_records: int  # QA test set for Table 2 (demo_qa first, then the tail of general_knowledge_qa)
    max_steps: int
    batch_size: int
    learning_rate: float
    lora_learning_rate: float
    adaptor_learning_rate: float
    align_steps: int = 0  # CTC alignment steps of the adaptor (LLM frozen), run once; every method starts from them
    align_records: int = 0  # spoken training prompts the alignment reads (the methods' prompts are a prefix)
    align_batch_size: int = 16
    transcript_ratio: float = 0.5  # share of speech rows trained on the transcript task
    train_bf16: bool = False  # bf16 autocast in training and alignment (CPU with AVX512-BF16: ~1.6x faster steps here)
    max_new_tokens: int = 48
    response_tokens: int = 48
    eval_batch_size: int = 8
    importance_batch_size: int = 8
    dtype: str = "float32"
    use_cpu: bool = True
    notes: list[str] = field(default_factory=list)


PRESETS = {
    "cpu-mini": Preset(
        name="cpu-mini", llm=None, encoder=None, train_records=480, importance_records=200, ppl_records=100,
        test_records=100, max_steps=60, batch_size=8, learning_rate=1e-4, lora_learning_rate=5e-4,
        adaptor_learning_rate=1e-3, align_steps=300, align_records=1200, train_bf16=True, max_new_tokens=32,
    ),
    "cpu-mini-fast": Preset(
        name="cpu-mini-fast", llm=None, encoder=None, train_records=40, importance_records=24, ppl_records=16,
        test_records=16, max_steps=10, batch_size=4, learning_rate=1e-4, lora_learning_rate=5e-4,
        adaptor_learning_rate=1e-3, max_new_tokens=24, response_tokens=32, align_steps=20, align_records=80, train_bf16=True,
    ),
    "gpu-1b": Preset(
        name="gpu-1b", llm="meta-llama/Llama-3.2-1B-Instruct", encoder="openai/whisper-large-v3", train_records=2195,
        importance_records=250, ppl_records=138, test_records=178, max_steps=600, batch_size=32,
        learning_rate=2e-5, lora_learning_rate=2e-4, adaptor_learning_rate=1e-3, dtype="bfloat16", use_cpu=False,
        notes=["Needs Hub access and a GPU; LLaMA-Omni Stage-1 settings (lr 2e-5, cosine, 3 % warmup)."],
    ),
}


def run_command(argv: list[str]) -> Any:
    """Run one `speech-llama` command in-process; errors propagate (the run stops where it failed)."""
    import importlib

    from .cli import parse

    args = parse(argv)
    return importlib.import_module(args._module).run(args)


def _done(path: Path) -> bool:
    return path.exists()


def training_prompts(count: int, seed: int = 0) -> list[dict]:
    """The first `count` prompts of `data/train_questions.jsonl` in a seeded shuffle (the file is
    grouped by kind, instructions first): any prefix mixes QA questions and instructions, and a
    smaller set is a prefix of a larger one."""
    prompts = read_jsonl(DATA_DIR / "train_questions.jsonl")
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


class Reproduction:
    """One run of the miniature: DIR layout, stage by stage."""

    def __init__(self, preset: Preset, out_dir: Path, progress: bool = True):
        self.preset = preset
        self.dir = Path(out_dir)
        self.progress = progress
        self.timings: dict[str, float] = {}

    # --- paths ---
    @property
    def base_model(self) -> Path:
        return self.dir / "models" / "base"

    def spoken(self, name: str) -> Path:
        return self.dir / "data" / name / "data.jsonl"

    @property
    def qa_train_data(self) -> Path:
        """The methods' training records: question, self-distilled response, audio (beside the spoken prompts)."""
        return self.spoken("train").parent / "qa.jsonl"

    def importance(self, name: str) -> Path:
        return self.dir / "importance" / f"{name}.safetensors"

    def trained_model(self, method: str) -> Path:
        return self.dir / "train" / method / "final"

    @property
    def start_model(self) -> Path:
        """Where the methods start: the aligned model when an alignment stage runs, else the base."""
        return self.trained_model(ALIGN) if self.preset.align_steps else self.base_model

    @property
    def trained_names(self) -> tuple[str, ...]:
        return ((ALIGN,) if self.preset.align_steps else ()) + METHODS

    # --- stages ---
    def stage(self, name: str, function) -> Any:
        started = time.perf_counter()
        print(f"[reproduce] stage {name} …", flush=True)
        result = function()
        self.timings[name] = round(time.perf_counter() - started, 1)
        print(f"[reproduce] stage {name} done in {self.timings[name]} s", flush=True)
        return result

    def build_model(self) -> None:
        if _done(self.base_model / "config.json"):
            return
        if self.preset.llm is None:
            run_command(["build", "--preset", "offline-mini", "--out", str(self.base_model)])
        else:
            run_command(["build", "--llm", self.preset.llm, "--encoder", self.preset.encoder, "--out", str(self.base_model),
                         "--dtype", self.preset.dtype])

    def prepare_data(self) -> None:
        """Text splits (disjoint by construction), self-distilled responses, then speech."""
        text_dir = self.dir / "data" / "text"
        qa = read_jsonl(DATA_DIR / "general_knowledge_qa.jsonl")
        preset = self.preset
        importance_set = qa[: preset.importance_records]
        held_out = qa[preset.importance_records :]
        ppl_set = held_out[: preset.ppl_records]
        test_set = (read_jsonl(DATA_DIR / "demo_qa.jsonl") + held_out[preset.ppl_records :])[: preset.test_records]
        for name, rows in (("importance", importance_set), ("ppl", ppl_set), ("test", test_set)):
            if not _done(self.spoken(name)):
                write_jsonl(text_dir / f"{name}.jsonl", [{"question": r["question"], "answers": r["answers"]} for r in rows])
                run_command(["synthesize", "--data", str(text_dir / f"{name}.jsonl"), "--out", str(self.spoken(name).parent)])
        if not _done(self.spoken("train")):
            # Every training prompt is spoken once; the alignment stage reads them all (question only).
            prompts = training_prompts(max(preset.align_records, preset.train_records))
            write_jsonl(text_dir / "align.jsonl", [{"question": prompt["question"], "answers": []} for prompt in prompts])
            run_command(["synthesize", "--data", str(text_dir / "align.jsonl"), "--out", str(self.spoken("train").parent)])
        if not _done(self.qa_train_data):
            train_text = text_dir / "train.jsonl"
            if not _done(train_text):
                self._self_distil(training_prompts(preset.train_records), train_text)
            audio_of = {row["question"]: row["audio"] for row in read_jsonl(self.spoken("train"))}
            write_jsonl(self.qa_train_data, [{**row, "audio": audio_of[row["question"]]} for row in read_jsonl(train_text)])

    def _self_distil(self, rows: list[dict], out: Path) -> None:
        """Responses of the base LLM to the typed questions: the speech model learns to answer as it would."""
        from .batching import continuous_greedy_answers
        from .generate import load_model

        model, processor = load_model(self.base_model)
        questions = [row["question"] for row in rows]
        responses = continuous_greedy_answers(model, processor, questions, None, self.preset.eval_batch_size * 2,
                                              self.preset.response_tokens, progress=self.progress,
                                              description="self-distilled responses")
        write_jsonl(out, [{"question": q, "response": r} for q, r in zip(questions, responses) if r])

    def base_importance(self) -> dict[str, dict]:
        """Importance of the pre-trained model (text and speech input) and its Table 1."""
        table1 = {}
        for input_kind in ("text", "speech"):
            artifact = self.importance(f"base-{input_kind}")
            if not _done(artifact):
                run_command(["importance", "--model", str(self.base_model), "--data", str(self.spoken("importance")),
                             "--input", input_kind, "--out", str(artifact),
                             "--batch-size", str(self.preset.importance_batch_size), "--no-progress"])
            result_path = self.dir / "importance" / f"table1-{input_kind}.json"
            if not _done(result_path):
                run_command(["deactivate", "--model", str(self.base_model), "--importance", str(artifact),
                             "--data", str(self.spoken("ppl")), "--input", input_kind, "--fraction", "0.03",
                             "--batch-size", str(self.preset.importance_batch_size), "--out", str(result_path),
                             "--no-progress"])
            table1[input_kind] = json.loads(result_path.read_text())
        return table1

    def train_config(self, method: str) -> Path:
        preset = self.preset
        aligning = method == ALIGN
        config = {
            "model_name_or_path": str(self.base_model if aligning else self.start_model),
            "train_data": str(self.spoken("train") if aligning else self.qa_train_data),
            "method": method,
            **({"alignment_loss": "ctc"} if aligning else {}),
            "input": "speech",
            "max_length": 256,
            "transcript_ratio": preset.transcript_ratio,
            "adaptor_lr": preset.adaptor_learning_rate,
            "output_dir": str(self.dir / "train" / method),
            "learning_rate": (preset.adaptor_learning_rate if aligning else
                              preset.lora_learning_rate if method == "lora" else preset.learning_rate),
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.03,
            "max_steps": preset.align_steps if aligning else preset.max_steps,
            "per_device_train_batch_size": preset.align_batch_size if aligning else preset.batch_size,
            "gradient_accumulation_steps": 1,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": preset.use_cpu,
            "bf16": preset.dtype == "bfloat16" or preset.train_bf16,
            "seed": 0,
            "data_seed": 0,
            "dataloader_num_workers": 0,
            "disable_tqdm": not self.progress,
        }
        if method == "layer_lr":
            config["importance"] = str(self.importance("base-text").with_suffix(".json"))
        path = self.dir / "configs" / f"{method}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def train_methods(self) -> dict[str, dict]:
        from trainers.run import main as train

        summaries = {}
        for method in self.trained_names:
            summary_path = self.dir / "train" / method / "summary.json"
            if not _done(summary_path):
                summary = train([str(self.train_config(method))])
                summary["loss_curve"] = self._loss_curve(Path(summary["output_dir"]))
                atomic_write_json(summary_path, summary)
            summaries[method] = json.loads(summary_path.read_text())
            artifact = self.importance(f"{method}-text")
            if method != ALIGN and not _done(artifact):
                run_command(["importance", "--model", str(self.trained_model(method)), "--data",
                             str(self.spoken("importance")), "--input", "text", "--out", str(artifact),
                             "--batch-size", str(self.preset.importance_batch_size), "--no-progress"])
        return summaries

    @staticmethod
    def _loss_curve(output_dir: Path) -> list[float]:
        state = output_dir / "trainer_state.json"
        if not state.exists():
            return []
        return [entry["loss"] for entry in json.loads(state.read_text())["log_history"] if "loss" in entry]

    def evaluate(self) -> dict[str, Any]:
        from .generate import load_model
        from .perplexity import response_perplexity
        from .records import load_records

        models = {"no_ft": self.base_model, **{name: self.trained_model(name) for name in self.trained_names}}
        table2: dict[str, dict[str, float]] = {}
        for name, model_dir in models.items():
            table2[name] = {}
            for task in ("t2t", "s2t"):
                if name == ALIGN and task == "t2t":  # the alignment leaves the LLM frozen: No-FT's text answers
                    table2[name][task] = table2["no_ft"][task]
                    continue
                out = self.dir / "eval" / name / task
                if not _done(out / "metrics.json"):
                    run_command(["eval", "--model", str(model_dir), "--data", str(self.spoken("test")), "--task", task,
                                 "--out", str(out), "--batch-size", str(self.preset.eval_batch_size),
                                 "--max-new-tokens", str(self.preset.max_new_tokens)])
                table2[name][task] = json.loads((out / "metrics.json").read_text())["accuracy"]
        cascade_out = self.dir / "eval" / "cascade"
        if not _done(cascade_out / "metrics.json"):
            run_command(["eval", "--model", str(self.base_model), "--data", str(self.spoken("test")), "--task", "cascade",
                         "--out", str(cascade_out), "--batch-size", str(self.preset.eval_batch_size),
                         "--max-new-tokens", str(self.preset.max_new_tokens)])
        cascade = json.loads((cascade_out / "metrics.json").read_text())["accuracy"]

        ppl_path = self.dir / "eval" / "perplexity.json"
        if not _done(ppl_path):
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
            atomic_write_json(ppl_path, perplexity)
        return {"table2": table2, "cascade": cascade, "perplexity": json.loads(ppl_path.read_text())}

    def compare(self) -> dict[str, Any]:
        """Layer-profile shift of each trained model vs the pre-trained one (+ figures)."""
        compare_dir = self.dir / "figures"
        artifacts = [self.importance("base-text"), self.importance("base-speech")] + [
            self.importance(f"{method}-text") for method in METHODS
        ]
        labels = ["base (text)", "base (speech)"] + [f"{method} (text)" for method in METHODS]
        if not _done(compare_dir / "compare.json"):
            run_command(["compare", *map(str, artifacts), "--labels", *labels, "--out", str(compare_dir),
                         "--checkpoint-a", str(self.base_model), "--checkpoint-b", str(self.trained_model("full"))])
        return json.loads((compare_dir / "compare.json").read_text())

    # --- results ---
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
            "hypotheses": hypotheses(table1, shift, evaluation["table2"]),
            "stage_seconds": self.timings,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        atomic_write_json(self.dir / "results.json", results)
        (self.dir / "report.md").write_text(render_report(results, self.dir))
        return results


def hypotheses(table1: dict, shift: dict, table2: dict) -> dict[str, dict[str, Any]]:
    """The paper's three claims, each true/false as measured here."""
    ppl = table1["text"]["ppl"]
    a = ppl["top"] >= 3 * ppl["base"] and ppl["bottom"] <= 1.05 * ppl["base"] and ppl["base"] < ppl["random"] < ppl["top"]
    b = all(shift["full"]["js_divergence"] > shift[m]["js_divergence"] for m in ("layer_lr", "lora"))
    c = all(table2[m]["t2t"] > table2["full"]["t2t"] for m in ("layer_lr", "lora"))
    return {
        "a": {"held": bool(a), "claim": "zeroing the top 3 % raises text PPL ≥ 3×, the bottom 3 % ≤ 1.05×, random in between"},
        "b": {"held": bool(b), "claim": "Full-FT shifts the layer-importance profile more (JS) than Layer-LR and LoRA"},
        "c": {"held": bool(c), "claim": "Layer-LR and LoRA keep more T2T accuracy than Full-FT"},
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_report(results: dict[str, Any], out_dir: Path) -> str:
    """report.md: the paper's tables in its shape, the figures, and which claims held."""
    preset = results["preset"]
    lines = [f"# The paper in miniature — preset `{preset['name']}`", ""]
    lines += [
        "Model: SpeechLlama offline-mini (SmolLM2-135M-Instruct + Whisper tiny.en encoder, fresh k=5 adaptor)"
        if preset["llm"] is None else f"Model: {preset['llm']} + {preset['encoder']}",
        f"Training data: {preset['train_records']} spoken prompts from `data/train_questions.jsonl`; the **responses were "
        "generated by the base LLM itself** from the typed questions (self-distillation), spoken with Piper TTS.",
        f"Importance D: {preset['importance_records']} QA records; perplexity set: {preset['ppl_records']} other records; "
        f"QA test set: {preset['test_records']} records (no test question is in the training prompts).",
        (f"Alignment (shared): {preset['align_steps']} steps (batch {preset['align_batch_size']}) training the adaptor "
         f"alone with CTC against the LLM's embedding matrix on {max(preset['align_records'], preset['train_records'])} "
         "spoken training prompts (transcripts only, LLM frozen); every method starts from it. "
         if preset.get("align_steps") else "")
        + f"Training: {preset['max_steps']} steps, batch {preset['batch_size']}, LLM lr {preset['learning_rate']} "
        f"(LoRA {preset['lora_learning_rate']}), adaptor lr {preset['adaptor_learning_rate']}, cosine, seed 0, same data for all methods; "
        f"{preset.get('transcript_ratio', 0):.0%} of the speech rows repeat the question (transcript task)"
        + (", bf16 autocast." if preset.get("train_bf16") or preset["dtype"] == "bfloat16" else "."),
        "",
        "## Table 1 — perplexity with 3 % of the LLM decoder parameters zeroed",
        "",
        "| input | base | top 3 % | bottom 3 % | random 3 % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, row in results["table1"].items():
        ppl = row["ppl"]
        lines.append(f"| {kind} | {_fmt(ppl['base'], 2)} | {_fmt(ppl['top'], 2)} | {_fmt(ppl['bottom'], 2)} | {_fmt(ppl['random'], 2)} |")
    lines += ["", "## Table 2 — spoken QA accuracy", "", "| model | T2T | S2T |", "| --- | --- | --- |"]
    names = {"no_ft": "No-FT (untrained adaptor)", ALIGN: "CTC-aligned adaptor only (LLM frozen; T2T = No-FT's)", "full": "Full-FT",
             "layer_lr": "Layer-LR", "lora": "LoRA"}
    for name, row in results["table2"].items():
        lines.append(f"| {names.get(name, name)} | {_fmt(row['t2t'])} | {_fmt(row['s2t'])} |")
    lines += [f"| cascade (Whisper tiny.en ASR → base LLM) | – | {_fmt(results['cascade'])} |", ""]
    lines += ["## Perplexity of the responses (held-out set)", "", "| model | text input | speech input |", "| --- | --- | --- |"]
    for name, row in results["perplexity"].items():
        lines.append(f"| {names.get(name, name)} | {_fmt(row['text'], 2)} | {_fmt(row['speech'], 2)} |")
    lines += ["", "## Shift of the text-input layer-importance profile vs the pre-trained model", "",
              "| method | JS divergence | Spearman ρ |", "| --- | --- | --- |"]
    for method, row in results["shift"].items():
        lines.append(f"| {names[method]} | {_fmt(row['js_divergence'], 4)} | {_fmt(row['spearman'])} |")
    lines += ["", "## Training loss (S2T, first → last logged step)", "", "| method | first | last | steps |", "| --- | --- | --- | --- |"]
    for method, row in results["training"].items():
        lines.append(f"| {names[method]} | {_fmt(row['first_loss'])} | {_fmt(row['last_loss'])} | {row['steps']} |")
    lines += ["", "## Which claims held (as measured, not tuned)", ""]
    for key, claim in results["hypotheses"].items():
        lines.append(f"- **({key})** {claim['claim']}: **{'held' if claim['held'] else 'did not hold'}**")
    figures = sorted((out_dir / "figures").glob("*.png"))
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{figure.stem}](figures/{figure.name})" for figure in figures]
    lines += ["", f"Wall time: {results['wall_s']} s (stages: {results['stage_seconds']})", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("cpu-mini", "gpu-1b"), default="cpu-mini")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fast", action="store_true", help="a ≤ 10 min smoke run of every stage (tiny sizes)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> dict[str, Any]:
    name = "cpu-mini-fast" if args.fast and args.preset == "cpu-mini" else args.preset
    results = Reproduction(PRESETS[name], args.out, progress=not args.no_progress).run()
    print(json.dumps({"hypotheses": {k: v["held"] for k, v in results["hypotheses"].items()}, "wall_s": results["wall_s"]}))
    print(f"report: {Path(args.out) / 'report.md'}")
    return results
