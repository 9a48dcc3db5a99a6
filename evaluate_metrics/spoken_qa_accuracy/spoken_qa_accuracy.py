"""Spoken QA accuracy: a hit when any normalised gold answer appears in the normalised prediction.

This is the answer-containment protocol used for LLaMA Questions and Web Questions
(Spectron, LLaMA-Omni Table 2): free-form model outputs are scored by checking whether a
gold answer, normalised SQuAD-style, is contained in the normalised prediction.

Keep one ``import x`` per line: ``evaluate.load(local_path)`` reads the import lines of
this file to find its dependencies, and ``import a, b`` breaks that scan.
"""

import re
import unicodedata

import datasets
import evaluate

_CITATION = """\
@article{nachmani2023spoken,
  title={Spoken Question Answering and Speech Continuation Using Spectrogram-Powered LLM},
  author={Nachmani, Eliya and Levkovitch, Alon and Hirsch, Roy and Salazar, Julian and
          Asawaroengchai, Chulayuth and Mariooryad, Soroosh and Rivlin, Ehud and
          Skerry-Ryan, RJ and Ramanovich, Michelle Tadmor},
  journal={arXiv preprint arXiv:2305.15255},
  year={2023}
}
@inproceedings{berant2013semantic,
  title={Semantic Parsing on Freebase from Question-Answer Pairs},
  author={Berant, Jonathan and Chou, Andrew and Frostig, Roy and Liang, Percy},
  booktitle={Proceedings of the 2013 Conference on Empirical Methods in Natural Language Processing},
  pages={1533--1544},
  year={2013}
}
"""

_DESCRIPTION = """\
Accuracy for open-ended spoken (or text) question answering. A prediction counts as a hit
when ANY of its gold answers, after normalisation, is contained in the normalised
prediction as a whole-word sequence. Normalisation (SQuAD-style, extended):

1. Unicode NFKD, then combining marks are dropped (accents stripped: "Beyoncé" == "Beyonce";
   compatibility forms folded: "ﬁ" -> "fi", full-width digits -> ASCII digits).
2. Lowercase.
3. Dashes (any Unicode dash) become spaces ("Jay-Z" -> "jay z", "twenty-one" -> "twenty one");
   every other Unicode punctuation or symbol character (including curly quotes) is deleted,
   as in SQuAD ("U.S." -> "us", "don't" -> "dont", "1,000" -> "1000").
4. The articles "a", "an", "the" are removed as whole words.
5. Whitespace is folded to single spaces and trimmed.

Numbers: a second comparison maps number words to digits on BOTH sides ("zero".."twenty",
the tens "thirty".."ninety", and tens-unit compounds such as "twenty one" -> "21"), so "4"
matches "four" and "21" matches "twenty-one". Larger number words ("hundred", "thousand",
"million") are not converted. A pair is a hit when either comparison succeeds.

Matching is whole-word by default: "4" is not found in "1945" and "art" is not found in
"party". Pass `word_boundaries=False` for plain substring containment (closer to scripts
that use `gold in prediction` on raw strings).

An answer that normalises to the empty string never matches, and an empty prediction never
matches.

The LLaMA-Omni protocol (Fang et al. 2024) reports this accuracy for speech-to-text (S2T)
and text-to-text (T2T) answers on LLaMA Questions (Nachmani et al. 2023) and Web Questions
(Berant et al. 2013); see the citation block for both data sets.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): model outputs, one per question.
    references (`list` of `str` or `list` of `list` of `str`): gold answers, one entry per
        question; an entry may be a single answer or a list of acceptable answers.
    return_hits (`bool`, defaults to `False`): also return the per-question 0/1 hits.
    word_boundaries (`bool`, defaults to `True`): require the gold answer to match whole
        words of the prediction; `False` accepts any substring.

Returns:
    accuracy (`float`): share of questions with a hit, in [0, 1]. An empty batch is an error.
    hits (`list` of `int`): only with `return_hits=True`, 1 for a hit and 0 otherwise.

Examples:
    >>> metric = evaluate.load("evaluate_metrics/spoken_qa_accuracy")
    >>> results = metric.compute(
    ...     predictions=["It was The Beatles.", "I think there are four.", "Paris"],
    ...     references=[["Beatles", "the fab four"], "4", "London"],
    ...     return_hits=True,
    ... )
    >>> print(results)
    {'accuracy': 0.6666666666666666, 'hits': [1, 1, 0]}
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b")

_NUMBER_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}

_NUMBER_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}


def _strip_accents(text):
    """NFKD-decompose and drop combining marks, so accented and plain spellings compare equal."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _remove_punctuation(text):
    """Turn dashes into spaces and delete all other punctuation and symbols (Unicode-aware).

    Dashes become spaces because they usually join separate words ("Jay-Z", "twenty-one");
    everything else is deleted as in SQuAD, which keeps "U.S." and "US" equal.
    """
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Pd":
            kept.append(" ")
        elif category[0] in ("P", "S"):
            continue
        else:
            kept.append(char)
    return "".join(kept)


def normalize_answer(text):
    """Normalise an answer or a prediction for containment matching.

    Steps: strip accents (NFKD), lowercase, dashes to spaces, delete other punctuation and
    symbols, remove the articles a/an/the, fold whitespace. Number words are left as words;
    see `numbers_to_digits` for the second, number-aware comparison.
    """
    text = _strip_accents(text).lower()
    text = _remove_punctuation(text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def numbers_to_digits(normalized_text):
    """Map number words in an already normalised text to digits ("twenty one" -> "21").

    Covers zero..twenty, the tens thirty..ninety and tens-unit compounds; larger scales
    ("hundred", "thousand") are left untouched on purpose, since composing them correctly
    needs a full number parser and they are rare in short factoid answers.
    """
    tokens = normalized_text.split()
    converted = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        is_compound = token in _NUMBER_TENS and 1 <= _NUMBER_UNITS.get(following, 0) <= 9
        if is_compound:
            converted.append(str(_NUMBER_TENS[token] + _NUMBER_UNITS[following]))
            index += 2
            continue
        if token in _NUMBER_TENS:
            converted.append(str(_NUMBER_TENS[token]))
        elif token in _NUMBER_UNITS:
            converted.append(str(_NUMBER_UNITS[token]))
        else:
            converted.append(token)
        index += 1
    return " ".join(converted)


def _contains(normalized_prediction, normalized_answer, word_boundaries):
    """Whether a non-empty normalised answer occurs in the normalised prediction."""
    if not normalized_answer or not normalized_prediction:
        return False
    if word_boundaries:
        # Padding both sides with spaces turns substring search into whole-word search.
        return f" {normalized_answer} " in f" {normalized_prediction} "
    return normalized_answer in normalized_prediction


def _as_answer_list(reference):
    """A reference is one answer or a list of acceptable answers; always return a list."""
    if isinstance(reference, str):
        return [reference]
    return list(reference)


def is_hit(prediction, reference, word_boundaries=True):
    """True when any gold answer in `reference` (a str or a list of str) is in `prediction`.

    The plain normalised forms are compared first, then the forms with number words
    mapped to digits on both sides ("4" vs "four").
    """
    normalized_prediction = normalize_answer(prediction)
    prediction_with_digits = numbers_to_digits(normalized_prediction)
    for answer in _as_answer_list(reference):
        normalized_answer = normalize_answer(answer)
        if _contains(normalized_prediction, normalized_answer, word_boundaries):
            return True
        if _contains(prediction_with_digits, numbers_to_digits(normalized_answer), word_boundaries):
            return True
    return False


def _check_predictions(predictions):
    """Raise a ValueError naming the first prediction that is not a string."""
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(
                f"spoken_qa_accuracy: prediction {index} must be a string, got "
                f"{type(prediction).__name__} ({prediction!r})"
            )


def _check_references(references):
    """Raise a ValueError naming the first reference that is neither a str nor a list of str."""
    for index, reference in enumerate(references):
        if isinstance(reference, str):
            continue
        is_list_of_strings = isinstance(reference, (list, tuple)) and all(
            isinstance(answer, str) for answer in reference
        )
        if not is_list_of_strings:
            raise ValueError(
                f"spoken_qa_accuracy: reference {index} must be a string or a list of strings, got "
                f"{reference!r}"
            )


def _check_inputs(predictions, references):
    """Validate lengths and element types before `evaluate` encodes them.

    `evaluate` would otherwise cast numbers to strings silently or fail with a generic
    format message; these errors say which item is wrong.
    """
    if predictions is None or references is None:
        raise ValueError("spoken_qa_accuracy: both `predictions` and `references` are required")
    if len(predictions) == 0:
        raise ValueError("spoken_qa_accuracy: got no predictions; accuracy over zero questions is undefined")
    if len(predictions) != len(references):
        raise ValueError(
            f"spoken_qa_accuracy: got {len(predictions)} predictions but {len(references)} references; "
            "there must be one reference (a str or a list of str) per prediction"
        )
    _check_predictions(predictions)
    _check_references(references)


def _as_answer_lists(references):
    """Store every reference as a list of answers.

    `evaluate` fixes ONE feature format from the first example it sees, so without this a
    batch (or a later batch) mixing "answer" and ["answer", "alias"] would be rejected.
    """
    return [_as_answer_list(reference) for reference in references]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpokenQaAccuracy(evaluate.Metric):
    """Answer-containment accuracy for spoken / text question answering."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Both input forms are accepted; add/add_batch store references as lists (the first
            # form) so that calls and batches may mix them.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Value("string"),
                    }
                ),
            ],
            reference_urls=[
                "https://arxiv.org/abs/2305.15255",
                "https://aclanthology.org/D13-1160/",
                "https://arxiv.org/abs/2409.06666",
                "https://rajpurkar.github.io/SQuAD-explorer/",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Validate and unify the batch, then store it as `evaluate` does."""
        _check_inputs(predictions, references)
        super().add_batch(predictions=list(predictions), references=_as_answer_lists(references), **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Validate one example, then store it as `evaluate` does."""
        _check_inputs([prediction], [reference])
        super().add(prediction=prediction, reference=_as_answer_list(reference), **kwargs)

    def _compute(self, predictions, references, return_hits=False, word_boundaries=True):
        hits = [
            int(is_hit(prediction, reference, word_boundaries))
            for prediction, reference in zip(predictions, references, strict=True)
        ]
        result = {"accuracy": sum(hits) / len(hits)}
        if return_hits:
            result["hits"] = hits
        return result
