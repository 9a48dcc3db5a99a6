"""How well the corpus covers held-out speech: content words (and their LLM tokens) heard ≥ k times."""

from __future__ import annotations

import re
from collections import Counter

STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being am do does did "
    "have has had what which who whom whose when where why how that this these those it its i you he she we they "
    "me him her us them my your his our their there here not no yes so than then too very can could will would "
    "shall should may might must into onto over under about up down out off all any some each many much more most "
    "one".split()
)


def content_words(text: str) -> list[str]:
    return [word for word in re.findall(r"[a-z']+", text.lower()) if word not in STOPWORDS and len(word) > 1]


def coverage(train_texts: list[str], held_out_texts: list[str], tokenizer, min_count: int = 3) -> dict:
    """Share of held-out content words (types) heard ≥ `min_count` times in training, and of their tokens.

    `train_texts` has one entry per training clip (a text read twice counts twice). Tokens are the
    LLM's tokens of each word with its leading space, as it appears inside a sentence.
    """
    heard_words = Counter(word for text in train_texts for word in content_words(text))
    heard_tokens = Counter(token for text in train_texts for token in tokenizer(text, add_special_tokens=False)["input_ids"])
    words = sorted({word for text in held_out_texts for word in content_words(text)})
    tokens = sorted({token for word in words for token in tokenizer(" " + word, add_special_tokens=False)["input_ids"]})
    covered_words = [word for word in words if heard_words[word] >= min_count]
    covered_tokens = [token for token in tokens if heard_tokens[token] >= min_count]
    return {
        "min_count": min_count,
        "held_out_content_words": len(words),
        "words_covered": len(covered_words),
        "word_coverage": round(len(covered_words) / max(len(words), 1), 4),
        "held_out_tokens": len(tokens),
        "tokens_covered": len(covered_tokens),
        "token_coverage": round(len(covered_tokens) / max(len(tokens), 1), 4),
        "words_never_heard": [word for word in words if heard_words[word] == 0][:200],
    }
