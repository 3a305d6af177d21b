"""The ja-plus corpus builder (benchmarks/lexicon_corpus.py): more training text, the held-out text unchanged.

Inline HTML, copyright files and tiny manuals under tmp_path; no apt, no dpkg, no corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokengraft.errors import TokengraftError
from tokengraft.tasks import lexicon_data as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import lexicon_corpus as C  # noqa: E402

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 1998-2002 Josip Rodin
           2005-2015 Osamu Aoki
License: GPL-2+

Files: documentation/debian-edu-bullseye/debian-edu-bullseye-manual.xml
Copyright: 2007-2022 Holger Levsen
License: GPL-2+

Files: documentation/debian-edu-bookworm/debian-edu-bookworm-manual.xml other.xml
Copyright: 2007-2023 Holger Levsen
  2023 Guido Berhörster
License: GPL-3+

License: GPL-2+
 This manual is free software; version 2 or later.
 .
 The full text is in /usr/share/common-licenses/GPL-2.

License: GPL-3+
 This package is free software; version 3 or later.
 .
 More text.
"""

FREE_FORM = """This is the Debian FAQ package.

The copyright and license statement for the Debian FAQ:

  Copyright (C) 1996-2003  Software in the Public Interest

  Permission is granted to make and distribute verbatim copies.

  Permission is granted to copy and distribute translations.
"""


def page(body: str) -> str:
    return f"<html><head><title>t</title></head><body>{body}</body></html>"


def test_copyright_terms_pick_the_stanza_that_covers_the_text():
    whole = C.copyright_terms(DEP5)
    assert whole["license"] == "GPL-2+"
    assert whole["copyright"] == "1998-2002 Josip Rodin; 2005-2015 Osamu Aoki"
    assert whole["license_statement"] == "This manual is free software; version 2 or later."
    edu = C.copyright_terms(DEP5, ("documentation/debian-edu-bookworm/debian-edu-bookworm-manual.xml",))
    assert edu == {"license": "GPL-3+", "copyright": "2007-2023 Holger Levsen; 2023 Guido Berhörster",
                   "license_statement": "This package is free software; version 3 or later."}
    with pytest.raises(TokengraftError, match="no Files: stanza"):
        C.copyright_terms(DEP5, ("nothing/*",))
    faq = C.copyright_terms(FREE_FORM, label="verbatim copies")
    assert faq["license"] == "verbatim copies" and faq["copyright"] == "1996-2003  Software in the Public Interest"
    assert faq["license_statement"] == ("Permission is granted to make and distribute verbatim copies. "
                                        "Permission is granted to copy and distribute translations.")


def test_newest_release_manual_is_chosen_by_code_name_not_by_name_order():
    names = ["debian-edu-bookworm-manual.html", "debian-edu-bullseye-manual.html", "debian-edu-buster-manual.html"]
    assert C.newest_release(names) == "debian-edu-bookworm-manual.html"  # alphabetically bullseye would be last
    assert C.newest_release(["manual.html"]) is None


def test_extractor_drops_sphinx_and_docbook_navigation():
    html = page('<div class="related"><h3>ナビゲーション</h3><ul><li>索引</li></ul></div>'
                '<div class="body"><h1>4. ソースパッケージ<a class="headerlink" href="#s">¶</a></h1>'
                '<p>ソース\nパッケージは<code class="docutils literal"><span class="pre">.dsc</span></code>を持つ。</p>'
                '<div class="highlight"><pre>$ dpkg-source  -x\n  foo.dsc</pre></div>'
                '<div class="longdesc-link">[<a href="ld-1.html">D</a>]</div></div>'
                '<div class="sphinxsidebar"><p>クイック検索</p></div><div class="footer">Created using Sphinx.</div>')
    parser = C._TextExtractor()
    parser.feed(html)
    parser.close()
    assert parser.paragraphs == ["4. ソースパッケージ", "ソースパッケージは.dscを持つ。", "$ dpkg-source  -x\n  foo.dsc"]


def test_clean_extra_removes_held_out_paragraphs_and_repeats():
    docs = {"a/1": "テスト段落です。\n\n新しい段落。\n\n繰り返し。", "a/2": "繰り返し。\n\n別の段落。", "b/1": "テスト段落です。"}
    cleaned, removed = C.clean_extra(docs, held_out=["前の段落。\n\nテスト段落です。"])
    assert cleaned == {"a/1": "新しい段落。\n\n繰り返し。", "a/2": "別の段落。"}  # b/1 held nothing else
    assert removed == {"held_out": 2, "duplicate": 1, "kept": 3}


def _manual(tmp_path: Path, package: str, files: dict[str, str]) -> C.ExtraSource:
    directory = tmp_path / "html" / package
    directory.mkdir(parents=True)
    for name, body in files.items():
        (directory / name).write_text(page(body), encoding="utf-8")
    (tmp_path / "doc" / package).mkdir(parents=True)
    (tmp_path / "doc" / package / "copyright").write_text(DEP5, encoding="utf-8")
    return C.ExtraSource(package, str(directory), "*.html", (("index.html", "table of contents"),))


def test_ja_plus_adds_training_text_and_keeps_the_held_out_files_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "DOC_DIR", tmp_path / "doc")
    monkeypatch.setattr(C, "package_version", lambda name: "1.0")
    manual = _manual(tmp_path, "guide-ja", {
        "ch1.html": "<p>パッケージを作成します。</p><p>試験の章の段落です。</p>",
        "ch2.html": "<p>パッケージを作成します。</p><p>依存関係を確認します。</p>",
        "ch3.html": "<p>This chapter was never translated.</p>",
        "index.html": "<p>目次</p>"})
    monkeypatch.setattr(C, "EXTRA_SOURCES", (manual,))
    ja = {"train": {"ch01": "訓練の章です。"}, "validation": {"ch11": "検証の章です。"},
          "test": {"ch10": "試験の章の段落です。\n\n二つ目の段落。"}}
    reference = L.write_corpus(ja, tmp_path / "ja")
    manifest = C.build_ja_plus(ja, {"split": "by chapter", "language": "ja"}, tmp_path / "ja-plus", [reference])
    for split in ("validation", "test"):
        plus, base = (tmp_path / name / f"{split}.txt" for name in ("ja-plus", "ja"))
        assert plus.read_bytes() == base.read_bytes()
    train = L.read_corpus(tmp_path / "ja-plus")["train"]
    assert train == {"ch01": "訓練の章です。", "guide-ja/ch1": "パッケージを作成します。", "guide-ja/ch2": "依存関係を確認します。"}
    extra = manifest["extra_train"]
    assert extra["paragraphs"] == {"held_out": 1, "duplicate": 1, "kept": 2}
    source = extra["sources"][0]
    assert source["license"] == "GPL-2+" and source["documents"] == ["guide-ja/ch1", "guide-ja/ch2"]
    assert source["skipped"]["table of contents"] == ["index.html"]
    assert [k for k in source["skipped"] if k.startswith("untranslated")]  # ch3: English only
    assert manifest["base_train_bytes"] == reference["splits"]["train"]["bytes"]
    # A held-out text that differs from the one the ja runs were scored on is refused before anything is written.
    changed = {**ja, "test": {"ch10": "違う試験の章。"}}
    with pytest.raises(TokengraftError, match="test text would differ"):
        C.build_ja_plus(changed, {"split": "by chapter"}, tmp_path / "other", [reference])
    assert not (tmp_path / "other").exists()
