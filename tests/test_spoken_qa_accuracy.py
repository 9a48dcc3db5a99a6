"""Tests for the `spoken_qa_accuracy` evaluate metric (evaluate_metrics/spoken_qa_accuracy)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from evaluate_metrics import METRICS_DIR, load_metric, metric_path

METRIC_DIR = METRICS_DIR / "spoken_qa_accuracy"
METRIC_SCRIPT = METRIC_DIR / "spoken_qa_accuracy.py"
REPO_ROOT = METRICS_DIR.parent


def _import_script():
    """Import the metric script as a plain module, to test its helper functions directly."""
    spec = importlib.util.spec_from_file_location("spoken_qa_accuracy_script", METRIC_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sqa = _import_script()


@pytest.fixture(scope="module")
def metric():
    return load_metric("spoken_qa_accuracy", keep_in_memory=True)


# --- loading -------------------------------------------------------------------------------


def test_loads_by_relative_path_in_fresh_offline_process(tmp_path):
    """`evaluate.load("evaluate_metrics/spoken_qa_accuracy")` works offline from an empty cache."""
    code = (
        "import evaluate, json\n"
        "m = evaluate.load('evaluate_metrics/spoken_qa_accuracy')\n"
        "r = m.compute(predictions=['It was The Beatles.', 'Paris'],"
        " references=[['Beatles', 'fab four'], 'London'], return_hits=True)\n"
        "print('RESULT=' + json.dumps(r))\n"
    )
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),  # no module cached from an earlier run
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    result_line = [line for line in completed.stdout.splitlines() if line.startswith("RESULT=")][-1]
    assert json.loads(result_line[len("RESULT=") :]) == {"accuracy": 0.5, "hits": [1, 0]}


def test_script_has_one_module_per_import_line():
    """evaluate.load scans import lines for dependencies; `import a, b` breaks that scan."""
    for line in METRIC_SCRIPT.read_text(encoding="utf-8").splitlines():
        if re.match(r"^import\s", line):
            assert "," not in line, f"one module per import line, got: {line!r}"


def test_metric_info_documents_the_protocol(metric):
    assert "Spectrogram-Powered LLM" in metric.citation
    assert "Berant" in metric.citation
    assert "LLaMA-Omni" in metric.description
    assert ">>> metric = evaluate.load" in metric.inputs_description
    assert isinstance(metric.features, list) and len(metric.features) == 2


def test_metric_path_rejects_unknown_metric():
    with pytest.raises(FileNotFoundError, match="spoken_qa_accuracy"):
        metric_path("no_such_metric")


def test_metric_card_has_front_matter():
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n")
    front_matter = card.split("---\n")[1]
    assert "title: Spoken QA Accuracy" in front_matter
    assert "- metric" in front_matter


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  An   apple\t a day\n", "apple day"),
        ("U.S.A.!", "usa"),
        ("Jay-Z", "jay z"),
        ("twenty\u2013one", "twenty one"),  # en dash
        ("\u201cHamlet\u201d", "hamlet"),  # curly double quotes
        ("don\u2019t", "dont"),  # curly apostrophe
        ("Beyonc\u00e9", "beyonce"),
        ("Cura\u00e7ao", "curacao"),
        ("\ufb01sh", "fish"),  # ligature folded by NFKD
        ("1,000 $", "1000"),
        ("Theater", "theater"),  # "the" inside a word is not an article
        ("", ""),
        ("The!", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert sqa.normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("normalized", "expected"),
    [
        ("four", "4"),
        ("twenty one", "21"),
        ("ninety nine balloons", "99 balloons"),
        ("twenty", "20"),
        ("twenty zero", "20 0"),  # zero is not a unit of a compound
        ("one hundred", "1 hundred"),  # scale words are not composed
        ("someone", "someone"),
    ],
)
def test_numbers_to_digits(normalized, expected):
    assert sqa.numbers_to_digits(normalized) == expected


# --- hits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("It was THE BEATLES!", "The Beatles", True),
        ("beatles", "The Beatles", True),
        ("The answer is Paris.", ["London", "Paris"], True),
        ("The answer is Paris.", ["London", "Berlin"], False),
        ("There are four seasons.", "4", True),
        ("There are 4 seasons.", "four", True),
        ("She turned twenty-one.", "21", True),
        ("He landed in 1969.", "1969", True),
        ("The war ended in 1945.", "4", False),  # whole words: 4 is not in 1945
        ("a party", "art", False),
        ("", "Paris", False),
        ("   ", "Paris", False),
        ("Paris", "", False),
        ("Paris", "The", False),  # gold normalises to nothing
        ("anything", [], False),
        ("Paris  is\nthe capital", "paris is capital", True),
        ("It\u2019s \u201cHamlet\u201d.", "Hamlet", True),
        ("Beyonce sang it", "Beyonc\u00e9", True),
        ("Beatles", "The Beatles were a band from Liverpool", False),  # answer longer than prediction
        ("The U.S. Army", "US army", True),
    ],
)
def test_is_hit(prediction, reference, expected):
    assert sqa.is_hit(prediction, reference) is expected


def test_substring_mode_accepts_partial_words():
    assert sqa.is_hit("The war ended in 1945.", "4", word_boundaries=False) is True
    assert sqa.is_hit("a party", "art", word_boundaries=False) is True
    assert sqa.is_hit("", "art", word_boundaries=False) is False


# --- compute -------------------------------------------------------------------------------


def test_accuracy_arithmetic_and_hits(metric):
    result = metric.compute(
        predictions=["It was The Beatles.", "I think there are four.", "Paris", "No idea"],
        references=[["Beatles", "the fab four"], "4", "London", ["Rome"]],
        return_hits=True,
    )
    assert result == {"accuracy": 0.5, "hits": [1, 1, 0, 0]}


def test_hits_absent_by_default(metric):
    result = metric.compute(predictions=["one", "two", "three"], references=["1", "3", "3"])
    assert result == {"accuracy": pytest.approx(2 / 3)}


def test_string_references_only(metric):
    assert metric.compute(predictions=["Paris", "Rome"], references=["paris", "rome"]) == {"accuracy": 1.0}


def test_list_references_only(metric):
    result = metric.compute(predictions=["Paris", "Rome"], references=[["paris"], ["x", "y"]])
    assert result == {"accuracy": 0.5}


def test_mixed_string_and_list_references(metric):
    result = metric.compute(
        predictions=["Paris", "Rome", "Oslo"], references=["paris", ["x", "rome"], "bergen"], return_hits=True
    )
    assert result == {"accuracy": pytest.approx(2 / 3), "hits": [1, 1, 0]}


def test_compute_forwards_word_boundaries(metric):
    strict = metric.compute(predictions=["in 1945"], references=["4"])
    loose = metric.compute(predictions=["in 1945"], references=["4"], word_boundaries=False)
    assert (strict["accuracy"], loose["accuracy"]) == (0.0, 1.0)


def test_batches_and_single_adds_may_mix_reference_forms(metric):
    metric.add_batch(predictions=["Paris"], references=["Paris"])
    metric.add_batch(predictions=["Berlin"], references=[["Rome", "Milan"]])
    metric.add(prediction="It is four.", reference="4")
    metric.add(prediction="Jay-Z", reference=["jay z"])
    assert metric.compute(return_hits=True) == {"accuracy": 0.75, "hits": [1, 0, 1, 1]}


def test_length_mismatch_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric.compute(predictions=["a", "b"], references=["a"])


def test_non_string_prediction_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="prediction 1 must be a string, got int"):
        metric.compute(predictions=["a", 4], references=["a", "4"])


def test_bad_reference_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="reference 0 must be a string or a list of strings"):
        metric.compute(predictions=["a"], references=[[1, 2]])


def test_empty_batch_is_a_clear_error(metric):
    with pytest.raises(ValueError, match="no predictions"):
        metric.compute(predictions=[], references=[])
