"""New-language lexicons: corpus files, the words / units miners, and the distilled output-row init.

Inline German and Chinese strings and a byte-level tokenizer with no merges (every UTF-8
byte a piece, like an English-centred vocabulary on CJK text); no apt, no download.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tokengraft.core.distill import fit_output_rows
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.core.vocab import register_tokens
from tokengraft.errors import TokengraftError
from tokengraft.tasks import get_task
from tokengraft.tasks import lexicon_data as L
from tiny import tiny_byte_tokenizer, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import lexicon_corpus  # noqa: E402  (the corpus script's HTML extraction, on inline HTML)

GERMAN = ("Die Paketverwaltung installiert Pakete. Die Paketverwaltung entfernt Pakete wieder. "
          "Mit der Paketverwaltung aktualisiert man das System. Größere Systeme brauchen eine Paketverwaltung.")
CHINESE = ("软件包管理系统安装软件包。软件包管理系统删除软件包。使用软件包管理系统升级操作系统。"
           "操作系统需要软件包管理。")


def tokens_per_byte(tokenizer, texts):
    return sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts) / sum(len(t.encode()) for t in texts)


# ----------------------------------------------------------------------------- miners


def test_words_miner_keeps_letters_of_any_alphabet_and_ranks_by_tokens_saved():
    tok = tiny_byte_tokenizer()
    words = L.mine_lexicon([GERMAN], tok, min_pieces=2, min_count=2, max_words=10, after_space=True,
                           miner="words", rank="saved")
    assert "Paketverwaltung" in words and words[0] == "Paketverwaltung"  # 4 uses after a space x 15 pieces saved
    assert "Gr" not in words and "Größere" not in words  # once only (and the ASCII pattern would cut it)
    counts = L.word_counts([GERMAN], after_space=True, pattern=L.LETTER_WORD_RE)
    cost = L.piece_counts(tok, words)
    saved = [counts[w] * (cost[w] - 1) for w in words]
    assert saved == sorted(saved, reverse=True) and all(counts[w] >= 2 for w in words)
    assert L.word_counts(["Größe für"], pattern=L.LETTER_WORD_RE) == {"Größe": 1, "für": 1}


def test_units_miner_picks_the_units_that_shorten_text_without_spaces():
    tok = tiny_byte_tokenizer()
    units = L.mine_units([CHINESE], tok, min_count=2, max_units=3, max_chars=6)
    assert 0 < len(units) <= 3 and len(set(units)) == len(units)
    assert all(CHINESE.count(u) >= 2 for u in units)
    # The chosen units really shorten the text, and no smaller set of the candidates does better than the first one.
    expanded = tiny_byte_tokenizer()
    register_tokens(expanded, units, special=False, single_word=False)
    assert tokens_per_byte(expanded, [CHINESE]) < 0.6 * tokens_per_byte(tok, [CHINESE])
    # Leftmost-longest use counts: the longer unit wins where it matches, as the tokenizer's matcher does.
    used = L.segment_counts(["软件包管理系统"], {"软件包", "软件包管理系统", "系统"}, max_chars=7)
    assert used == {"软件包管理系统": 1}
    used = L.segment_counts(["软件包系统"], {"软件包", "软件包管理系统", "系统"}, max_chars=7)
    assert used == {"软件包": 1, "系统": 1}


def test_auto_miner_follows_the_script_and_units_refuse_word_start(tmp_path):
    assert L.resolve_miner("auto", [CHINESE], corpus=True) == "units"
    assert L.resolve_miner("auto", [GERMAN], corpus=True) == "words"
    assert L.resolve_miner("auto", [CHINESE], corpus=False) == "identifiers"
    with pytest.raises(TokengraftError, match="miner"):
        L.resolve_miner("bigrams", [GERMAN], corpus=True)
    corpus = tmp_path / "zh"
    L.write_corpus({"train": {"ch1": CHINESE, "ch2": CHINESE}, "validation": {}, "test": {"ch3": "软件包。"}}, corpus)
    with pytest.raises(TokengraftError, match="word_start"):
        get_task("lexicon").generate(0, {"corpus": str(corpus), "min_pieces": 2, "min_count": 2},
                                     tiny_byte_tokenizer(), word_start=True)
    with pytest.raises(TokengraftError, match="colour"):
        get_task("lexicon").generate(0, {"corpus": str(corpus), "colour": 1}, tiny_byte_tokenizer())


# ----------------------------------------------------------------------------- corpus files


def test_corpus_round_trip_and_the_lexicon_task_reads_it(tmp_path):
    texts = {"train": {"ch01": GERMAN, "ch02": GERMAN.upper()}, "validation": {"ch03": "Pakete."},
             "test": {"ch04": "Die Paketverwaltung.\n\nZwei Absätze."}}
    manifest = L.write_corpus(texts, tmp_path / "de", {"language": "de"})
    assert L.read_corpus(tmp_path / "de") == texts
    assert manifest["splits"]["train"]["documents"] == ["ch01", "ch02"] and manifest["language"] == "de"
    assert manifest["splits"]["test"]["bytes"] == len((tmp_path / "de" / "test.txt").read_bytes())
    generated = get_task("lexicon").generate(0, {"corpus": str(tmp_path / "de"), "min_pieces": 2, "min_count": 2,
                                                 "chunk_chars": 200}, tiny_byte_tokenizer(), word_start=True)
    assert "Paketverwaltung" in generated.tokens
    assert {r["topic"] for r in generated.splits["test"]} == {"ch04"}
    assert {r["topic"] for r in generated.splits["train"]} == {"ch01", "ch02"}
    (tmp_path / "de" / "test.txt").write_text("one\n\f\ntwo\n", encoding="utf-8")
    with pytest.raises(TokengraftError, match="manifest lists"):
        L.read_corpus(tmp_path / "de")
    with pytest.raises(TokengraftError, match="lexicon_corpus.py"):
        L.read_corpus(tmp_path / "missing")


def test_replay_corpus_adds_training_rows_only_and_is_not_mined(tmp_path):
    chinese = {"train": {"ch1": CHINESE, "ch2": CHINESE}, "validation": {"ch3": "软件包。"}, "test": {"ch4": "软件包。"}}
    english = {"train": {f"ch{i}": f"Paragraph {i} of the English guide.\n\nAnother paragraph {i}." for i in range(9)},
               "validation": {"v": "Held out."}, "test": {"t": "Held out too."}}
    L.write_corpus(chinese, tmp_path / "zh")
    L.write_corpus(english, tmp_path / "en")
    lexicon = get_task("lexicon")
    options = {"corpus": str(tmp_path / "zh"), "min_pieces": 2, "min_count": 2, "chunk_chars": 40}
    plain = lexicon.generate(0, options, tiny_byte_tokenizer())
    mixed = lexicon.generate(0, {**options, "replay_corpus": str(tmp_path / "en"), "replay_share": 0.25},
                             tiny_byte_tokenizer())
    main_rows = len(plain.splits["train"])
    replayed = [r for r in mixed.splits["train"] if r["topic"].startswith("replay:")]
    assert mixed.splits["train"][:main_rows] == plain.splits["train"]
    assert len(replayed) == round(main_rows / 3) and all(r["text"] in english["train"][r["topic"][7:]]
                                                         for r in replayed)
    assert mixed.tokens == plain.tokens  # the lexicon comes from the main corpus alone
    assert mixed.splits["validation"] == plain.splits["validation"] and mixed.splits["test"] == plain.splits["test"]
    again = lexicon.generate(0, {**options, "replay_corpus": str(tmp_path / "en"), "replay_share": 0.25},
                             tiny_byte_tokenizer())
    assert again.splits["train"] == mixed.splits["train"]
    with pytest.raises(TokengraftError, match="lower replay_share"):
        lexicon.generate(0, {**options, "replay_corpus": str(tmp_path / "en"), "replay_share": 0.9},
                         tiny_byte_tokenizer())
    with pytest.raises(TokengraftError, match="between 0 and 1"):
        lexicon.generate(0, {**options, "replay_corpus": str(tmp_path / "en"), "replay_share": 1.5},
                         tiny_byte_tokenizer())
    with pytest.raises(TokengraftError, match="replay_chunk_chars must be"):
        lexicon.generate(0, {**options, "replay_corpus": str(tmp_path / "en"), "replay_chunk_chars": 0},
                         tiny_byte_tokenizer())
    with pytest.raises(TokengraftError, match="needs replay_corpus"):
        lexicon.generate(0, {**options, "replay_share": 0.2}, tiny_byte_tokenizer())


def test_corpus_path_in_a_recipe_is_relative_to_the_recipe(tmp_path):
    from tokengraft.config import load_recipe

    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("task: lexicon\ntokens: {special: false}\ndata:\n  generate: true\n"
                    "  generate_options: {corpus: ../corpus/de}\n", encoding="utf-8")
    assert load_recipe(path).data.generate_options["corpus"] == str((tmp_path / "corpus" / "de").resolve())
    path.write_text(path.read_text(encoding="utf-8").replace("corpus: ../corpus/de", "corpus: ../corpus/de, "
                                                               "replay_corpus: ../corpus/en"), encoding="utf-8")
    assert load_recipe(path).data.generate_options["replay_corpus"] == str((tmp_path / "corpus" / "en").resolve())


def test_held_out_chapters_drop_paragraphs_seen_in_training():
    chapters = {"a": "Gemeinsamer Absatz, der in zwei Kapiteln steht.\n\nNur in a.",
                "b": "Gemeinsamer Absatz, der in zwei Kapiteln steht.\n\nNur in b."}
    texts = L.split_texts(topics=chapters, names={"train": ["a"], "validation": [], "test": ["b"]})
    assert texts["test"] == {"b": "Nur in b."} and texts["train"] == {"a": chapters["a"]}


def test_html_extraction_drops_navigation_and_joins_cjk_line_wraps():
    page = """<html><head><title>Kapitel 1</title></head><body>
    <div class="navheader"><table><tr><td>Zurück</td></tr></table></div>
    <div class="chapter"><div class="toc"><p>Inhaltsverzeichnis</p></div>
    <h1 class="title">1. Netzwerk</h1>
    <p>Die   Paketverwaltung
    installiert <code class="literal">apt</code>.</p>
    <p>软件包管理
    系统 和 apt</p>
    <pre class="screen">$ apt-get   install
  vim</pre>
    <table><tr><th>软件包</th><th>描述</th></tr><tr><td>tar</td><td>归档</td></tr></table>
    </div><div class="navfooter"><p>Weiter</p></div></body></html>"""
    parser = lexicon_corpus._TextExtractor()
    parser.feed(page)
    parser.close()
    assert parser.paragraphs == ["1. Netzwerk", "Die Paketverwaltung installiert apt.", "软件包管理系统 和 apt",
                                 "$ apt-get   install\n  vim", "软件包 描述", "tar 归档"]


# ----------------------------------------------------------------------------- distilled output rows


def _brute_force_logp(model, tok, prefix_ids: list[int], pieces: list[int]) -> float:
    """log p(pieces | prefix) under the base model, one forward pass per piece."""
    total, ids = 0.0, list(prefix_ids)
    with torch.no_grad():
        for piece in pieces:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[piece])
            ids.append(piece)
    return total


@pytest.mark.parametrize("family", ["llama", "mistral"])  # tied (one shared row), untied (the output row)
def test_distilled_rows_give_the_new_token_its_pieces_probability_exactly(family):
    tok = tiny_byte_tokenizer()
    base = tiny_model(family, seed=3, vocab_size=len(tok))
    model = tiny_model(family, seed=3, vocab_size=len(tok))
    words = [" Paketverwaltung", " Pakete"]
    g = graft(model, tok, TokenSettings(add=words, init_input="subwords"), seed=0, verbose=False)
    before = {k: v.clone() for k, v in g.rows.state_dict().items()}
    report = fit_output_rows(g, [GERMAN], ridge=0.0, positives=8, negatives=16)
    assert report.fitted == 2 and report.unused == 0
    assert report.rms_error_after < 1e-3 < report.rms_error_before
    after = g.rows.state_dict()
    side = "output" if family == "mistral" else "input"
    assert not torch.equal(before[side], after[side])
    if family == "mistral":  # untied: the input rows keep their subword-mean init
        assert torch.equal(before["input"], after["input"])
    # Every use of each word in the text: the new token's log-probability (against the base vocabulary's
    # normaliser) equals the base model's log-probability of the word's pieces there.
    base_ids = [tok.bos_token_id] + tiny_byte_tokenizer().encode(GERMAN, add_special_tokens=False)
    checked = 0
    for word in words:
        pieces = g.report.pieces[word]
        new_id = g.report.ids[word]
        for start in range(1, len(base_ids)):
            if base_ids[start:start + len(pieces)] != pieces:  # byte pieces: exactly where the word is
                continue
            context = base_ids[:start]
            with torch.no_grad():
                logits = g.model(input_ids=torch.tensor([context])).logits[0, -1].float()
            got = float(logits[new_id] - torch.logsumexp(logits[:len(tok)], -1))
            want = _brute_force_logp(base, tok, context, pieces)
            assert got == pytest.approx(want, abs=1e-3), (word, start)
            checked += 1
    assert checked >= 5


def test_distilled_rows_need_the_rows_backend_and_a_text_that_uses_the_tokens(tmp_path):
    from tokengraft.config import load_recipe

    tok = tiny_byte_tokenizer()
    g = graft(tiny_model("mistral", vocab_size=len(tok)), tok, TokenSettings(add=[" Zeitmaschine"]), verbose=False)
    with pytest.raises(TokengraftError, match="never uses"):
        fit_output_rows(g, [GERMAN])
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({"task": "lexicon", "tokens": {"special": False, "backend": "peft",
                                                              "distill_output": True}, "data": {"generate": True}}))
    with pytest.raises(TokengraftError, match="backend: rows"):
        load_recipe(path)


# ----------------------------------------------------------------------------- the recipes, on a tiny model


@pytest.fixture(scope="module")
def byte_model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-byte-llama")
    tok = tiny_byte_tokenizer()
    tiny_model("llama", vocab_size=len(tok), max_position_embeddings=1024).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("name, text", [("lexicon_de.yaml", GERMAN), ("lexicon_zh.yaml", CHINESE)])
def test_language_recipe_trains_on_a_tiny_model_with_a_tiny_corpus(name, text, byte_model_dir, tmp_path, capsys):
    """The shipped recipe through `tokengraft train`: mining, the distilled output fit, two steps."""
    from tokengraft.cli.main import main

    corpus = tmp_path / "corpus"
    L.write_corpus({"train": {f"ch{i}": text for i in range(4)}, "validation": {"ch8": text[:40]},
                    "test": {"ch9": text[:60]}}, corpus)
    run = tmp_path / "run"
    config = Path(__file__).resolve().parent.parent / "configs" / name
    code = main(["train", str(config), f"model.name={byte_model_dir}", "model.device=cpu", "train.max_steps=2",
                 "train.save_steps=0", "train.eval_steps=0", "train.snapshot_steps=0", "train.batch_size=2",
                 f"data.generate_options.corpus={corpus}", "data.generate_options.chunk_chars=60",
                 "tokens.distill_output=true", "--output", str(run)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "distilled output rows:" in out.out
    meta = json.loads((run / "graft.json").read_text())
    tokens = [t["token"] for t in meta["tokens"]]
    assert meta["steps"] == 2 and tokens
    if name == "lexicon_de.yaml":
        assert " Paketverwaltung" in tokens and all(t.startswith(" ") for t in tokens)
    else:
        assert not any(t.startswith(" ") for t in tokens) and any(len(t) >= 2 for t in tokens)
