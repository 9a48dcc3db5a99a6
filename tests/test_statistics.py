"""Bootstrap intervals (speech_llama/statistics.py) and `speech-llama eval-diff`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.cli import main
from apps.eval_diff import compare_runs
from speech_llama.files import write_jsonl
from speech_llama.statistics import bootstrap_interval, paired_difference


def test_interval_brackets_the_mean_and_narrows_with_more_questions():
    small = bootstrap_interval([1, 0] * 20)
    large = bootstrap_interval([1, 0] * 500)
    assert small["mean"] == large["mean"] == 0.5
    assert small["low"] < 0.5 < small["high"] and large["low"] < 0.5 < large["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 3  # ≈ 1/√25 as wide
    # The normal approximation's half-width for p = 0.5, n = 40 is 1.96 · √(0.25 / 40) ≈ 0.155.
    assert abs((small["high"] - small["low"]) / 2 - 0.155) < 0.03
    assert bootstrap_interval([1, 1, 1]) == {"mean": 1.0, "low": 1.0, "high": 1.0, "level": 0.95, "n": 3}


def test_paired_difference_sees_a_consistent_gain_the_unpaired_intervals_hide():
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.4
    better = base.copy()
    better[np.flatnonzero(~base)[:16]] = True  # 16 more questions right, none lost: +0.08
    paired = paired_difference(better, base)
    assert paired["difference"] == 0.08 and paired["excludes_zero"] and paired["low"] > 0
    a, b = bootstrap_interval(better), bootstrap_interval(base)
    assert a["low"] < b["high"]  # the separate intervals overlap
    same = paired_difference(base, base)
    assert same["difference"] == same["low"] == same["high"] == 0.0 and not same["excludes_zero"]
    assert paired_difference(better, base, seed=0) == paired


def test_paired_difference_refuses_different_question_counts():
    with pytest.raises(ValueError, match="scored on 3 and 2 questions"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def write_run(folder, questions, correct):
    folder.mkdir(parents=True)
    write_jsonl(folder / "predictions.jsonl", [{"question": q, "prediction": "x", "answers": ["y"], "correct": c}
                                                for q, c in zip(questions, correct)])
    return folder


def test_eval_diff_compares_two_runs_on_the_same_questions(tmp_path, capsys):
    questions = [f"question {i}?" for i in range(50)]
    a = write_run(tmp_path / "a", questions, [i % 2 == 0 or i < 10 for i in range(50)])
    b = write_run(tmp_path / "b", questions, [i % 2 == 0 for i in range(50)])
    result = compare_runs(a, b)
    assert result["a"]["mean"] == 0.6 and result["b"]["mean"] == 0.5
    assert result["a_minus_b"]["difference"] == 0.1 and result["a_minus_b"]["excludes_zero"]
    assert main(["eval-diff", str(a), str(b)]) == 0
    assert json.loads(capsys.readouterr().out) == result


def test_eval_diff_refuses_runs_on_different_questions(tmp_path, capsys):
    a = write_run(tmp_path / "a", ["q1?", "q2?"], [True, False])
    b = write_run(tmp_path / "b", ["q1?", "q3?"], [True, True])
    assert main(["eval-diff", str(a), str(b)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not score the same questions (they differ at row 2" in err[0]
    assert main(["eval-diff", str(a), str(tmp_path / "missing")]) != 0
    assert "no predictions.jsonl" in capsys.readouterr().err
