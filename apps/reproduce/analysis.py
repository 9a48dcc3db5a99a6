"""From eval folders to the numbers the report states: accuracies pooled over seeds, paired
differences, forgetting curves, the trade-off frontier and the layer-shift intervals.

Every interval comes from `speech_llama.statistics`: pooled over the seeds of a series and the test
questions (two-way bootstrap), or, for the layer-profile divergence (one number per seed), a Student-t
interval over the seeds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from apps.eval_diff import correct_column
from speech_llama.statistics import bootstrap_interval, pooled_interval, pooled_paired_difference, seed_interval

from .experiments import DISTILL, METHODS, TrainingRun, constrained_series, series_label
from .layout import FINAL, RunLayout

TASKS = ("t2t", "s2t")


def outcomes(eval_dir: Path, limit: int | None = None) -> list[bool]:
    """Per-question correctness of one eval, in the test set's order (the first `limit` questions)."""
    return correct_column(eval_dir)[1][:limit]


def by_series(runs: list[TrainingRun]) -> dict[str, list[TrainingRun]]:
    """series → its runs in seed order."""
    grouped: dict[str, list[TrainingRun]] = defaultdict(list)
    for run in sorted(runs, key=lambda run: run.seed):
        grouped[run.series].append(run)
    return dict(grouped)


class Outcomes:
    """Per-question outcomes of the models of one reproduction, by series or by fixed model."""

    def __init__(self, layout: RunLayout, runs: list[TrainingRun]):
        self.layout = layout
        self.series = by_series(runs)

    def fixed_dir(self, name: str, task: str) -> Path:
        """A model that has no seeds: `no_ft`, the start model (`start`), `cascade`."""
        if name == "start":
            return self.layout.start_eval_dir(task)
        if name == "cascade":
            return self.layout.eval_dir("cascade", "s2t")
        return self.layout.eval_dir(name, task)

    def grid(self, name: str, task: str, seeds: int | None = None, step: int | str = FINAL,
             limit: int | None = None) -> list[list[bool]]:
        """Seeds × questions: a series' first `seeds` runs (all by default), or a fixed model once per seed."""
        if name in self.series:
            runs = self.series[name][:seeds]
            return [outcomes(self.layout.run_eval_dir(run, task, step), limit) for run in runs]
        return [outcomes(self.fixed_dir(name, task), limit)] * (seeds or 1)

    def seed_count(self, *names: str) -> int:
        """Seeds two series share (pairing needs seed i on both sides); a fixed model pairs with any."""
        counts = [len(self.series[name]) for name in names if name in self.series]
        return min(counts) if counts else 1

    def difference(self, task: str, a: str, b: str, limit: int | None = None) -> dict:
        seeds = self.seed_count(a, b)
        return pooled_paired_difference(self.grid(a, task, seeds, limit=limit), self.grid(b, task, seeds, limit=limit))


def accuracy_tables(out: Outcomes) -> dict[str, Any]:
    """Table 2: every series' T2T / S2T pooled over its seeds (mean, interval, per-seed values), No-FT,
    the start model when it is not No-FT, and the cascade."""
    table, intervals, seeds = {}, {}, {}
    fixed = ["no_ft"] + (["start"] if out.layout.start_name != "no_ft" else [])
    for name in fixed:
        intervals[name] = {task: bootstrap_interval(out.grid(name, task)[0]) for task in TASKS}
    for name, runs in out.series.items():
        intervals[name] = {task: pooled_interval(out.grid(name, task)) for task in TASKS}
        seeds[name] = {task: [round(sum(row) / len(row), 4) for row in out.grid(name, task)] for task in TASKS}
    for name, row in intervals.items():
        table[name] = {task: row[task]["mean"] for task in TASKS}
    intervals["cascade"] = {"s2t": bootstrap_interval(out.grid("cascade", "s2t")[0])}
    return {"table2": table, "intervals": intervals, "seeds": seeds, "cascade": intervals["cascade"]["s2t"]["mean"]}


def comparisons(series: list[str]) -> list[tuple[str, str, str]]:
    """(task, a, b) whose pooled paired difference a − b the verdicts and the frontier read."""
    pairs = [("t2t", "layer_lr", "full"), ("t2t", "lora", "full"), ("s2t", "layer_lr", "full"), ("s2t", "lora", "full")]
    pairs += [("s2t", name, "start") for name in series]
    pairs += [("t2t", name, "no_ft") for name in series if name != DISTILL]
    pairs += [("t2t", "full", other) for other in ("full-self-speech", "full-other-text") if other in series]
    constrained = constrained_series(series)
    pairs += [(task, name, "full") for name in constrained for task in TASKS]
    weighted = [name for name in constrained if name.startswith("importance_anchor@")]
    uniform = [name for name in constrained if name.startswith("uniform_anchor@")]
    pairs += [(task, a, b) for a in weighted for b in uniform for task in TASKS]
    return [(task, a, b) for task, a, b in pairs if a in series and (b in series or b in ("no_ft", "start"))]


def differences(out: Outcomes) -> dict[str, dict]:
    return {f"{task}: {a} − {b}": out.difference(task, a, b) for task, a, b in comparisons(list(out.series))}


def curves(out: Outcomes, curve_runs: list[TrainingRun], steps: tuple[int, ...], max_steps: int, limit: int | None,
           dev_ppl: dict[str, dict[str, float]]) -> dict[str, list[dict]]:
    """Each curve series: T2T and S2T at step 0 (the start model), each intermediate step and the end,
    on the first `limit` test questions, averaged over its curve seeds; with the dev perplexity."""
    result = {}
    for name, runs in by_series(curve_runs).items():
        points = [{"step": 0, "fraction": 0.0, "t2t": _mean(out.grid("no_ft", "t2t", limit=limit)),
                   "s2t": _mean(out.grid("start", "s2t", limit=limit)), "seeds": len(runs)}]
        for step in (*steps, FINAL):
            grid = {task: [outcomes(out.layout.run_eval_dir(run, task, step), limit) for run in runs] for task in TASKS}
            number = max_steps if step == FINAL else step
            points.append({"step": number, "fraction": round(number / max_steps, 4), "t2t": _mean(grid["t2t"]),
                           "s2t": _mean(grid["s2t"]), "seeds": len(runs)})
        for point in points:
            sources = ["start"] if point["step"] == 0 else [run.name for run in runs]
            ppls = [dev_ppl[source][str(point["step"])] for source in sources if str(point["step"]) in dev_ppl.get(source, {})]
            point["dev_ppl"] = round(sum(ppls) / len(ppls), 4) if ppls else None
        result[name] = points
    return result


def _mean(grid: list[list[bool]]) -> float:
    cells = [value for row in grid for value in row]
    return round(sum(cells) / len(cells), 4)


def frontier(curve_table: dict[str, list[dict]], out: Outcomes, limit: int | None) -> dict[str, Any]:
    """S2T gained (vs the start model) against T2T kept (vs No-FT): every curve point, and every
    series' final model pooled over its seeds with both paired intervals."""
    base = {"t2t": _mean(out.grid("no_ft", "t2t", limit=limit)), "s2t": _mean(out.grid("start", "s2t", limit=limit))}
    lines = {name: [{"step": p["step"], "fraction": p["fraction"], "t2t_kept": round(p["t2t"] - base["t2t"], 4),
                     "s2t_gained": round(p["s2t"] - base["s2t"], 4)} for p in points]
             for name, points in curve_table.items()}
    finals = {}
    for name, runs in out.series.items():
        kept, gained = out.difference("t2t", name, "no_ft"), out.difference("s2t", name, "start")
        finals[name] = {"t2t_kept": kept["difference"], "t2t_low": kept["low"], "t2t_high": kept["high"],
                        "s2t_gained": gained["difference"], "s2t_low": gained["low"], "s2t_high": gained["high"],
                        "seeds": len(runs), "n": kept["n"]}
    labels = {name: series_label(name) for name in (*lines, *finals)}
    return {"curves": lines, "curve_questions": limit, "finals": finals, "labels": labels}


def shift_summary(per_seed: dict[str, list[dict]]) -> dict[str, Any]:
    """Layer-profile shift of each method (mean over seeds) and, with two seeds or more, the Student-t
    interval of JS(Full-FT) − JS(method) over the seeds (paired by seed)."""
    summary = {method: {key: round(sum(row[key] for row in rows) / len(rows), 6) for key in ("js_divergence", "spearman")}
               | {"js_per_seed": [row["js_divergence"] for row in rows]}
               for method, rows in per_seed.items()}
    full = summary["full"]["js_per_seed"]
    intervals = {}
    for method in METHODS[1:]:
        values = [a - b for a, b in zip(full, summary[method]["js_per_seed"])]
        intervals[f"full − {method}"] = seed_interval(values) if len(values) > 1 else None
    return {"methods": summary, "js_differences": intervals}
