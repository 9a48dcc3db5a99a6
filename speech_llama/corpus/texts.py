"""What the speech corpus says: the project's prompts, and sentences the base LLM writes itself.

Two LLM sources, both seeded: questions over `TOPICS` (the everyday and general-knowledge
subjects spoken questions are about), and one sentence per word of a word-frequency list
(`wordfreq`'s English ranking, independent of any test set), so the words of everyday
questions are heard many times. Generated text is cleaned to one plain sentence a TTS engine
reads as written (letters and basic punctuation, no digits, 4–20 words). No text equal to a
held-out question (normalised) is kept.

A word's one LLM sentence often leaves the word out (or is dropped by the cleaning), and the
adaptor's CTC head recognises almost only words it has heard many times (held-out recall of a
content word: 1 % unheard, 4 % heard 1–2 times, 45 % 3–9 times, 87 % 10 times or more). So the
same frequency list is also read as word lists: every word in `hearings` different lists.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from speech_llama.files import atomic_write_json
from speech_llama.text import normalized

TOPICS = (
    "animals", "birds", "insects", "fish and the sea", "the ocean", "rivers and lakes", "mountains", "volcanoes",
    "deserts", "forests", "the weather", "seasons", "the solar system", "the moon", "stars", "planets", "space travel",
    "the human body", "health", "sleep", "food", "cooking", "fruit", "vegetables", "baking bread", "coffee and tea",
    "countries of Europe", "countries of Asia", "countries of Africa", "countries of South America", "capital cities",
    "famous cities", "world history", "ancient Egypt", "ancient Greece", "the Roman Empire", "the Middle Ages",
    "kings and queens", "explorers", "inventions", "famous scientists", "famous painters", "famous writers",
    "classical music", "popular music", "musical instruments", "films", "books", "poetry", "languages", "grammar",
    "mathematics", "numbers and counting", "geometry", "physics", "chemistry", "biology", "electricity", "computers",
    "the internet", "phones", "cars", "trains", "airplanes", "ships", "bicycles", "sports", "football", "tennis",
    "the Olympic Games", "swimming", "running", "games and puzzles", "holidays", "travel", "hotels", "money",
    "shopping", "jobs", "school", "university", "family", "friends", "pets", "dogs", "cats", "horses", "gardening",
    "flowers", "trees", "farming", "houses", "furniture", "cleaning", "clothes", "colours", "the kitchen", "tools",
    "building", "bridges", "energy", "climate", "recycling", "medicine", "doctors", "hospitals", "law", "government",
    "elections", "religion", "philosophy", "art", "dance", "theatre", "photography", "news", "television", "radio",
    "time and clocks", "calendars", "birthdays", "weddings", "emotions", "manners", "safety", "first aid",
    "dinosaurs", "oceans and tides", "earthquakes", "maps", "the United States", "Canada", "Australia", "India",
    "China", "Japan", "France", "Germany", "Italy", "Spain", "Russia", "Brazil", "Mexico", "Egypt",
)
QUESTION_TEMPLATE = "Write one short question that a curious person might ask about {topic}. Reply with the question only."
SENTENCE_TEMPLATE = 'Write one simple sentence using the word "{word}". Reply with the sentence only.'
META_WORDS = re.compile(r"\b(question|sentence|curious person|reply|here is|here's|word)\b", re.IGNORECASE)
PLAIN_TEXT = re.compile(r"^[A-Za-z][A-Za-z ,'\-]*[A-Za-z][.?!]?$")
MIN_WORDS, MAX_WORDS = 4, 20


def clean_generated(text: str) -> str | None:
    """The first plain sentence in an LLM reply, or None when there is none worth speaking."""
    quoted = re.findall(r'"([^"]{10,})"', text)
    candidate = max(quoted, key=len) if quoted else text
    candidate = candidate.strip().split("\n")[0]
    if ":" in candidate:
        candidate = candidate.rsplit(":", 1)[1]
    match = re.match(r"\s*(.+?[.?!])(\s|$)", candidate)
    sentence = (match.group(1) if match else candidate).strip().strip("'\"")
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or META_WORDS.search(sentence) or not PLAIN_TEXT.match(sentence):
        return None
    return sentence[0].upper() + sentence[1:]


def frequent_words(count: int, skip: int = 100) -> list[str]:
    """English words by frequency rank (`wordfreq`), alphabetic and ≥ 3 letters, after the `skip` commonest."""
    try:
        from wordfreq import top_n_list
    except ImportError as error:
        raise ImportError("the corpus needs the word-frequency list. Fix: pip install wordfreq") from error
    words = [word for word in top_n_list("en", (count + skip) * 3) if word.isalpha() and word.isascii() and len(word) >= 3]
    return words[skip : skip + count]


def word_lists(words: list[str], tokenizer, *, hearings: int, per_list: int, seed: int) -> list[str]:
    """Comma-separated lists of `per_list` words ("Thailand, window, river."), each word in exactly `hearings` lists.

    A word is written capitalised when the LLM's tokenizer spells " Word" in fewer tokens than
    " word" (names: " Thailand" is one token, " thailand" several), so the CTC targets are the
    tokens the word has inside ordinary text. Each hearing is one shuffled pass over the words cut
    into lists, so a list never holds a word twice (a pass's last list may be shorter).
    """
    if hearings < 1 or per_list < 1:
        raise ValueError(f"word lists need hearings ≥ 1 and per_list ≥ 1, got {hearings} and {per_list}")
    cased = list(dict.fromkeys(_text_casing(word, tokenizer) for word in words))
    rng = random.Random(seed)
    lists = []
    for _ in range(hearings):
        order = list(cased)
        rng.shuffle(order)
        for start in range(0, len(order), per_list):
            text = ", ".join(order[start : start + per_list]) + "."
            lists.append(text[0].upper() + text[1:])
    return lists


def _text_casing(word: str, tokenizer) -> str:
    def length(spelling: str) -> int:
        return len(tokenizer(" " + spelling, add_special_tokens=False)["input_ids"])

    capitalised = word.capitalize()
    return capitalised if length(capitalised) < length(word) else word


def llm_prompts(num_questions: int, num_sentences: int, seed: int) -> list[str]:
    """The user turns the LLM answers: topic questions (topics cycled) then one per frequent word."""
    rng = random.Random(seed)
    topics = [TOPICS[index % len(TOPICS)] for index in range(num_questions)]
    rng.shuffle(topics)
    return [QUESTION_TEMPLATE.format(topic=topic) for topic in topics] + [
        SENTENCE_TEMPLATE.format(word=word) for word in frequent_words(num_sentences)
    ]


def generate_replies(prompts: list[str], cache_dir: Path, *, batch_size: int = 64, seed: int = 0,
                     progress: bool = True, workers: int = 2) -> list[str]:
    """The base LLM's sampled reply to each prompt, one cached chunk per batch (resumable).

    A chunk file is written atomically once its batch is done; a restarted build regenerates
    only the missing chunks (each seeded by its index, so a chunk is the same either way).
    `workers` processes with one torch thread each: on a small shared CPU, one multi-threaded
    generate slows down many times over whenever anything else runs (threads wait on each other).
    """
    import multiprocessing

    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    chunks = [prompts[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    paths = [cache_dir / f"chunk-{index:05d}.json" for index in range(len(chunks))]
    jobs = [(str(paths[index]), chunks[index], seed * 100_003 + index)
            for index, path in enumerate(paths) if not _chunk_matches(path, chunks[index])]
    if jobs:
        with tqdm(total=len(chunks), initial=len(chunks) - len(jobs), desc="LLM-written text", unit="batch",
                  disable=not progress) as bar:
            if workers <= 1:
                _load_writer()
                for job in jobs:
                    bar.update(_write_chunk(job))
            else:
                with multiprocessing.get_context("spawn").Pool(workers, initializer=_load_writer) as pool:
                    for done in pool.imap_unordered(_write_chunk, jobs):
                        bar.update(done)
    return [reply for path in paths for reply in json.loads(path.read_text())["replies"]]


_WRITER: dict = {}


def _load_writer() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speech_llama.offline.smollm2 import smollm2_dir
    from speech_llama.precision import fast_dtype_name

    torch.set_num_threads(1)
    llm_dir = smollm2_dir()
    _WRITER["tokenizer"] = AutoTokenizer.from_pretrained(llm_dir, padding_side="left")
    _WRITER["model"] = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=getattr(torch, fast_dtype_name())).eval()


def _write_chunk(job: tuple[str, list[str], int]) -> int:
    path, prompts, seed = job
    replies = _sample_replies(_WRITER["model"], _WRITER["tokenizer"], prompts, seed=seed)
    atomic_write_json(path, {"prompts": prompts, "replies": replies})
    return 1


def _chunk_matches(path: Path, prompts: list[str]) -> bool:
    return path.is_file() and json.loads(path.read_text()).get("prompts") == prompts


def _sample_replies(model, tokenizer, prompts: list[str], seed: int) -> list[str]:
    import torch

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True) for prompt in prompts]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=True, temperature=0.9, top_p=0.95, max_new_tokens=40,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def distinct_texts(sources: Iterable[tuple[str, str]], held_out: Iterable[str]) -> list[tuple[str, str]]:
    """(source, text) pairs with duplicates and held-out questions (normalised) removed, order kept."""
    seen = {normalized(text) for text in held_out}
    kept = []
    for source, text in sources:
        key = normalized(text)
        if key and key not in seen:
            seen.add(key)
            kept.append((source, text))
    return kept


def corpus_texts(prompts: list[str], held_out: list[str], cache_dir: Path, *, num_questions: int,
                 num_sentences: int, seed: int = 0, progress: bool = True,
                 replies: Callable[..., list[str]] = generate_replies) -> list[tuple[str, str]]:
    """All sentence texts as (source, text): the given prompts, then cleaned LLM-written sentences."""
    llm = [clean_generated(reply) for reply in
           replies(llm_prompts(num_questions, num_sentences, seed), cache_dir, seed=seed, progress=progress)]
    sources = [("prompts", text) for text in prompts] + [("llm", text) for text in llm if text]
    return distinct_texts(sources, held_out)
