"""Vocabulary expansion data: a lexicon mined from a real corpus, and plain-text LM rows.

Two corpora. The default, below, is English that the built-in tokenizer already
fits (the control). ``data.generate_options.corpus: DIR`` reads a corpus in
another language instead: ``DIR/{train,validation,test}.txt`` and
``DIR/manifest.json`` as ``benchmarks/lexicon_corpus.py`` writes them from
Debian's translated ``debian-reference`` guide (split by chapter there; see
`read_corpus`).

Three miners, one per kind of text (``generate_options.miner``; ``auto`` picks):
``identifiers`` (the pydoc default: ASCII identifier-like words, dunders kept),
``words`` (letters of any script, for space-separated languages such as German)
and ``units`` (frequent multi-character units of text written without spaces,
Chinese and Japanese: n-grams kept by the tokens they actually save, `mine_units`).

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

import hashlib
import json
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
# Words of any alphabet (German "Paketverwaltung", "für"): a letter, then letters, digits or
# underscores, 2-40 characters. ASCII WORD_RE would cut "Größe" into "Gr" and "e".
LETTER_WORD_RE = re.compile(r"(?<!\w)[^\W\d_]\w{1,39}(?!\w)")
# Text written without spaces (Chinese, Japanese): maximal runs of non-ASCII, non-space
# characters. Units are mined inside runs; ASCII words between them are left alone.
UNIT_RUN_RE = re.compile(r"[^\x00-\x7f\s]+")
# Han, kana and CJK punctuation: what makes `auto` choose the units miner.
_CJK_RE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
MINERS = ("auto", "identifiers", "words", "units")
RANKS = ("count", "saved")
_SHARED_PARAGRAPH_CHARS = 60


def corpus_topics() -> dict[str, str]:
    """The corpus: topic name -> text, sorted by name (so splits are deterministic)."""
    from pydoc_data.topics import topics  # the stdlib module; imported lazily because it is ~0.5 MB

    return {k: topics[k] for k in sorted(topics)}


def corpus_info() -> dict[str, Any]:
    topics = corpus_topics()
    return {"corpus": "pydoc_data.topics", "python": sys.version.split()[0], "topics": len(topics),
            "chars": sum(len(t) for t in topics.values())}


# ----------------------------------------------------------------------------- a corpus on disk

CORPUS_MANIFEST = "manifest.json"
DOCUMENT_SEPARATOR = "\n\f\n"
"""Between two documents (chapters) of a split file: a form feed alone on a line, the plain-text page break."""


def write_corpus(texts: Mapping[str, Mapping[str, str]], directory: str | Path,
                 manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``{split: {document: text}}`` as ``DIR/<split>.txt`` plus ``DIR/manifest.json``.

    The manifest records, per split, the documents in file order, characters,
    UTF-8 bytes and the file's sha256, beside whatever ``manifest`` adds (source,
    licence, extraction): enough to check that a rebuilt corpus is the same text.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = dict(manifest or {})
    out["splits"] = {}
    for split in SPLITS:
        docs = dict(texts.get(split, {}))
        if any(DOCUMENT_SEPARATOR.strip("\n") in t for t in docs.values()):
            raise TokengraftError(f"a {split} document contains a form feed, the document separator")
        body = DOCUMENT_SEPARATOR.join(docs.values())
        data = (body + "\n").encode("utf-8") if body else b""
        (directory / f"{split}.txt").write_bytes(data)
        out["splits"][split] = {"documents": list(docs), "chars": len(body), "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest()}
    (directory / CORPUS_MANIFEST).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_corpus(directory: str | Path) -> dict[str, dict[str, str]]:
    """``{split: {document: text}}`` from a directory written by `write_corpus` (whole documents per split)."""
    directory = Path(directory)
    manifest_path = directory / CORPUS_MANIFEST
    if not manifest_path.is_file():
        raise TokengraftError(f"data.generate_options.corpus: {directory} has no {CORPUS_MANIFEST}; build the corpus "
                              "first (python benchmarks/lexicon_corpus.py) or drop the option for the built-in corpus")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        names = manifest.get("splits", {}).get(split, {}).get("documents", [])
        path = directory / f"{split}.txt"
        if not path.is_file():
            raise TokengraftError(f"corpus {directory}: {path.name} is missing; rebuild it with benchmarks/lexicon_corpus.py")
        body = path.read_text(encoding="utf-8").removesuffix("\n")
        docs = body.split(DOCUMENT_SEPARATOR) if body else []
        if len(docs) != len(names):
            raise TokengraftError(f"corpus {directory}: {path.name} holds {len(docs)} documents but the manifest lists "
                                  f"{len(names)}; rebuild it with benchmarks/lexicon_corpus.py")
        out[split] = dict(zip(names, docs))
    if not out["train"]:
        raise TokengraftError(f"corpus {directory}: the train split is empty")
    return out


def corpus_manifest(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / CORPUS_MANIFEST).read_text(encoding="utf-8"))


def cjk_share(texts: Iterable[str]) -> float:
    """Share of Han / kana / CJK punctuation among the non-space characters."""
    cjk = other = 0
    for text in texts:
        n = len(_CJK_RE.findall(text))
        cjk += n
        other += sum(1 for c in text if not c.isspace()) - n
    return cjk / max(1, cjk + other)


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
                topics: Mapping[str, str] | None = None,
                names: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, str]]:
    """Per split: topic -> text, with held-out paragraphs that also occur in training removed.

    ``names`` fixes which topics go to which split (a translated corpus keeps the
    chapters chosen on one language); by default `split_topics` chooses.
    """
    topics = corpus_topics() if topics is None else topics
    names = split_topics(topics, seed, fractions) if names is None else {s: list(names.get(s, [])) for s in SPLITS}
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
                    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                    corpus: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{"text", "topic", "split"}`` rows for plain causal-LM training and held-out evaluation.

    ``corpus``: a directory from `write_corpus`, already split by document (``seed`` and
    ``fractions`` then do not apply); None: the built-in pydoc corpus, split here.
    """
    texts = read_corpus(corpus) if corpus is not None else split_texts(seed, fractions)
    return {split: [{"text": chunk, "topic": topic, "split": split}
                    for topic, text in texts[split].items() for chunk in chunk_text(text, chunk_chars)]
            for split in SPLITS}


REPLAY_OPTIONS = ("replay_corpus", "replay_share", "replay_chunk_chars")


def replay_rows(corpus: str | Path, share: float, chunk_chars: int, n_train: int, seed: int) -> list[dict[str, Any]]:
    """Training rows from the TRAIN split of another corpus, mixed in so they are ``share`` of all training rows.

    Why: a LoRA trained on the new language alone also changes the model's other languages
    (the English control loses ~10 % bits per byte with it, docs/lexicon_languages.md). Rows of a
    language the model already writes keep those weights anchored. They are training rows only:
    the lexicon is mined from the main corpus, and every held-out split stays the main corpus's.
    Topics are prefixed ``replay:`` so they never collide with the main corpus's documents.
    """
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        raise TokengraftError(f"data.generate_options.replay_share must be a number between 0 and 1 (the share of "
                              f"training rows taken from replay_corpus), got {share!r}")
    if not isinstance(chunk_chars, int) or isinstance(chunk_chars, bool) or chunk_chars < 1:
        raise TokengraftError(f"data.generate_options.replay_chunk_chars must be a positive whole number of "
                              f"characters, got {chunk_chars!r}")
    texts = read_corpus(corpus)["train"]
    chunks = [{"text": chunk, "topic": f"replay:{topic}", "split": "train"}
              for topic, text in texts.items() for chunk in chunk_text(text, chunk_chars)]
    wanted = round(n_train * share / (1 - share))
    if wanted > len(chunks):
        most = len(chunks) / (n_train + len(chunks))
        raise TokengraftError(f"data.generate_options.replay_share {share} needs {wanted} chunks of replay_corpus "
                              f"{corpus}, whose train split has {len(chunks)} of {chunk_chars} characters; lower "
                              f"replay_share to at most {most:.2f} or replay_chunk_chars")
    return random.Random(seed).sample(chunks, wanted)


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


def word_counts(texts: Iterable[str], after_space: bool = False, pattern: re.Pattern[str] = WORD_RE) -> Counter[str]:
    """Counts of ``pattern`` words (default ``WORD_RE``; case kept: "Python" and "python" are different tokens).

    ``after_space`` counts only occurrences that follow a space: what a " word" token
    (``tokens.word_start``) can match ("object.__dict__" holds no " __dict__").
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(m.group() for m in pattern.finditer(text)
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
    return piece_counts(tokenizer, [word])[word]


def piece_counts(tokenizer: Any, items: Sequence[str], after_space: bool = True) -> dict[str, int]:
    """`piece_count` for many strings in one batched tokenizer call (tens of thousands of candidates).

    ``after_space=False`` costs a unit of text written without spaces as it is (no leading space).
    """
    if not items:
        return {}
    encoded = tokenizer([(" " + w if after_space else w) for w in items], add_special_tokens=False)["input_ids"]
    blank: dict[int, bool] = {}
    out: dict[str, int] = {}
    for word, ids in zip(items, encoded):
        if after_space and ids:
            if ids[0] not in blank:
                blank[ids[0]] = tokenizer.decode(ids[:1]).strip() == ""
            if blank[ids[0]]:
                ids = ids[1:]
        out[word] = len(ids)
    return out


def resolve_miner(miner: str, texts: Sequence[str], corpus: bool) -> str:
    """``auto``: identifiers for the built-in corpus; for another corpus, units when its text is mostly
    CJK (written without spaces), words otherwise."""
    if miner not in MINERS:
        raise TokengraftError(f"data.generate_options.miner is {miner!r}; use one of {', '.join(MINERS)}")
    if miner != "auto":
        return miner
    if not corpus:
        return "identifiers"
    return "units" if cjk_share(texts) > 0.3 else "words"


def mine_lexicon(texts: Iterable[str], tokenizer: Any, min_pieces: int = 3, min_count: int = 5,
                 max_words: int = 1000, after_space: bool = False, miner: str = "identifiers",
                 rank: str = "count", max_unit_chars: int = 8) -> list[str]:
    """Words of ``texts`` that occur >= ``min_count`` times (after a space, with ``after_space``)
    and cost >= ``min_pieces`` tokens.

    Pass only the TRAIN texts: a lexicon mined from held-out text would leak it.
    ``miner``: ``identifiers`` (``WORD_RE``), ``words`` (``LETTER_WORD_RE``, any alphabet) or
    ``units`` (`mine_units`, for text without spaces; ``after_space`` does not apply).
    ``rank``: ``count`` orders by count (descending), then alphabetically; ``saved`` by the
    tokens the word would save, count x (pieces - 1), which is what a fixed budget of
    new rows should buy. At most ``max_words``.
    """
    if min_pieces < 2:
        raise TokengraftError(f"min_pieces must be >= 2 (a 1-piece word is already a token), got {min_pieces}")
    if rank not in RANKS:
        raise TokengraftError(f"data.generate_options.rank is {rank!r}; use one of {', '.join(RANKS)}")
    if miner == "units":
        return mine_units(texts, tokenizer, min_count=min_count, max_units=max_words, min_pieces=min_pieces,
                          max_chars=max_unit_chars)
    if miner not in ("identifiers", "words"):
        raise TokengraftError(f"miner must be identifiers, words or units here, got {miner!r}")
    counts = word_counts(texts, after_space, WORD_RE if miner == "identifiers" else LETTER_WORD_RE)
    frequent = sorted(w for w, c in counts.items() if c >= min_count)
    if rank == "count":  # the historical order: a word's cost is checked only as far as the list goes
        ranked = sorted(frequent, key=lambda w: (-counts[w], w))
        out: list[str] = []
        for word in ranked:
            if len(out) >= max_words:
                break
            if piece_count(tokenizer, word) >= min_pieces:
                out.append(word)
        return out
    cost = piece_counts(tokenizer, frequent)
    ranked = sorted((w for w in frequent if cost[w] >= min_pieces), key=lambda w: (-counts[w] * (cost[w] - 1), w))
    return ranked[:max_words]


def segment_counts(runs: Iterable[str], units: set[str], max_chars: int) -> Counter[str]:
    """How often each unit is used when ``runs`` are cut leftmost-longest by ``units``.

    That is how a Hugging Face tokenizer matches added tokens (an Aho-Corasick
    automaton, leftmost-longest): at each position the longest added unit that
    starts there wins, and text no unit covers goes to the ordinary tokenizer.
    """
    used: Counter[str] = Counter()
    for run in runs:
        i, n = 0, len(run)
        while i < n:
            for size in range(min(max_chars, n - i), 0, -1):
                piece = run[i:i + size]
                if piece in units:
                    used[piece] += 1
                    i += size
                    break
            else:
                i += 1
    return used


def mine_units(texts: Iterable[str], tokenizer: Any, min_count: int = 2, max_units: int = 1000,
               min_pieces: int = 2, max_chars: int = 8, rounds: int = 3) -> list[str]:
    """Frequent units of text written without spaces (Chinese, Japanese) that shorten it the most.

    Candidates are the 1..``max_chars``-character n-grams of the non-ASCII runs
    (`UNIT_RUN_RE`) that occur >= ``min_count`` times and cost >= ``min_pieces``
    tokens. Counting n-grams alone overrates overlapping ones ("操作系", "作系统" and
    "操作系统" all count the same text), so the choice is made on what the units
    save TOGETHER: starting from the ``3 x max_units`` best by count x (pieces - 1),
    each round cuts the training runs leftmost-longest with the current set
    (`segment_counts`, what the tokenizer will do), credits each unit with
    uses x (pieces - 1), and keeps the ``max_units`` that save most (a unit used
    fewer than ``min_count`` times is dropped). Ordered by tokens saved.
    """
    if max_chars < 1:
        raise TokengraftError(f"max_unit_chars must be >= 1, got {max_chars}")
    runs = [r for text in texts for r in UNIT_RUN_RE.findall(text)]
    grams: Counter[str] = Counter()
    for run in runs:
        n = len(run)
        for size in range(1, max_chars + 1):
            grams.update(run[i:i + size] for i in range(n - size + 1))
    frequent = sorted(g for g, c in grams.items() if c >= min_count)
    cost = piece_counts(tokenizer, frequent, after_space=False)
    pool = sorted((g for g in frequent if cost[g] >= min_pieces), key=lambda g: (-grams[g] * (cost[g] - 1), g))
    chosen = pool[:3 * max_units]
    for _ in range(rounds):
        used = segment_counts(runs, set(chosen), max_chars)
        saved = {g: used[g] * (cost[g] - 1) for g in chosen}
        chosen = sorted((g for g in chosen if used[g] >= min_count and saved[g] > 0),
                        key=lambda g: (-saved[g], g))[:max_units]
    return chosen


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

# generate_options that go to the miner, not the splits
MINING_OPTIONS = ("min_pieces", "min_count", "max_words", "rank", "max_unit_chars")


def _write_mined(words: list[str], path: Path) -> Path:
    return write_lexicon(words, path, header="mined from the training split")


def generate(seed: int, options: Mapping[str, Any], tokenizer: Any = None, word_start: bool = False) -> Generated:
    """The registry's generator: text splits, then the lexicon mined from the training split.

    ``word_start`` (``tokens.word_start``) counts only words after a space, which is all a
    " word" token can match.
    """
    options = dict(options)
    mine = {k: options.pop(k) for k in MINING_OPTIONS if k in options}
    miner = options.pop("miner", "auto")
    replay = {k: options.pop(k) for k in REPLAY_OPTIONS if k in options}
    unknown = sorted(set(options) - {"chunk_chars", "fractions", "corpus"})
    if unknown:
        raise TokengraftError(f"data.generate_options has {unknown[0]!r}, which the lexicon task does not know; use "
                              f"{', '.join(MINING_OPTIONS + REPLAY_OPTIONS + ('miner', 'corpus', 'chunk_chars', 'fractions'))}")
    if replay and "replay_corpus" not in replay:
        raise TokengraftError(f"data.generate_options.{sorted(replay)[0]} needs replay_corpus: DIR (a corpus written "
                              "by benchmarks/lexicon_corpus.py whose train split is mixed into training)")
    splits = generate_splits(seed=seed, **options)
    train = [r["text"] for r in splits["train"]]  # mined below: the replay rows added after this are not
    if replay:
        chunk_chars = replay.get("replay_chunk_chars", options.get("chunk_chars", 1000))
        added = replay_rows(replay["replay_corpus"], replay.get("replay_share", 0.2), chunk_chars,
                            len(splits["train"]), seed)
        splits["train"] = splits["train"] + added
    miner = resolve_miner(miner, train, corpus=options.get("corpus") is not None)
    if miner == "units" and word_start:
        raise TokengraftError("the units miner finds text written without spaces, but tokens.word_start puts a space "
                              "before every token (which that text never has); set tokens.word_start: false")
    if miner != "identifiers":
        mine.setdefault("rank", "saved")
    words = mine_lexicon(train, tokenizer, after_space=word_start, miner=miner, **mine)
    if not words:
        raise TokengraftError("the lexicon miner found no word; lower data.generate_options.min_count or min_pieces")
    return Generated(splits, words, write_tokens=_write_mined)


register_task(Task(
    "lexicon", summary="vocabulary expansion: frequent many-piece words of a corpus become single tokens",
    generator=generate, mines_tokens=True, metric_keys=("bits_per_byte", "tokens_per_byte"),
))
