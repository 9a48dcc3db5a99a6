"""Every `bench/*.py` runs at its `--smoke` size (the same code path, tiny sizes, seconds).

`make bench` runs the full sizes and nothing else runs the benches, so a bench that stopped
importing or whose output changed shape would go unnoticed; here each one runs as a user runs it
(`python bench/X.py --smoke`, from the repository root, in a subprocess) and its output is read
back: the last line must be one JSON object, and for the benches below its figures must be sane
(the keys exist, ratios are positive finite numbers, the fp32 perplexities of the three ways
agree). A new bench is picked up by the glob: it needs a `--smoke` flag and a JSON last line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted(path.name for path in (REPO / "bench").glob("*.py"))
TIMEOUT_S = 300

# Benches whose smoke run still uses the offline pretrained weights (Piper voices): `-m "not real_weights"` skips them.
REAL_WEIGHTS = {"synthesize.py", "synthesize_engines.py"}
# Over ~20 s even at smoke size (pyproject's `slow`): four launches, two of them of two processes (~40 s on 2 cores).
SLOW = {"fsdp_memory.py", "real_shapes.py"}


def marks(name: str) -> list:
    return [mark for mark, names in ((pytest.mark.real_weights, REAL_WEIGHTS), (pytest.mark.slow, SLOW)) if name in names]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_build_offline_mini(result: dict, lines: list[str]) -> None:
    assert positive(result["first_build_s"]) and positive(result["second_build_s"]), result
    assert result["preset"] == "tiny-random" and isinstance(result["ok"], bool) and result["target_s"] == 60


def check_eval_batching(result: dict, lines: list[str]) -> None:
    for key in ("speedup", "bs1_samples_per_s", "bs8_samples_per_s", "runner_bs1_speedup", "batching_alone_speedup",
                "fixed_batch_generate_speedup"):
        assert positive(result[key]), (key, result)
    assert isinstance(result["identical"], bool) and result["identical"] == (not result["differing_rows"]), result
    assert result["n"] == 6 and result["max_new_tokens"] == 8 and result["batch_size"] == 4, result
    assert any("speedup" in line and "bs=1" in line for line in lines[:-1]), "no side-by-side line before the JSON"


def check_fsdp_memory(result: dict, lines: list[str]) -> None:
    counts = result["counts"]
    assert result["model"] == "tiny-random", result["model"]
    assert counts["params"] > counts["decoder"] > counts["unit"] > 0, counts
    importance = result["importance"]
    assert positive(importance["one_process"]), importance
    ranks = importance["fsdp_ranks"]
    assert len(ranks) == 2 and all(positive(rank["load"]) and positive(rank["estimate"]) for rank in ranks), ranks
    # every analysed element sits in exactly one rank's shard
    assert math.isclose(sum(rank["accumulator_share"] for rank in ranks), 1.0, rel_tol=1e-6), ranks
    layer_lr = result["layer_lr"]
    assert len(layer_lr["one_process"]) == 1 and len(layer_lr["fsdp"]) == 2, layer_lr
    assert all(positive(value) for value in layer_lr["one_process"] + layer_lr["fsdp"]), layer_lr
    for section in (importance, layer_lr):
        assert positive(section["model_one_process"]) and positive(section["model_fsdp_rank"]), section


def check_importance_overhead(result: dict, lines: list[str]) -> None:
    assert positive(result["time_ratio"]) and positive(result["time_ratio_of_sums"]), result
    assert finite(result["memory_ratio"]) and positive(result["analysed_parameters"]), result
    assert len(result["time_ratio_pairs"]) == result["batches"] * result["rounds"], result
    assert all(positive(value) for value in result["time_ratio_pairs"]), result
    assert result["peak_bytes_plain"] > 0 and result["peak_bytes_importance"] > 0, result


def check_inference_dtype(result: dict, lines: list[str]) -> None:
    assert result["n"] == 4, result
    for task in ("t2t", "s2t"):
        assert positive(result[f"speedup_{task}"]), result
        assert all(positive(rate) for rate in result[f"samples_per_s_{task}"]), result
        assert 0 <= result[f"answers_agree_{task}"] <= 1, result
        assert all(0 <= value <= 1 for value in result[f"accuracy_{task}"]), result
    assert isinstance(result["cpu_runs_bfloat16"], bool)


def check_method_overhead(result: dict, lines: list[str]) -> None:
    arms = ("layer_lr", "region_freeze", "importance_anchor")
    assert all(positive(result["step_time_ratio"][arm]) and positive(result["optimizer_step_ratio"][arm]) for arm in arms)
    assert all(positive(seconds) for seconds in result["step_s"].values()) and set(result["step_s"]) == {"full", *arms}
    assert result["model"] == "tiny-random" and result["steps"] == 2, result
    # one group per decoder layer × decay (plus the rest) against full fine-tuning's few
    assert result["groups"]["layer_lr"] > result["groups"]["full"] >= 1, result
    memory = result["constraint_memory"]
    assert memory["region_freeze"]["frozen_entries"] > 0 and memory["region_freeze"]["bytes_here"] > 0, memory
    assert memory["importance_anchor"]["bytes_here"] > 8 * memory["region_freeze"]["frozen_entries"], memory
    assert any(line.startswith("tiny-random: full") for line in lines[:-1]), "no side-by-side line before the JSON"


def check_perplexity(result: dict, lines: list[str]) -> None:
    assert result["n"] == 4, result
    for kind in ("text", "speech"):
        for key in (f"speedup_{kind}", f"length_speedup_{kind}", f"bf16_speedup_{kind}", f"{kind}_bf16_ppl"):
            assert positive(result[key]), (key, result)
        reference, in_order, kept = result[f"{kind}_ppl"]
        assert all(positive(ppl) for ppl in (reference, in_order, kept)), result
        # the three fp32 ways are one mean NLL summed in different orders (the bench's own tolerance)
        assert all(abs(math.log(reference) - math.log(ppl)) <= 5e-4 for ppl in (in_order, kept)), result
    assert isinstance(result["same_ppl"], bool)


def check_serve_load(result: dict, lines: list[str]) -> None:
    assert positive(result["throughput_ratio_8"]) and positive(result["throughput_ratio_32"]), result
    assert result["identical"] is True and result["differing_questions"] == [], result
    assert result["workload"] == "instructions" and result["n"] == 8, result
    for clients in ("1", "8", "32"):
        figures = result["levels"][clients]
        assert positive(figures["tokens_per_s"]) and positive(figures["first_token_p50_s"]), (clients, figures)
    assert any("8 clients vs 1" in line for line in lines[:-1]), "no side-by-side line before the JSON"


def check_synthesize(result: dict, lines: list[str]) -> None:
    assert positive(result["questions_per_s"]) and positive(result["end_to_end_questions_per_s"]), result
    assert positive(result["startup_s"]) and isinstance(result["ok"], bool), result
    assert any(line.startswith("synthesised 3 questions") for line in lines), "no summary line"


def check_synthesize_engines(result: dict, lines: list[str]) -> None:
    for voice in ("festival-slt", "training-mix"):
        for key in (f"{voice}_one_by_one_s", f"{voice}_chunked_s", f"{voice}_speedup"):
            assert positive(result[key]), (key, result)
    assert result["same_audio"] is True, "festival-slt clips differ between one-by-one and chunked synthesis"
    assert result["n"] == 4 and result["chunk"] == 2, result


def check_real_shapes(result: dict, lines: list[str]) -> None:
    assert result["ok"] is True, result
    assert result["scale"] == 16 and result["decoder_layers"] == 2 and result["decoder_layers_real"] == 16, result
    assert "2 of 16 decoder layers" in lines[0] and "every matrix at its real shape" in lines[0], lines[0]
    assert all(stage["tokens"] > 0 and stage["layers"] == 2 for stage in result["importance"].values()), result
    assert set(result["table1"]["ppl"]) == {"base", "top", "bottom", "random"}, result["table1"]
    assert result["eval"]["n"] == result["records"], result["eval"]
    for method in ("full", "layer_lr", "lora"):
        figures = result["train"][method]
        assert figures["steps"] == result["steps"] and figures["world_size"] == 2, (method, figures)
        assert len(figures["ranks"]) == 2 and all(positive(rank["measured_MB"]) for rank in figures["ranks"]), figures
    assert result["trained_auto_load"]["max_weight_change"] > 0, result["trained_auto_load"]


def check_gpu_recipe(result: dict, lines: list[str]) -> None:
    assert result["ok"] is True and result["device"] == "cpu" and result["scale"] == 16, result
    assert positive(result["importance"]["tokens_per_s"]) and len(result["importance"]["layers"]) == 2, result
    for method in ("full", "layer_lr", "lora"):
        figures = result["train"][method]
        assert positive(figures["tokens_per_s"]) and positive(figures["importance_speedup"]), (method, figures)
        assert len(figures["losses"]) == result["batches"]["count"] + 1, (method, figures)
    assert result["train"]["lora"]["trainable"] < result["train"]["full"]["trainable"], result["train"]


CHECKS = {
    "build_offline_mini.py": check_build_offline_mini,
    "eval_batching.py": check_eval_batching,
    "fsdp_memory.py": check_fsdp_memory,
    "gpu_recipe.py": check_gpu_recipe,
    "importance_overhead.py": check_importance_overhead,
    "inference_dtype.py": check_inference_dtype,
    "method_overhead.py": check_method_overhead,
    "perplexity.py": check_perplexity,
    "real_shapes.py": check_real_shapes,
    "serve_load.py": check_serve_load,
    "synthesize.py": check_synthesize,
    "synthesize_engines.py": check_synthesize_engines,
}


def run_smoke(name: str) -> tuple[dict, list[str], float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, f"bench/{name}", "--smoke"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - started
    assert completed.returncode == 0, (
        f"bench/{name} --smoke exited {completed.returncode}\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    assert lines, f"bench/{name} --smoke printed nothing"
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise AssertionError(f"bench/{name} --smoke: the last line is not JSON ({error}): {lines[-1][:500]}") from error
    assert isinstance(result, dict) and result, f"bench/{name} --smoke: the last line is not a JSON object: {lines[-1][:500]}"
    return result, lines, seconds


def test_every_bench_is_covered():
    assert BENCHES, "no bench/*.py found"
    assert set(CHECKS) <= set(BENCHES), f"checks for benches that no longer exist: {sorted(set(CHECKS) - set(BENCHES))}"


@pytest.mark.parametrize("name", [pytest.param(name, marks=marks(name)) for name in BENCHES])
def test_bench_smoke(name):
    result, lines, seconds = run_smoke(name)
    check = CHECKS.get(name)
    if check is not None:
        check(result, lines)
    print(f"bench/{name} --smoke: {seconds:.1f} s")
