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

import functools
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
# The opener varies the question's form (who / where / how many …): asked for a topic alone, the base
# LLM writes mostly "What is …" questions, and the corpus repeats itself.
QUESTION_OPENERS = ("What", "Who", "Where", "When", "Which", "How many", "How", "Why")
QUESTION_TEMPLATE = ('Write one short question starting with "{opener}" that a curious person might ask about {topic}. '
                     "Reply with the question only.")
SENTENCE_TEMPLATE = 'Write one simple sentence using the word "{word}". Reply with the sentence only.'
META_WORDS = re.compile(r"\b(question|sentence|curious person|reply|here is|here's|word)\b", re.IGNORECASE)
PLAIN_TEXT = re.compile(r"^[A-Za-z][A-Za-z ,'\-]*[A-Za-z][.?!]?$")
MIN_WORDS, MAX_WORDS = 4, 20
MAX_NEW_TOKENS = 40


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
    """The user turns the LLM answers: topic questions (topics cycled, each topic through the
    openers in turn) then one per frequent word."""
    rng = random.Random(seed)
    pairs = [(TOPICS[index % len(TOPICS)], QUESTION_OPENERS[index // len(TOPICS) % len(QUESTION_OPENERS)])
             for index in range(num_questions)]
    rng.shuffle(pairs)
    return [QUESTION_TEMPLATE.format(topic=topic, opener=opener) for topic, opener in pairs] + [
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


def _sample_replies(model, tokenizer, prompts: list[str], seed: int, *, max_new_tokens: int = MAX_NEW_TOKENS,
                    temperature: float = 0.9, top_p: float = 0.95) -> list[str]:
    """Each prompt's sampled reply (nucleus sampling), up to its first line end or end of turn.

    Three savings over `generate` (timings in docs/experiments.md): the prompts'
    shared opening (the chat template's system turn and the prompt template, ≈ 32 of ≈ 48
    tokens) is run once, not once per row; a row leaves the batch (and its KV cache) as soon as
    it ends, where `generate` runs every row to the longest (replies end after ≈ 20 of the 40
    tokens; the cleaning keeps only a reply's first line); and the nucleus comes from a partial
    sort (`_nucleus_samples`). Row `i` draws from its own generator, seeded `seed * 1000 + i`.
    """
    import torch
    from transformers import DynamicCache

    encoded = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True) for prompt in prompts])["input_ids"]
    shared = _shared_length(encoded)
    width = max(len(ids) for ids in encoded) - shared
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The rows' own tokens, left-padded after the shared opening: positions come from the mask.
    own = torch.tensor([[pad] * (width - len(ids) + shared) + ids[shared:] for ids in encoded])
    mask = torch.tensor([[1] * shared + [0] * (width - len(ids) + shared) + [1] * (len(ids) - shared) for ids in encoded])
    generators = [torch.Generator().manual_seed(seed * 1_000 + row) for row in range(len(prompts))]
    ends = _ending_token_ids(tokenizer)
    replies: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([encoded[0][:shared]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(prompts))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits = model(input_ids=own, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        for step in range(max_new_tokens):
            tokens = _nucleus_samples(logits, temperature, top_p, [generators[row] for row in rows])
            for row, token in zip(rows, tokens):
                replies[row].append(token)
            going = [place for place, token in enumerate(tokens) if token not in ends]
            if not going or step == max_new_tokens - 1:
                break
            keep = torch.tensor(going)
            cache.batch_select_indices(keep)
            rows = [rows[place] for place in going]
            mask = torch.cat([mask[keep], torch.ones(len(going), 1, dtype=mask.dtype)], dim=1)
            logits = model(input_ids=torch.tensor([[tokens[place]] for place in going]), attention_mask=mask,
                           position_ids=mask.sum(-1, keepdim=True) - 1, past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1]
    return tokenizer.batch_decode(replies, skip_special_tokens=True)


def _shared_length(encoded: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own."""
    shortest = min(len(ids) for ids in encoded)
    shared = 0
    while shared < shortest - 1 and all(ids[shared] == encoded[0][shared] for ids in encoded):
        shared += 1
    return shared


@functools.lru_cache(maxsize=4)
def _ending_token_ids(tokenizer) -> frozenset[int]:
    """Tokens after which a reply is over: end of turn / text, and any token holding a line break."""
    ends = {token for token in (tokenizer.eos_token_id, tokenizer.pad_token_id) if token is not None}
    ends |= {index for token, index in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([token])}
    return frozenset(ends)


def _nucleus_samples(logits, temperature: float, top_p: float, generators: list, candidates: int = 512) -> list[int]:
    """One token per row of (rows, vocab) logits: temperature, then the smallest set of tokens
    whose probability reaches `top_p` (the likeliest always kept), each row with its own generator.

    The nucleus is looked for among each row's `candidates` likeliest tokens (a partial sort:
    sorting the whole 49k vocabulary costs a third of a batch's time) and only a row whose
    candidates hold less than `top_p` is sorted whole, so the result is exact either way.
    """
    import torch

    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    ordered, order = probabilities.topk(min(candidates, probabilities.shape[1]), dim=-1)
    rows = [(ordered[row], order[row]) for row in range(len(generators))]
    for row in (ordered.sum(dim=-1) < top_p).nonzero()[:, 0].tolist():
        rows[row] = probabilities[row].sort(descending=True)
    return [_nucleus_sample(row_ordered, row_order, top_p, generator)
            for (row_ordered, row_order), generator in zip(rows, generators)]


def _nucleus_sample(ordered, order, top_p: float, generator) -> int:
    """A draw from probabilities `ordered` (descending, tokens `order`), cut to the `top_p` nucleus."""
    import torch

    cumulative = ordered.cumsum(dim=0)
    nucleus = int((cumulative - ordered < top_p).sum())
    draw = float(torch.rand(1, generator=generator)) * float(cumulative[nucleus - 1])
    return int(order[min(int((cumulative[:nucleus] < draw).sum()), nucleus - 1)])


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
