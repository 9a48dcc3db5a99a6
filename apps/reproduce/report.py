"""The reproduction's results: which of the paper's claims held, and `report.md` in the paper's shape.

Every verdict is computed from an interval: **held** when each interval the claim rests on lies on
its side of 0, **not held** when one lies on the other side, **not resolved** otherwise (or when there
is no interval, e.g. a layer shift measured at one seed). Claim (a) is a shape check of Table 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speech_llama.synthesize import TRAINING_MIX
from speech_llama.tts import training_voices

from .experiments import ALIGN, METHODS, TrainingRun, series_label, setting_label
from .figures import model_label

HELD, NOT_HELD, NOT_RESOLVED = "held", "not held", "not resolved"

# (key, claim, the differences it rests on, the side of 0 the claim puts them on)
INTERVAL_CLAIMS = (
    ("c", "Layer-LR and LoRA keep more T2T accuracy than Full-FT (pooled paired intervals)",
     ("t2t: layer_lr − full", "t2t: lora − full"), +1),
    ("d", "Stage-1 speech fine-tuning on another writer's responses costs T2T accuracy (Full-FT below No-FT)",
     ("t2t: full − no_ft",), -1),
    ("e", "every Stage-1 method hears better: S2T above the start model (Full-FT, Layer-LR, LoRA)",
     ("s2t: full − start", "s2t: layer_lr − start", "s2t: lora − start"), +1),
    ("f", "control: the other writer's responses cost more T2T than the base LLM's own (both spoken)",
     ("t2t: full − full-self-speech",), -1),
    ("g", "control: the spoken question costs more T2T than the typed one (both the other writer's responses)",
     ("t2t: full − full-other-text",), -1),
)


def interval_status(intervals: list[dict | None], side: int) -> str:
    """held / not held / not resolved for intervals that a claim puts on `side` (+1 above 0, -1 below)."""
    if not intervals or any(interval is None for interval in intervals):
        return NOT_RESOLVED
    if all((interval["low"] > 0) if side > 0 else (interval["high"] < 0) for interval in intervals):
        return HELD
    if any((interval["high"] < 0) if side > 0 else (interval["low"] > 0) for interval in intervals):
        return NOT_HELD
    return NOT_RESOLVED


def hypotheses(table1: dict, shift: dict, differences: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The paper's claims (a)–(e) and the control's (f), (g) as measured here; a claim whose
    differences this run did not measure (e.g. no control runs) is left out."""
    ppl = table1["text"]["ppl"]
    a = ppl["top"] >= 3 * ppl["base"] and ppl["bottom"] <= 1.05 * ppl["base"] and ppl["base"] < ppl["random"] < ppl["top"]
    js = [shift["js_differences"].get(f"full − {method}") for method in METHODS[1:]]
    claims = {
        "a": {"status": HELD if a else NOT_HELD,
              "claim": "zeroing the top 3 % raises text PPL ≥ 3×, the bottom 3 % ≤ 1.05×, random in between"},
        "b": {"status": interval_status(js, +1),
              "claim": "Full-FT shifts the layer-importance profile more (JS) than Layer-LR and LoRA (t interval over seeds)",
              "intervals": {f"full − {m}": None if i is None else [i["low"], i["high"]] for m, i in zip(METHODS[1:], js)}},
    }
    for key, claim, labels, side in INTERVAL_CLAIMS:
        if all(label in differences for label in labels):
            rows = [differences[label] for label in labels]
            claims[key] = {"status": interval_status(rows, side), "claim": claim,
                           "intervals": {label: [row["low"], row["high"]] for label, row in zip(labels, rows)}}
    for claim in claims.values():
        claim["held"] = claim["status"] == HELD
    return claims


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval_text(interval: dict | None) -> str:
    return "" if not interval else f" [{interval['low']:.2f}, {interval['high']:.2f}]"


def _difference_text(row: dict | None) -> str:
    return "–" if row is None else f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def _starts_aligned(preset: dict[str, Any]) -> bool:
    """Whether the methods start from the aligned preset (then No-FT is the aligned-only model)."""
    return preset.get("model_preset") == "offline-mini-aligned"


def _model_line(preset: dict[str, Any]) -> str:
    if preset["llm"] is not None:
        return f"Model: {preset['llm']} + {preset['encoder']}"
    if _starts_aligned(preset):
        return ("Model: SpeechLlama offline-mini-aligned (SmolLM2-135M-Instruct + Whisper base encoder, k=5 adaptor "
                "CTC-aligned on the cached speech corpus, LLM frozen): No-FT is the aligned-only model.")
    return f"Model: SpeechLlama {preset.get('model_preset', 'offline-mini')} (fresh k=5 adaptor)"


def _setup_lines(results: dict[str, Any]) -> list[str]:
    preset, writer = results["preset"], results.get("other_writer", {})
    voices = (f"the corpus's {len(training_voices())} training voices in turn (record i by the i-th)"
              if preset.get("train_voice", TRAINING_MIX) == TRAINING_MIX else f"the voice `{preset['train_voice']}`")
    dropped = ", ".join(f"{count} {reason}" for reason, count in writer.get("dropped", {}).items())
    curve = ", ".join(f"{f:g}" for f in preset.get("curve_fractions", ()))
    return [
        _model_line(preset),
        f"**The paper's condition — another writer's responses:** {writer.get('train', preset['train_records'])} "
        f"question/response pairs of `chatterbot-corpus` ({writer.get('licence', 'BSD-3-Clause')}; {writer.get('usable')} "
        f"usable English pairs after dropping {dropped}), spoken by {voices}. **Self** targets: the base LLM's own "
        "greedy answers to the same typed questions (self-distillation). Distill learns the frozen LLM's own distribution "
        "on the same spoken prompts. Dev split: the next "
        f"{writer.get('dev', preset.get('dev_records'))} pairs, never trained on, read by the training voices.",
        f"Importance D: {results.get('importance_records', 'the first')} training-question prompts with the base LLM's "
        f"responses; Table 1's paper-protocol perplexity set: {preset['ppl_records']} held-out prompts of the same "
        f"distribution; QA test set: {preset['test_records']} held-out questions (no other-writer pair repeats or answers "
        "one), every held-out set read by the held-out voice (festival-slt, in no training clip).",
        (f"Alignment (shared): {preset['align_steps']} CTC steps (batch {preset['align_batch_size']}, LLM frozen) on the "
         "spoken training prompts; every method starts from it. " if preset.get("align_steps") else "")
        + f"Training: {preset['max_steps']} steps, batch {preset['batch_size']}, LLM lr {preset['learning_rate']} "
        f"(LoRA {preset['lora_learning_rate']}, rank {preset['lora_rank']}), adaptor lr {preset['adaptor_learning_rate']}, "
        f"cosine; seeds 0–{preset['seeds'] - 1} of every method in the paper's condition, "
        f"{preset.get('control_seeds', 1)} of each Full-FT control; same prompts and steps for every run; "
        f"{preset.get('transcript_ratio', 0):.0%} of the speech rows repeat the question (transcript task; typed rows "
        "answer every time)" + (", bf16 autocast." if preset.get("train_bf16") or preset["dtype"] == "bfloat16" else ".")
        + (f" Forgetting curves: checkpoints at {curve} of the steps, seeds 0–{preset.get('curve_seeds', 1) - 1}, "
           f"first {preset.get('curve_records') or preset['test_records']} test questions." if curve else "")
        + f" QA evals: greedy, batch {preset['eval_batch_size']}, weights in {preset.get('inference_dtype', 'float32')}.",
        "",
    ]


def _table1_lines(results: dict[str, Any]) -> list[str]:
    lines = ["## Table 1 — perplexity with 3 % of the LLM decoder parameters zeroed", "",
             "| perplexity set | input | base | top 3 % | bottom 3 % | random 3 % |", "| --- | --- | --- | --- | --- | --- |"]
    for label, key in (("paper protocol: held-out responses", "table1"), ("short gold answers (QA test set)", "table1_short_answers")):
        for kind, row in results.get(key, {}).items():
            ppl = row["ppl"]
            lines.append(f"| {label} | {kind} | {_fmt(ppl['base'], 2)} | {_fmt(ppl['top'], 2)} | {_fmt(ppl['bottom'], 2)} "
                         f"| {_fmt(ppl['random'], 2)} |")
    return lines + [""]


def _table2_lines(results: dict[str, Any]) -> list[str]:
    intervals, seeds = results.get("intervals", {}), results.get("seeds", {})
    lines = ["## Table 2 — spoken QA accuracy (final models; a series' value is the mean over its seeds and questions, "
             "95 % two-way bootstrap interval)", "", "| model | seeds | T2T | S2T | T2T per seed | S2T per seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in results["table2"].items():
        cells = [f"{_fmt(row[task])}{_interval_text(intervals.get(name, {}).get(task))}" for task in ("t2t", "s2t")]
        per_seed = [" / ".join(_fmt(v) for v in seeds.get(name, {}).get(task, [])) or "–" for task in ("t2t", "s2t")]
        count = len(seeds.get(name, {}).get("t2t", [])) or "–"
        lines.append(f"| {_table2_label(name, results['preset'])} | {count} | {cells[0]} | {cells[1]} | {per_seed[0]} | {per_seed[1]} |")
    lines += [f"| cascade (Whisper tiny.en ASR → base LLM) | – | – | {_fmt(results['cascade'])}"
              f"{_interval_text(intervals.get('cascade', {}).get('s2t'))} | | |", ""]
    return lines


def _table2_label(name: str, preset: dict[str, Any]) -> str:
    if name == "no_ft":
        return "No-FT (the aligned preset: adaptor aligned, LLM frozen)" if _starts_aligned(preset) else "No-FT (untrained adaptor)"
    if name == "start":
        return "start: CTC-aligned adaptor (LLM frozen; T2T = No-FT's)"
    if name == "distill":
        return "Distill (adaptor only, LLM frozen; T2T = No-FT's)"
    return model_label(name)


def _control_lines(results: dict[str, Any]) -> list[str]:
    """The 2 × 2 of Full-FT: targets × input, T2T and S2T change against No-FT / the start model."""
    diffs = results.get("differences", {})
    cells = {("other", "speech"): "full", ("self", "speech"): "full-self-speech", ("other", "text"): "full-other-text",
             ("self", "text"): "full-self-text"}
    if not all(f"t2t: {name} − no_ft" in diffs for name in cells.values()):
        return []
    lines = ["## The control the paper lacks — Full-FT, targets × input (same prompts, steps and seeds)", "",
             "T2T change against No-FT / S2T change against the start model (pooled paired 95 % intervals):", "",
             "| targets \\ input | spoken question | typed question |", "| --- | --- | --- |"]
    for targets, label in (("other", "another writer's responses"), ("self", "the base LLM's own responses")):
        row = [f"T2T {_difference_text(diffs.get(f't2t: {cells[(targets, kind)]} − no_ft'))}<br>"
               f"S2T {_difference_text(diffs.get(f's2t: {cells[(targets, kind)]} − start'))}" for kind in ("speech", "text")]
        lines.append(f"| {label} | {row[0]} | {row[1]} |")
    lines += ["", "Typed rows answer every time, spoken rows repeat the question half the time (transcript task): the "
              "typed runs learn from about twice as many responses in the same steps.", ""]
    return lines


def _difference_lines(results: dict[str, Any]) -> list[str]:
    if not results.get("differences"):
        return []
    lines = ["Paired differences, pooled over the seeds both sides share and the test questions (an interval that "
             "excludes 0 resolves the difference):", "", "| difference | seeds | value | 95 % interval | resolved |",
             "| --- | --- | --- | --- | --- |"]
    for label, row in results["differences"].items():
        lines.append(f"| {label} | {row.get('seeds', 1)} | {row['difference']:+.3f} | [{row['low']:+.3f}, {row['high']:+.3f}] | "
                     f"{'yes' if row['excludes_zero'] else 'no'} |")
    return lines + [""]


def _curve_lines(results: dict[str, Any]) -> list[str]:
    curves = results.get("curves") or {}
    if not curves:
        return []
    lines = ["## Forgetting curves (T2T / S2T along training; dev PPL: the dev split's other-writer responses, speech input)",
             "", "| method | step | T2T | S2T | dev PPL |", "| --- | --- | --- | --- | --- |"]
    for name, points in curves.items():
        for point in points:
            lines.append(f"| {series_label(name)} | {point['step']} ({point['fraction']:g}) | {_fmt(point['t2t'])} | "
                         f"{_fmt(point['s2t'])} | {_fmt(point.get('dev_ppl'), 2)} |")
    choice = results.get("dev_choice") or {}
    if choice:
        lines += ["", "Step with the lowest dev PPL (where the dev split would stop training): " + "; ".join(
            f"{series_label(name)} {row['step']}" for name, row in choice.items()) + "."]
    return lines + [""]


def _shift_lines(results: dict[str, Any]) -> list[str]:
    shift = results["shift"]
    lines = ["## Shift of the text-input layer-importance profile vs the pre-trained model (mean over seeds)", "",
             "| method | JS divergence | JS per seed | Spearman ρ |", "| --- | --- | --- | --- |"]
    for method, row in shift["methods"].items():
        lines.append(f"| {series_label(method)} | {_fmt(row['js_divergence'], 5)} | "
                     f"{' / '.join(_fmt(v, 5) for v in row['js_per_seed'])} | {_fmt(row['spearman'])} |")
    lines.append("")
    for label, interval in shift["js_differences"].items():
        lines.append(f"- JS {label}: " + ("one seed, no interval" if interval is None else
                                          f"{interval['mean']:+.5f} [{interval['low']:+.5f}, {interval['high']:+.5f}] "
                                          f"(Student t over {interval['seeds']} seeds)"))
    return lines + [""]


def _table3_lines(table3: dict[str, Any]) -> list[str]:
    main = table3["main_rank"]
    lines = ["## Table 3 — LoRA rank (same data, steps and seed)", "",
             f"| rank | T2T | S2T | T2T − rank {main} | S2T − rank {main} |", "| --- | --- | --- | --- | --- |"]
    for rank, row in table3["ranks"].items():
        cells = [f"{_fmt(row[task])}{_interval_text(row.get(f'{task}_ci95'))}" for task in ("t2t", "s2t")]
        cells += [_difference_text(row.get(f"{task}_minus_rank_{main}")) for task in ("t2t", "s2t")]
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    return lines + [""]


def _learning_rate_lines(table: dict[str, Any]) -> list[str]:
    steps = list(next(iter(next(iter(table.values()))["dev_ppl"].values())))
    lines = ["## Learning rates and steps on the dev split (`--ablation learning-rate`)", "",
             "Dev PPL (the dev split's other-writer responses, speech input) per learning rate and step, seed 0:", "",
             "| method | lr | " + " | ".join(f"step {step}" for step in steps) + " |", "| --- | --- |" + " --- |" * len(steps)]
    for method, row in table.items():
        for rate, curve in row["dev_ppl"].items():
            lines.append(f"| {series_label(method)} | {rate} | " + " | ".join(_fmt(curve.get(step), 2) for step in steps) + " |")
    lines += [""] + [f"- {series_label(method)}: the dev split chooses lr {row['chosen']['rate']:g} at step "
                     f"{row['chosen']['step']} (the preset uses {row['preset_rate']:g})." for method, row in table.items()]
    return lines + [""]


def _importance_per_parameter_lines(results: dict[str, Any]) -> list[str]:
    """The dev sweep of the constrained methods, their chosen settings against Full-FT and the uniform
    anchor against the importance-weighted one, with verdicts from the pooled paired intervals."""
    table, diffs = results["importance_per_parameter"], results.get("differences", {})
    seeds = results["preset"]["seeds"]
    lines = ["## Importance per parameter (`--ablation importance-per-parameter`)", "",
             "Full-FT with the pre-trained model's text importance per parameter: its top fraction p frozen "
             "(region freeze), or the penalty λ Σ Ĩ (θ − θ⁰)² (importance anchor, Ĩ = importance / its mean); the "
             "uniform anchor (Ĩ = 1, L2-SP) tells the weighting from the anchoring. Dev sweep at seed 0 — task PPL: "
             "the dev split's other-writer responses from the spoken prompts (what training teaches); text PPL: the "
             "base LLM's own responses to the dev prompts, typed (what it should keep); the setting with the lowest "
             "product is chosen (no test question takes part; the test accuracies of seed 0 are shown beside it, "
             "measured after the choice):", "",
             "| method | setting | task PPL | text PPL | product | chosen | T2T (seed 0) | S2T (seed 0) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in table["reference"].items():
        lines.append(f"| {'No-FT / start' if name == 'start' else series_label(name)} | – | "
                     f"{_fmt(row['task_ppl'], 2)} | {_fmt(row['text_ppl'], 2)} | {_fmt(row['score'], 1)} | | "
                     f"{_fmt(row.get('t2t'))} | {_fmt(row.get('s2t'))} |")
    for method, rows in table["dev"].items():
        for setting, row in rows.items():
            chosen = "**yes**" if float(setting) == table["chosen"][method] else ""
            lines.append(f"| {series_label(method)} | {setting_label(method, float(setting))} | {_fmt(row['task_ppl'], 2)} "
                         f"| {_fmt(row['text_ppl'], 2)} | {_fmt(row['score'], 1)} | {chosen} | {_fmt(row.get('t2t'))} | "
                         f"{_fmt(row.get('s2t'))} |")
    names = [TrainingRun(method, setting=setting).series for method, setting in table["chosen"].items()]
    lines += ["", f"The chosen settings at seeds 0–{seeds - 1} (pooled paired 95 % intervals; T2T / S2T in Table 2):", "",
              "| method | T2T − Full-FT | S2T − Full-FT | T2T − No-FT | S2T − start |", "| --- | --- | --- | --- | --- |"]
    for name in names:
        cells = [diffs.get(key) for key in (f"t2t: {name} − full", f"s2t: {name} − full", f"t2t: {name} − no_ft",
                                             f"s2t: {name} − start")]
        lines.append(f"| {series_label(name)} | " + " | ".join(_difference_text(cell) for cell in cells) + " |")
    lines.append("")
    verdicts = [(f"{series_label(name)} keeps more T2T than Full-FT", [diffs.get(f"t2t: {name} − full")]) for name in names]
    weighted, uniform = (TrainingRun(method, setting=table["chosen"][method]).series
                         for method in ("importance_anchor", "uniform_anchor"))
    verdicts.append(("the importance weighting keeps more T2T than the uniform anchor",
                     [diffs.get(f"t2t: {weighted} − {uniform}")]))
    lines += [f"- {claim}: **{interval_status(intervals, +1)}**"
              + "".join(f" ({_difference_text(interval)})" for interval in intervals if interval) for claim, intervals in verdicts]
    return lines + [""]


def render_report(results: dict[str, Any], out_dir: Path) -> str:
    """report.md: the paper's tables in its shape, the control, the curves, the figures, the verdicts."""
    lines = [f"# The paper in miniature — preset `{results['preset']['name']}`", ""]
    lines += _setup_lines(results)
    lines += _table1_lines(results)
    lines += _table2_lines(results)
    lines += _control_lines(results)
    lines += _difference_lines(results)
    lines += _curve_lines(results)
    if results.get("table3"):
        lines += _table3_lines(results["table3"])
    if results.get("learning_rates"):
        lines += _learning_rate_lines(results["learning_rates"])
    if results.get("importance_per_parameter"):
        lines += _importance_per_parameter_lines(results)
    lines += ["## Perplexity of the base LLM's held-out responses (seed 0)", "", "| model | text input | speech input |",
              "| --- | --- | --- |"]
    for name, row in results["perplexity"].items():
        lines.append(f"| {_table2_label(name, results['preset'])} | {_fmt(row.get('text'), 2)} | {_fmt(row.get('speech'), 2)} |")
    lines += [""] + _shift_lines(results)
    lines += ["## Training loss (first → last logged step)", "", "| run | first | last | steps |", "| --- | --- | --- | --- |"]
    for name, row in results["training"].items():
        lines.append(f"| {'alignment' if name == ALIGN else name} | {_fmt(row['first_loss'])} | {_fmt(row['last_loss'])} | {row['steps']} |")
    lines += ["", "## Which claims held (computed from the intervals above, not tuned)", ""]
    for key, claim in results["hypotheses"].items():
        lines.append(f"- **({key})** {claim['claim']}: **{claim['status']}**")
    figures = sorted((out_dir / "figures").glob("*.png"))
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{figure.stem}](figures/{figure.name})" for figure in figures]
    lines += ["", f"Time: {results.get('wall_s')} s of stage work, summed over the runs that did it (this run"
              f" {results.get('this_run_s', results.get('wall_s'))} s; stages: {results.get('stage_seconds')})", ""]
    return "\n".join(lines)
