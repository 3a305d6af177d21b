"""The most a word lexicon can cut tokens per byte on the held-out pydoc text, before any training.

    python benchmarks/lexicon_bound.py [--out benchmarks/results/lexicon_bound]

Tokenizer only (no model). For lexicons mined as `tokengraft demo lexicon` mines them
(words the tokenizer splits into >= `min_pieces` pieces, occurring >= `min_count`
times after a space) -- from the training split, and, as a ceiling that leaks the
held-out text, from the whole corpus -- it counts what the test split's tokens would
be if EVERY occurrence of a lexicon word after a space became one token (`" word"`,
`tokens.word_start`): the upper bound of the tokens-per-byte reduction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokengraft.models import load_tokenizer
from tokengraft.tasks import lexicon_data as L


def bound(tokenizer, lexicon_texts: list[str], test: list[str], min_pieces: int, min_count: int,
          base_tokens: int) -> dict:
    counts = L.word_counts(lexicon_texts, after_space=True)
    words = {w for w, c in counts.items() if c >= min_count and L.piece_count(tokenizer, w) >= min_pieces}
    saved = sum(L.piece_count(tokenizer, m.group()) - 1 for text in test for m in L.WORD_RE.finditer(text)
                if m.group() in words and m.start() > 0 and text[m.start() - 1] == " ")
    return {"min_pieces": min_pieces, "min_count": min_count, "words": len(words), "reduction_bound": saved / base_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lexicon_bound"))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    splits = L.generate_splits(seed=args.seed)
    texts = {s: [r["text"] for r in rows] for s, rows in splits.items()}
    test = texts["test"]
    base_tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in test)
    nbytes = sum(len(t.encode("utf-8")) for t in test)
    rows = []
    for source, lexicon_texts in (("train split", texts["train"]),
                                  ("whole corpus (leaks test)", texts["train"] + texts["validation"] + test)):
        for min_pieces in (2, 3):
            for min_count in (1, 2, 5):
                rows.append({"lexicon_from": source, **bound(tokenizer, lexicon_texts, test, min_pieces, min_count,
                                                              base_tokens)})
    result = {"corpus": L.corpus_info(), "test_bytes": nbytes, "test_tokens": base_tokens,
              "base_tokens_per_byte": base_tokens / nbytes, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = ["# Upper bound of the tokens-per-byte cut a word lexicon can give (pydoc test split, SmolLM2 tokenizer)",
             "", f"Test split: {nbytes:,} bytes, {base_tokens:,} tokens ({base_tokens / nbytes:.4f} tokens/byte), "
             f"corpus {result['corpus']}.", "",
             "| lexicon mined from | min pieces | min count | words | reduction bound |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['lexicon_from']} | {r['min_pieces']} | {r['min_count']} | {r['words']} | "
              f"{100 * r['reduction_bound']:.2f} % |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
