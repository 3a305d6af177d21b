"""Plain text of Debian's translated "Debian Reference" for the new-language lexicon benchmark.

    apt-get install -y debian-reference-en debian-reference-de debian-reference-ja debian-reference-zh-cn
    python benchmarks/lexicon_corpus.py [--source /usr/share/debian-reference] [--out data/debian-reference]
    # ja-plus: Japanese with ~3x the training text, the same held-out files (see the end of this docstring)
    apt-get install -y developers-reference-ja maint-guide-ja debian-faq-ja debian-policy-ja aptitude-doc-ja \
        debian-edu-doc-ja
    python benchmarks/lexicon_corpus.py --languages ja-plus

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

``ja-plus`` (``--languages ja-plus``; not built by default): the ``ja`` corpus whose
TRAIN split also holds six other Japanese Debian manuals (`EXTRA_SOURCES`: the
Developer's Reference, the New Maintainers' Guide, the Debian FAQ, the Policy Manual,
the aptitude manual, the Debian Edu manual), because 0.5 MB of training text holds too
few repeated units for a 10k-40k lexicon. Its validation and test files are ``ja``'s,
byte for byte (sha256 checked against the committed ``ja`` manifest and
``OUT/ja/manifest.json`` before anything is written). The manuals' HTML is read with
the same extractor (Sphinx's ``_sources/*.rst.txt`` are the untranslated English
originals, so the HTML it is); files in sorted order; a file with a CJK share below
`MIN_CJK_SHARE` is left out as untranslated; of the Debian Edu manuals (one per
release, near-duplicates) only the newest release's; then every paragraph that occurs in
the held-out text, and every repeat of a paragraph already kept, is removed
(`clean_extra`). The manifest lists, per package, its version, the files kept and left
out (and why), sizes, and the licence and copyright holders from its
``/usr/share/doc/<package>/copyright`` (`copyright_terms`).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import html.parser
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tokengraft.errors import TokengraftError
from tokengraft.tasks import lexicon_data as L

LANGUAGES = ("en", "de", "ja", "zh-cn")
CHAPTERS = ("pr01",) + tuple(f"ch{i:02d}" for i in range(1, 13)) + ("apa",)
COPYRIGHT = Path("/usr/share/doc/debian-reference-common/copyright")
SPLIT_SEED = 0  # which chapters are held out: one fixed choice, made on the English text

# Elements whose whole subtree is navigation, not text: DocBook's (navheader ... list-of-examples,
# longdesc-link: the "[D]" link to a screenshot's description) and Sphinx's (related: the navigation bars,
# sphinxsidebar, footer, headerlink: the pilcrow after every heading). The Debian Reference has none of
# the Sphinx ones, so its text (and the committed sha256 sums) does not change with them.
SKIP_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples",
                "longdesc-link", "related", "sphinxsidebar", "footer", "headerlink"}
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


def build(source: Path, out: Path, languages: tuple[str, ...] = LANGUAGES,
          expected: dict[str, dict] | None = None) -> dict[str, dict]:
    """Extract, split by the English chapters, write every language; returns the manifests.

    ``ja-plus`` among ``languages`` also writes the Japanese corpus with more training text
    (`build_ja_plus`); ``expected`` (earlier manifests by language) is what its held-out files must match.
    """
    english = read_language(source, "en")
    names = L.split_topics(english, seed=SPLIT_SEED)
    terms = licence()
    manifests, meta = {}, {}
    for lang in dict.fromkeys("ja" if lang == EXTRA_NAME else lang for lang in languages):
        chapters = english if lang == "en" else read_language(source, lang)
        texts = L.split_texts(topics=chapters, names=names)
        meta[lang] = {
            "source": f"Debian Reference ({lang}), /usr/share/debian-reference/<chapter>.{lang}.html",
            "package": f"debian-reference-{lang}", "package_version": package_version(f"debian-reference-{lang}"),
            "language": lang, "split": f"by chapter; chapters chosen on the English text (seed {SPLIT_SEED}); held-out "
                                       "paragraphs that also occur in training removed",
            "extraction": "benchmarks/lexicon_corpus.py", "cjk_share": round(L.cjk_share(chapters.values()), 4),
            **terms,
        }
        if lang in languages:
            manifests[lang] = L.write_corpus(texts, out / lang, meta[lang])
        if EXTRA_NAME in languages and lang == "ja":
            # The held-out files must be the ones every ja run was scored on: the committed manifest's and
            # the ja corpus on disk (read before this call rewrote it, if it did: see main).
            checks = [m for m in ((expected or {}).get("ja"), (expected or {}).get("ja:disk")) if m]
            manifests[EXTRA_NAME] = build_ja_plus(texts, meta["ja"], out / EXTRA_NAME, checks)
    return manifests


# ----------------------------------------------------------------------------- ja-plus: more Japanese training text

EXTRA_NAME = "ja-plus"
DOC_DIR = Path("/usr/share/doc")  # where each package's copyright file is
MIN_CJK_SHARE = 0.1
"""A document (one HTML file) with less CJK than this among its characters is left out: an untranslated
chapter (debian-policy-ja ships most chapters in English; the Debian Reference's Japanese is 0.43)."""
RELEASES = ("etch", "lenny", "squeeze", "wheezy", "jessie", "stretch", "buster", "bullseye", "bookworm", "trixie",
            "forky", "duke")
"""Debian release code names, oldest first: which debian-edu manual is the newest."""


@dataclass(frozen=True)
class ExtraSource:
    """One Japanese Debian manual read as extra training text: which HTML files, and whose licence covers them.

    ``copyright_files``: the DEP-5 ``Files:`` entries whose stanzas cover the manual's text (``{release}``
    is filled in for debian-edu); ``licence_label`` names the terms of a copyright file with no
    ``License:`` field (debian-faq quotes a permission notice).
    """

    package: str
    directory: str
    pattern: str
    exclude: tuple[tuple[str, str], ...] = ()  # (file-name pattern, why it is not the manual's text)
    copyright_files: tuple[str, ...] = ("*",)
    licence_label: str = ""
    newest_release_only: bool = False


_SPHINX_PAGES = (("index.html", "table of contents"), ("genindex.html", "index page"), ("search.html", "search page"))
EXTRA_SOURCES = tuple(sorted((
    ExtraSource("aptitude-doc-ja", "/usr/share/doc/aptitude/html/ja", "*.html",
                (("ld-*.html", "long descriptions of screenshots (English terminal dumps)"),)),
    ExtraSource("debian-edu-doc-ja", "/usr/share/doc/debian-edu-doc-ja", "debian-edu-*-manual.html",
                copyright_files=("documentation/debian-edu-{release}/debian-edu-{release}-manual.xml",
                                 "documentation/debian-edu-{release}/debian-edu-{release}-manual.*.po"),
                newest_release_only=True),
    ExtraSource("debian-faq-ja", "/usr/share/doc/debian/FAQ/ja", "*.ja.html",
                licence_label="verbatim and modified copies and translations permitted (SPI's notice)"),
    ExtraSource("debian-policy-ja", "/usr/share/doc/debian-policy/ja/policy.html", "*.html", _SPHINX_PAGES),
    ExtraSource("developers-reference-ja", "/usr/share/developers-reference/ja", "*.html",
                _SPHINX_PAGES + (("developers-reference.html", "every chapter again on one page"),)),
    ExtraSource("maint-guide-ja", "/usr/share/doc/maint-guide-ja/html", "*.ja.html"),
), key=lambda s: s.package))
"""Installed by ``apt-get install -y developers-reference-ja maint-guide-ja debian-faq-ja debian-policy-ja
aptitude-doc-ja debian-edu-doc-ja``. HTML everywhere: the Sphinx manuals' ``_sources/*.rst.txt`` are the
ENGLISH originals (the translation is applied from .po files when the HTML is built)."""


def newest_release(names: list[str]) -> str | None:
    """The file whose name holds the newest Debian release code name (``debian-edu-bookworm-manual.html``)."""
    known = [(RELEASES.index(r), n) for n in names for r in RELEASES if f"-{r}-" in n]
    return max(known)[1] if known else None


def copyright_terms(text: str, files: tuple[str, ...] = ("*",), label: str = "") -> dict[str, str]:
    """Licence and copyright holders from a ``debian/copyright`` file, as the package states them.

    Machine-readable (DEP-5): the stanzas whose ``Files:`` lists one of ``files`` give the licence
    name(s) and holders; a licence's statement is the first paragraph of its text (inline, or in a
    standalone ``License:`` stanza). Free-form (debian-faq): the holder is the first ``Copyright``
    line and the statement the indented notice that follows it; ``label`` names the licence.
    """
    if not text.startswith("Format:"):
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if line.strip().lower().startswith("copyright")), None)
        if start is None:
            raise TokengraftError("the copyright file has neither DEP-5 stanzas nor a Copyright line")
        notice = [line.strip() for line in lines[start + 1:] if line.startswith(" ")]
        holder = re.sub(r"^copyright\s*(\(c\)|©)?\s*", "", lines[start].strip(), flags=re.I)
        return {"license": label or "see license_statement", "copyright": holder,
                "license_statement": " ".join(line for line in notice if line)}
    stanzas = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, list[str]] = {}
        key = None
        for line in block.splitlines():
            if line[:1].isspace() and key:
                fields[key].append(line.strip())
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = [value.strip()] if value.strip() else []
        stanzas.append(fields)
    chosen = [f for f in stanzas if "Files" in f and set(" ".join(f["Files"]).split()) & set(files)]
    if not chosen:
        raise TokengraftError(f"the copyright file has no Files: stanza for {files[0]!r}")
    licences = list(dict.fromkeys(f["License"][0] for f in chosen))
    holders = list(dict.fromkeys(h for f in chosen for h in f.get("Copyright", [])))

    def statement(name: str) -> str:
        for f in chosen + [f for f in stanzas if "Files" not in f]:
            if f.get("License", [""])[0] == name and len(f["License"]) > 1:
                body = f["License"][1:]
                return " ".join(body[:body.index(".")] if "." in body else body)
        return ""

    return {"license": " / ".join(licences), "copyright": "; ".join(holders),
            "license_statement": " | ".join(s for s in map(statement, licences) if s)}


def read_extra(source: ExtraSource) -> tuple[dict[str, str], dict[str, object]]:
    """``{document: text}`` of one manual (documents ``<package>/<file stem>``, sorted) and what was read/left out."""
    version = package_version(source.package)
    directory = Path(source.directory)
    files = sorted(directory.glob(source.pattern)) if directory.is_dir() else []
    if not files or version is None:
        raise TokengraftError(f"{directory}/{source.pattern} not found; apt-get install -y {source.package}")
    skipped: dict[str, list[str]] = {}  # why -> file names
    kept = []
    for f in files:
        why = next((why for pattern, why in source.exclude if fnmatch.fnmatch(f.name, pattern)), None)
        if why is None:
            kept.append(f)
        else:
            skipped.setdefault(why, []).append(f.name)
    release = None
    if source.newest_release_only:
        newest = newest_release([f.name for f in kept])
        release = next(r for r in RELEASES if newest and f"-{r}-" in newest)
        newest_paras = set(L.paragraphs(chapter_text(directory / newest)))
        for f in kept:
            if f.name != newest:
                paras = L.paragraphs(chapter_text(f))
                shared = sum(p in newest_paras for p in paras) / max(1, len(paras))
                skipped.setdefault(f"an older release's manual, a near-duplicate: {100 * shared:.0f} % of its "
                                   f"paragraphs are also in {newest}", []).append(f.name)
        kept = [directory / newest]
    docs: dict[str, str] = {}
    for f in kept:
        text = chapter_text(f)
        share = L.cjk_share([text])
        if share < MIN_CJK_SHARE:
            skipped.setdefault(f"untranslated: CJK share < {MIN_CJK_SHARE}", []).append(f"{f.name} ({share:.2f})")
        elif text.strip():
            docs[f"{source.package}/{f.name.split('.')[0]}"] = text
    copyright_file = DOC_DIR / source.package / "copyright"
    files_entries = tuple(x.format(release=release) for x in source.copyright_files)
    info = {"package": source.package, "package_version": version, "files": f"{directory}/{source.pattern}",
            "skipped": skipped, **copyright_terms(copyright_file.read_text(encoding="utf-8"), files_entries,
                                                  source.licence_label),
            "copyright_file": str(copyright_file)}
    return docs, info


def clean_extra(docs: dict[str, str], held_out: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """Extra training documents without any paragraph of the held-out text and without repeats.

    The same paragraph rule as `tasks.lexicon_data.split_texts` (blank-line paragraphs, compared
    exactly), turned around: there the held-out text gives way to the training text; here the held-out
    text must not change, so the extra text gives way. A paragraph already kept earlier (documents
    in order) is dropped too. Returns the documents still holding text, and the counts removed.
    """
    banned = {p for text in held_out for p in L.paragraphs(text)}
    seen: set[str] = set()
    out: dict[str, str] = {}
    removed = {"held_out": 0, "duplicate": 0, "kept": 0}
    for name, text in docs.items():
        kept = []
        for p in L.paragraphs(text):
            if p in banned:
                removed["held_out"] += 1
            elif p in seen:
                removed["duplicate"] += 1
            else:
                seen.add(p)
                kept.append(p)
        removed["kept"] += len(kept)
        if kept:
            out[name] = "\n\n".join(kept)
    return out, removed


def build_ja_plus(ja: dict[str, dict[str, str]], ja_meta: dict, out: Path, expected: list[dict]) -> dict:
    """The ``ja`` corpus with the other Japanese manuals added to its train split; held-out files unchanged.

    ``expected``: ``ja`` manifests whose validation/test sha256 the new files must equal (the
    held-out text of every ``ja`` run so far); a mismatch is an error, not a warning.
    """
    for split in ("validation", "test"):  # checked before anything is written
        body = L.DOCUMENT_SEPARATOR.join(ja[split].values())
        got = hashlib.sha256((body + "\n").encode("utf-8") if body else b"").hexdigest()
        for want in (m.get("splits", {}).get(split, {}).get("sha256") for m in expected):
            if want is not None and want != got:
                raise TokengraftError(f"the ja {split} text would differ from the ja corpus's (sha256 {got[:12]} != "
                                      f"{want[:12]}): check the debian-reference-ja version against the manifest")
    extra: dict[str, str] = {}
    sources = []
    for source in EXTRA_SOURCES:
        docs, info = read_extra(source)
        extra.update(docs)
        sources.append((info, list(docs)))
    held_out = [t for split in ("validation", "test") for t in ja[split].values()]
    cleaned, removed = clean_extra(extra, held_out)
    base_paras = {p for t in ja["train"].values() for p in L.paragraphs(t)}
    texts = {"train": {**ja["train"], **cleaned}, "validation": ja["validation"], "test": ja["test"]}
    listed = []
    for info, names in sources:
        kept = [n for n in names if n in cleaned]
        text = "\n\n".join(cleaned[n] for n in kept)
        listed.append({**info, "documents": kept, "chars": len(text), "bytes": len(text.encode("utf-8")),
                       "cjk_share": round(L.cjk_share([text]), 4)})
    base_bytes = len(L.DOCUMENT_SEPARATOR.join(ja["train"].values()).encode("utf-8")) + 1
    manifest = L.write_corpus(texts, out, {
        **ja_meta,
        "source": "Debian Reference (ja) train chapters + other Japanese Debian manuals (train only); validation "
                  "and test = the ja corpus's, byte for byte",
        "split": ja_meta["split"] + f"; {EXTRA_NAME}: extra manuals added to train only",
        "cjk_share": round(L.cjk_share(texts["train"].values()), 4),
        "base_corpus": "ja", "base_train_bytes": base_bytes,
        "held_out": f"validation.txt and test.txt are the ja corpus's (sha256 checked against {len(expected)} ja "
                    "manifest(s) before writing)",
        "extra_train": {
            "rule": f"documents (HTML files) with CJK share < {MIN_CJK_SHARE} left out (untranslated); paragraphs "
                    "of the validation/test text removed (exact blank-line paragraphs, as split_texts compares "
                    "them); repeats of a paragraph kept earlier removed",
            "paragraphs": removed,
            "paragraphs_also_in_base_train": sum(p in base_paras for t in cleaned.values() for p in L.paragraphs(t)),
            "sources": listed,
        },
    })
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/debian-reference"))
    parser.add_argument("--out", type=Path, default=Path("data/debian-reference"))
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES + (EXTRA_NAME,),
                        help=f"default: {' '.join(LANGUAGES)}; {EXTRA_NAME}: Japanese with more training text")
    parser.add_argument("--manifest-copy", type=Path, default=Path("benchmarks/results/lexicon_corpus_manifest.json"))
    args = parser.parse_args()
    # Manifests of languages not built now stay in the copy (and ja's is what ja-plus's held-out files must match).
    previous = json.loads(args.manifest_copy.read_text(encoding="utf-8")) if args.manifest_copy.is_file() else {}
    on_disk = args.out / "ja" / L.CORPUS_MANIFEST
    expected = {**previous, **({"ja:disk": L.corpus_manifest(args.out / "ja")} if on_disk.is_file() else {})}
    manifests = build(args.source, args.out, tuple(args.languages), expected=expected)
    args.manifest_copy.parent.mkdir(parents=True, exist_ok=True)
    merged = {**previous, **manifests}
    args.manifest_copy.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for lang, m in manifests.items():
        sizes = ", ".join(f"{s} {v['bytes']:,} B ({len(v['documents'])} docs)" for s, v in m["splits"].items())
        print(f"{lang}: {sizes} -> {args.out / lang}")
        if lang == EXTRA_NAME:
            extra = m["extra_train"]
            print(f"  train {m['base_train_bytes']:,} B (ja) -> {m['splits']['train']['bytes']:,} B; extra paragraphs "
                  f"kept {extra['paragraphs']['kept']:,}, removed: {extra['paragraphs']['held_out']} in the held-out "
                  f"text, {extra['paragraphs']['duplicate']:,} repeats")
            for src in extra["sources"]:
                print(f"  {src['package']} {src['package_version']}: {len(src['documents'])} docs, {src['bytes']:,} B, "
                      f"CJK {src['cjk_share']:.2f}, {src['license']}; left out: "
                      + ("; ".join(f"{len(v)} ({k})" for k, v in src["skipped"].items()) or "none"))


if __name__ == "__main__":
    main()
