"""Vocabulary expansion data: a lexicon mined from a real English corpus, and plain-text LM rows.

Corpus choice: the Python documentation topics that ship with CPython,
``pydoc_data.topics.topics`` (a dict: topic name -> the text of one section of
the Language Reference, e.g. "assert", "class", "typesseq"; ~80 topics, ~460 kB
in Python 3.11). It is real technical English that nobody here wrote, it is
available offline on every Python install, and it is full of words a general
tokenizer splits into many pieces ("metaclass", "__getattribute__",
"coroutine"), which is exactly what a vocabulary expansion should help with.
Its exact content depends on the Python version; ``corpus_info()`` records it.

Splitting is by document, never by row: topics are the unit. Some topics
contain whole paragraphs of others ("augassign" is inside "assignment", the
"async" statements are inside "compound"), so topics that share a paragraph
of >= 60 characters are grouped, and whole groups go to one split. Short
boilerplate paragraphs that still repeat across groups ("See also:", "New in
version 3.5.") are removed from the held-out splits, so no held-out paragraph
ever appears in training text.

Rows for causal LM training are ``{"text": chunk, "topic", "split"}``, with
chunks of up to ``chunk_chars`` characters cut on paragraph boundaries.
"""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokengraft.errors import TokengraftError
from tokengraft.tasks.registry import Generated, Task, register_task
from tokengraft.tasks.splits import SPLITS

# Identifier-like words: letters, digits and underscores, starting with a letter or underscore,
# at least 3 characters, containing a letter. Underscores are kept because dunder names
# ("__init__") are real vocabulary in this corpus.
WORD_RE = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]{2,39}(?![A-Za-z0-9_])")
_SHARED_PARAGRAPH_CHARS = 60


def corpus_topics() -> dict[str, str]:
    """The corpus: topic name -> text, sorted by name (so splits are deterministic)."""
    from pydoc_data.topics import topics  # the stdlib module; imported lazily because it is ~0.5 MB

    return {k: topics[k] for k in sorted(topics)}


def corpus_info() -> dict[str, Any]:
    topics = corpus_topics()
    return {"corpus": "pydoc_data.topics", "python": sys.version.split()[0], "topics": len(topics),
            "chars": sum(len(t) for t in topics.values())}


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def topic_groups(topics: Mapping[str, str]) -> list[list[str]]:
    """Topics that share a paragraph of >= 60 characters, grouped (union-find); sorted, deterministic."""
    parent = {k: k for k in topics}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owners: dict[str, list[str]] = {}
    for name, text in topics.items():
        for p in paragraphs(text):
            if len(p) >= _SHARED_PARAGRAPH_CHARS:
                owners.setdefault(p, []).append(name)
    for names in owners.values():
        for other in names[1:]:
            parent[find(other)] = find(names[0])
    groups: dict[str, list[str]] = {}
    for name in topics:
        groups.setdefault(find(name), []).append(name)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def split_topics(topics: Mapping[str, str], seed: int = 0,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Assign whole topic groups to splits, aiming at ``fractions`` of the corpus characters.

    Groups are shuffled with the seed; test, then validation, take groups until
    they hold their share, skipping a group that would overshoot it by more than
    half (the biggest group holds ~40% of the corpus and belongs in train).
    """
    rng = random.Random(f"tokengraft-lexicon:{seed}")
    groups = topic_groups(topics)
    rng.shuffle(groups)
    total = sum(len(t) for t in topics.values())
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for split, frac in (("test", fractions[2]), ("validation", fractions[1])):
        target, size = frac * total, 0
        for g in list(groups):
            g_size = sum(len(topics[t]) for t in g)
            if size >= target:
                break
            if size + g_size <= 1.5 * target:
                out[split] += g
                size += g_size
                groups.remove(g)
    out["train"] = [t for g in groups for t in g]
    return {s: sorted(v) for s, v in out.items()}


def chunk_text(text: str, chunk_chars: int = 1000) -> list[str]:
    """Chunks of at most ``chunk_chars`` characters on paragraph boundaries.

    A paragraph longer than a chunk is cut on line boundaries, and a single line
    longer than a chunk is cut hard: nothing is dropped.
    """
    if chunk_chars < 1:
        raise TokengraftError(f"chunk_chars must be positive, got {chunk_chars}")
    # (piece, separator before it): paragraphs join with a blank line, lines of a long paragraph
    # with a newline, hard-cut parts of a long line with nothing, so joined chunks are the source text.
    pieces: list[tuple[str, str]] = []
    for p in paragraphs(text):
        if len(p) <= chunk_chars:
            pieces.append((p, "\n\n"))
            continue
        for j, line in enumerate(p.split("\n")):
            for i in range(0, max(1, len(line)), chunk_chars):
                pieces.append((line[i:i + chunk_chars], "" if i else "\n" if j else "\n\n"))
    chunks: list[str] = []
    current = ""
    for piece, sep in pieces:
        if current and len(current) + len(sep) + len(piece) > chunk_chars:
            chunks.append(current)
            current = piece
        else:
            current = current + sep + piece if current else piece
    if current:
        chunks.append(current)
    return [c for c in chunks if c.strip()]


def split_texts(seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                topics: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Per split: topic -> text, with held-out paragraphs that also occur in training removed."""
    topics = corpus_topics() if topics is None else topics
    names = split_topics(topics, seed, fractions)
    train_paras = {p for t in names["train"] for p in paragraphs(topics[t])}
    out: dict[str, dict[str, str]] = {"train": {t: topics[t] for t in names["train"]}}
    for split in ("validation", "test"):
        out[split] = {}
        for t in names[split]:
            kept = [p for p in paragraphs(topics[t]) if p not in train_paras]
            if kept:
                out[split][t] = "\n\n".join(kept)
    return out


def generate_splits(seed: int = 0, chunk_chars: int = 1000,
                    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[dict[str, Any]]]:
    """``{"text", "topic", "split"}`` rows for plain causal-LM training and held-out evaluation."""
    texts = split_texts(seed, fractions)
    return {split: [{"text": chunk, "topic": topic, "split": split}
                    for topic, text in texts[split].items() for chunk in chunk_text(text, chunk_chars)]
            for split in SPLITS}


def check_splits(splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Assert topics are disjoint and no held-out paragraph occurs in the training text."""
    topics = {s: {r["topic"] for r in rows} for s, rows in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        shared = topics[a] & topics[b]
        assert not shared, f"topic {sorted(shared)[0]!r} in both {a} and {b}"
    train_paras = {p for r in splits["train"] for p in paragraphs(r["text"])}
    for split in ("validation", "test"):
        for r in splits[split]:
            for p in paragraphs(r["text"]):
                assert p not in train_paras, f"{split} paragraph also in train: {p[:60]!r}"


# ----------------------------------------------------------------------------- lexicon


def word_counts(texts: Iterable[str], after_space: bool = False) -> Counter[str]:
    """Counts of ``WORD_RE`` words (case kept: "Python" and "python" are different tokens).

    ``after_space`` counts only occurrences that follow a space: what a " word" token
    (``tokens.word_start``) can match ("object.__dict__" holds no " __dict__").
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(m.group() for m in WORD_RE.finditer(text)
                      if not after_space or (m.start() > 0 and text[m.start() - 1] == " "))
    return counts


def piece_count(tokenizer: Any, word: str) -> int:
    """How many tokens ``word`` costs in running text.

    Words mostly follow a space, and byte-level BPE tokenizers (GPT-2, Llama 3,
    SmolLM2) merge that space into the word's first piece ("Ġword"), so we encode
    ``" " + word``. If the tokenizer instead emits the space as a token of its own
    (character-level or SentencePiece-style tokenizers may), that token is not
    part of the word's cost and is not counted.
    """
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    if ids and tokenizer.decode(ids[:1]).strip() == "":
        ids = ids[1:]
    return len(ids)


def mine_lexicon(texts: Iterable[str], tokenizer: Any, min_pieces: int = 3, min_count: int = 5,
                 max_words: int = 1000, after_space: bool = False) -> list[str]:
    """Words of ``texts`` that occur >= ``min_count`` times (after a space, with ``after_space``)
    and cost >= ``min_pieces`` tokens.

    Pass only the TRAIN texts: a lexicon mined from held-out text would leak it.
    Ordered by count (descending), then alphabetically; at most ``max_words``.
    """
    if min_pieces < 2:
        raise TokengraftError(f"min_pieces must be >= 2 (a 1-piece word is already a token), got {min_pieces}")
    counts = word_counts(texts, after_space)
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    out: list[str] = []
    for word in ranked:
        if len(out) >= max_words:
            break
        if piece_count(tokenizer, word) >= min_pieces:
            out.append(word)
    return out


def read_lexicon(path: str | Path) -> list[str]:
    """One word per line; blank lines and lines starting with ``#`` skipped; duplicates dropped (first kept)."""
    path = Path(path)
    if not path.is_file():
        raise TokengraftError(f"lexicon file {path} not found; give a text file with one word per line")
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            seen.setdefault(word, None)
    if not seen:
        raise TokengraftError(f"lexicon file {path} has no words; put one word per line")
    return list(seen)


def write_lexicon(words: Iterable[str], path: str | Path, header: str = "") -> Path:
    """Write a lexicon that ``read_lexicon`` reads back; ``header`` lines become ``#`` comments."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {h}" for h in header.splitlines()] + list(words)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the task

MINING_OPTIONS = ("min_pieces", "min_count", "max_words")  # generate_options that go to the miner, not the splits


def _write_mined(words: list[str], path: Path) -> Path:
    return write_lexicon(words, path, header="mined from the training split")


def generate(seed: int, options: Mapping[str, Any], tokenizer: Any = None, word_start: bool = False) -> Generated:
    """The registry's generator: text splits, then the lexicon mined from the training split.

    ``word_start`` (``tokens.word_start``) counts only words after a space, which is all a
    " word" token can match.
    """
    options = dict(options)
    mine = {k: options.pop(k) for k in MINING_OPTIONS if k in options}
    splits = generate_splits(seed=seed, **options)
    words = mine_lexicon([r["text"] for r in splits["train"]], tokenizer, after_space=word_start, **mine)
    if not words:
        raise TokengraftError("the lexicon miner found no word; lower data.generate_options.min_count or min_pieces")
    return Generated(splits, words, write_tokens=_write_mined)


register_task(Task(
    "lexicon", summary="vocabulary expansion: frequent many-piece words of a corpus become single tokens",
    generator=generate, mines_tokens=True, metric_keys=("bits_per_byte", "tokens_per_byte"),
))
