"""Intervals pooled over training seeds (speech_llama/statistics.py) and the verdicts built on them
(apps/reproduce/report.py)."""

from __future__ import annotations

import numpy as np
import pytest

from speech_llama.statistics import (bootstrap_interval, paired_difference, pooled_interval, pooled_paired_difference,
                                     seed_interval)

from apps.reproduce.report import hypotheses, interval_status


def test_one_seed_pools_to_the_plain_question_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.5, rng.random(300) < 0.4
    pooled = pooled_paired_difference([a], [b])
    plain = paired_difference(a, b)
    assert {key: pooled[key] for key in plain} == plain and pooled["seeds"] == 1
    assert {key: value for key, value in pooled_interval([a]).items() if key != "seeds"} == bootstrap_interval(a)


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    base = rng.random(400) < 0.5
    same = [base, base, base]
    # Three training seeds that move the accuracy by -0.1, 0 and +0.1 on the same questions.
    lower, higher = base.copy(), base.copy()
    lower[np.flatnonzero(base)[:40]] = False
    higher[np.flatnonzero(~base)[:40]] = True
    spread = [lower, base, higher]
    width = lambda interval: interval["high"] - interval["low"]
    assert width(pooled_interval(spread)) > 1.3 * width(pooled_interval(same))
    assert pooled_interval(same)["mean"] == pytest.approx(base.mean())


def test_a_consistent_gain_over_seeds_is_resolved():
    rng = np.random.default_rng(3)
    b = [rng.random(300) < 0.4 for _ in range(3)]
    a = [row.copy() for row in b]
    for row in a:
        row[np.flatnonzero(~row)[:15]] = True  # +0.05 at every seed
    result = pooled_paired_difference(a, b)
    assert result["difference"] == 0.05 and result["excludes_zero"] and result["low"] > 0 and result["seeds"] == 3


def test_pooling_refuses_mismatched_grids():
    with pytest.raises(ValueError, match="same questions in the same order"):
        pooled_interval([[1, 0, 1], [1, 0]])
    with pytest.raises(ValueError, match="2 seeds × 3 questions against 1 × 3"):
        pooled_paired_difference([[1, 0, 1], [1, 1, 1]], [[0, 0, 1]])
    with pytest.raises(ValueError, match="at least one seed"):
        pooled_interval([])


def test_seed_interval_is_the_student_t_interval():
    interval = seed_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2 df) = 4.3027: half-width 4.3027 / √3 = 2.4841
    assert interval["mean"] == 2.0 and interval["sd"] == 1.0
    assert interval["low"] == pytest.approx(2 - 2.4841, abs=1e-4) and interval["high"] == pytest.approx(2 + 2.4841, abs=1e-4)
    assert not interval["excludes_zero"] and seed_interval([0.3, 0.31, 0.29])["excludes_zero"]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.1])


def test_a_verdict_is_held_not_held_or_not_resolved_by_its_intervals():
    above, below, across = {"low": 0.01, "high": 0.05}, {"low": -0.05, "high": -0.01}, {"low": -0.02, "high": 0.03}
    assert interval_status([above, above], +1) == "held"
    assert interval_status([above, across], +1) == "not resolved"
    assert interval_status([above, below], +1) == "not held"
    assert interval_status([below], -1) == "held" and interval_status([above], -1) == "not held"
    assert interval_status([None], +1) == "not resolved" and interval_status([], +1) == "not resolved"


def test_hypotheses_read_the_pooled_differences_and_the_seed_intervals():
    table1 = {"text": {"ppl": {"base": 3.0, "top": 1e6, "bottom": 3.1, "random": 15.0}}}
    shift = {"js_differences": {"full − layer_lr": {"low": 1e-4, "high": 3e-4}, "full − lora": {"low": -1e-4, "high": 2e-4}}}
    diff = lambda low, high: {"difference": (low + high) / 2, "low": low, "high": high}
    differences = {"t2t: layer_lr − full": diff(0.01, 0.04), "t2t: lora − full": diff(0.02, 0.05),
                   "t2t: full − no_ft": diff(-0.08, -0.02), "s2t: full − start": diff(0.1, 0.2),
                   "s2t: layer_lr − start": diff(0.1, 0.2), "s2t: lora − start": diff(-0.01, 0.2)}
    claims = hypotheses(table1, shift, differences)
    assert {key: claim["status"] for key, claim in claims.items()} == {
        "a": "held", "b": "not resolved", "c": "held", "d": "held", "e": "not resolved"}  # no control runs: no (f), (g)
    assert claims["c"]["held"] and not claims["b"]["held"]
    assert claims["c"]["intervals"] == {"t2t: layer_lr − full": [0.01, 0.04], "t2t: lora − full": [0.02, 0.05]}
    shift["js_differences"]["full − lora"] = None  # one seed: no interval
    assert hypotheses(table1, shift, differences)["b"]["status"] == "not resolved"
