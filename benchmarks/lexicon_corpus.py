"""Plain text of Debian's translated "Debian Reference" for the new-language lexicon benchmark.

    apt-get install -y debian-reference-en debian-reference-de debian-reference-ja debian-reference-zh-cn
    python benchmarks/lexicon_corpus.py [--source /usr/share/debian-reference] [--out data/debian-reference]

Why this text: the same sysadmin guide, written by people who are not us, translated
into many languages and shipped offline as Debian packages, so the same content can
be compared across languages (German written with spaces; Japanese and Chinese
without), and none of it is text the built-in tokenizer was fitted to.

What it does, per language (en, de, ja, zh-cn):
- reads the chapter files the packages install, ``/usr/share/debian-reference/
  {pr01,ch01..ch12,apa}.<lang>.html`` (one XHTML file per chapter: the preface,
  12 chapters, an appendix);
- extracts plain text with the standard library's HTML parser: the navigation
  header/footer and each chapter's table of contents are dropped; paragraphs,
  list items, titles, table rows and screen listings (``<pre>``, kept verbatim)
  become blank-line separated paragraphs; line wraps inside a paragraph become a
  space, except between two CJK characters, where they become nothing (Chinese
  and Japanese put no space between words: a wrap there is only the source's);
- splits by CHAPTER, never by line: the split of the English chapters (seeded,
  aiming at 80/10/10 % of the characters, chapters sharing a paragraph kept
  together: ``tasks.lexicon_data.split_topics``) is used for every language, so
  each language's test split is the same content; held-out paragraphs that also
  occur in that language's training chapters are removed
  (``tasks.lexicon_data.split_texts``);
- writes ``OUT/<lang>/{train,validation,test}.txt`` (chapters separated by a form
  feed alone on a line) and ``OUT/<lang>/manifest.json`` (chapters per split,
  characters, bytes, sha256 per file, package versions, licence), which is what
  the lexicon task reads with ``data.generate_options.corpus: OUT/<lang>``;
- copies the manifests to ``benchmarks/results/lexicon_corpus_manifest.json``.

The text itself is not committed (it is GPL-2+, this repository is Apache-2.0): the
packages and this script rebuild it, and the committed sha256 sums check that a
rebuild is the same text.

Licence (``/usr/share/doc/debian-reference-common/copyright``, quoted in the
manifest): "Copyright: 2007-2013 Osamu Aoki <osamu@debian.org> / License: GPL-2+ /
This document may used under the terms the GNU General Public License version 2 or
higher." Translators licensed their work under the same terms.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import re
import subprocess
from pathlib import Path

from tokengraft.errors import TokengraftError
from tokengraft.tasks import lexicon_data as L

LANGUAGES = ("en", "de", "ja", "zh-cn")
CHAPTERS = ("pr01",) + tuple(f"ch{i:02d}" for i in range(1, 13)) + ("apa",)
COPYRIGHT = Path("/usr/share/doc/debian-reference-common/copyright")
SPLIT_SEED = 0  # which chapters are held out: one fixed choice, made on the English text

# Elements whose whole subtree is navigation, not text.
SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures"}
SKIP_TAGS = {"head", "script", "style"}
# Elements that end a paragraph.
BLOCK_TAGS = {"p", "div", "pre", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "blockquote",
              "ul", "ol", "dl", "br", "hr", "body", "html"}
CJK = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CELL = "\x00"  # table-cell boundary while a row is read (not whitespace, so no wrap rule eats it)
_CJK_WRAP = re.compile(rf"(?<=[{CJK}])[ \t]*\n\s*(?=[{CJK}])")


def clean_inline(text: str) -> str:
    """A paragraph's source line wraps and indentation -> one line (no space between two CJK characters)."""
    text = _CJK_WRAP.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


class _TextExtractor(html.parser.HTMLParser):
    """Paragraphs of a DocBook XHTML chapter, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buffer: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, skipping this subtree)
        self._pre = 0

    @property
    def _skipping(self) -> bool:
        return any(skip for _, skip in self._stack)

    def _flush(self) -> None:
        raw = "".join(self._buffer)
        self._buffer = []
        text = raw.strip("\n") if self._pre else clean_inline(raw)
        text = re.sub(f" *{_CELL}[ {_CELL}]*", " ", text).strip(" ")
        if text.strip():
            self.paragraphs.append(text.rstrip())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        if tag in BLOCK_TAGS and not self._skipping:
            self._flush()
        if tag in ("td", "th") and not self._skipping and self._buffer:
            self._buffer.append(_CELL)  # cells stay apart even between two CJK characters
        if tag in ("br", "hr", "img", "meta", "link", "col", "area", "input"):
            return  # void elements: no end tag follows
        self._stack.append((tag, skip))
        if tag == "pre":
            self._pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCK_TAGS and not self._skipping:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("br", "hr", "img", "meta", "link", "col", "area", "input"):
            return
        # Pop to the matching start tag (the XHTML here is well formed; be lenient anyway).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                skipping_before = self._skipping
                if tag in BLOCK_TAGS and not skipping_before:
                    self._flush()
                if tag == "pre":
                    self._pre -= 1
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def chapter_text(path: Path) -> str:
    """Plain text of one chapter file: paragraphs separated by blank lines, exact duplicates kept."""
    parser = _TextExtractor()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return "\n\n".join(parser.paragraphs)


def read_language(source: Path, lang: str) -> dict[str, str]:
    missing = [c for c in CHAPTERS if not (source / f"{c}.{lang}.html").is_file()]
    if missing:
        raise TokengraftError(f"{source}/{missing[0]}.{lang}.html is missing; apt-get install -y debian-reference-{lang}")
    return {c: chapter_text(source / f"{c}.{lang}.html") for c in CHAPTERS}


def package_version(name: str) -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def licence() -> dict[str, str]:
    """The licence as the package states it: the first ``License:`` field of the copyright file and its statement."""
    if not COPYRIGHT.is_file():
        raise TokengraftError(f"{COPYRIGHT} is missing; apt-get install -y debian-reference-common")
    lines = COPYRIGHT.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("License:"))
    statement = []
    for line in lines[start + 1:]:
        if not line.startswith(" ") or line.strip() == ".":
            break
        statement.append(line.strip())
    holder = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Copyright:")), "")
    return {"license": lines[start].split(":", 1)[1].strip(), "copyright": holder,
            "license_statement": " ".join(statement), "copyright_file": str(COPYRIGHT)}


def build(source: Path, out: Path, languages: tuple[str, ...] = LANGUAGES) -> dict[str, dict]:
    """Extract, split by the English chapters, write every language; returns the manifests."""
    english = read_language(source, "en")
    names = L.split_topics(english, seed=SPLIT_SEED)
    terms = licence()
    manifests = {}
    for lang in languages:
        chapters = english if lang == "en" else read_language(source, lang)
        texts = L.split_texts(topics=chapters, names=names)
        manifests[lang] = L.write_corpus(texts, out / lang, {
            "source": f"Debian Reference ({lang}), /usr/share/debian-reference/<chapter>.{lang}.html",
            "package": f"debian-reference-{lang}", "package_version": package_version(f"debian-reference-{lang}"),
            "language": lang, "split": f"by chapter; chapters chosen on the English text (seed {SPLIT_SEED}); held-out "
                                       "paragraphs that also occur in training removed",
            "extraction": "benchmarks/lexicon_corpus.py", "cjk_share": round(L.cjk_share(chapters.values()), 4),
            **terms,
        })
    return manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/debian-reference"))
    parser.add_argument("--out", type=Path, default=Path("data/debian-reference"))
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES))
    parser.add_argument("--manifest-copy", type=Path, default=Path("benchmarks/results/lexicon_corpus_manifest.json"))
    args = parser.parse_args()
    manifests = build(args.source, args.out, tuple(args.languages))
    args.manifest_copy.parent.mkdir(parents=True, exist_ok=True)
    args.manifest_copy.write_text(json.dumps(manifests, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for lang, m in manifests.items():
        sizes = ", ".join(f"{s} {v['bytes']:,} B ({len(v['documents'])} ch.)" for s, v in m["splits"].items())
        print(f"{lang}: {sizes} -> {args.out / lang}")


if __name__ == "__main__":
    main()
