"""Task metrics on small inputs whose values are computed by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from tokengraft.errors import TokengraftError
from tokengraft.tasks import metrics as M
from tiny import tiny_model, tiny_tokenizer


def rec(answerable, generated, p_pass, base_correct=None, kind=None, gold="Paris", forced=None):
    r = {"answerable": answerable, "generated": generated, "p_pass": p_pass, "base_correct": base_correct,
         "kind": kind or ("answerable" if answerable else "char_noise"), "gold": gold if answerable else None,
         "aliases": []}
    if forced is not None:
        r["forced_answer"] = forced
    return r


def hand_records():
    return [
        rec(True, "Paris.", 0.1, base_correct=True),         # A: correct
        rec(True, "Lyon.", 0.2, base_correct=True),          # B: answered, wrong
        rec(True, "<PASS>", 0.9, base_correct=False),        # C: passed; base was wrong
        rec(True, "<PASS>", 0.6, base_correct=True),         # D: passed; base was right -> a false pass
        rec(False, "<PASS>", 0.8, kind="char_noise"),        # E: passed
        rec(False, "Paris.", 0.3, kind="truncated"),         # F: answered a garbled question
        rec(False, " <PASS> extra", 0.7, kind="truncated"),  # G: passed (leading space is fine)
    ]


def test_pass_metrics_by_hand():
    m = M.pass_metrics(hand_records())
    assert m["n_answerable"] == 4 and m["n_unanswerable"] == 3
    assert m["clean_accuracy"] == 1 / 4              # A
    assert m["coverage"] == 2 / 4                    # A, B answered
    assert m["selective_accuracy"] == 1 / 2          # A of {A, B}
    assert m["wrong_answer_rate"] == 1 / 4           # B
    assert m["pass_recall"] == 2 / 3                 # E, G
    assert m["pass_recall_by_kind"] == {"char_noise": 1.0, "truncated": 0.5}
    assert m["false_pass_rate"] == 1 / 3             # D of base-right {A, B, D}
    assert m["idk_error_rate"] == 1 / 3
    assert m["idk_recall"] == 1.0                    # C of base-wrong {C}
    # AURC: confidence 1-p: A .9, B .8, D .4, C .1; errors 0,1,1,1 -> risks 0, 1/2, 2/3, 3/4.
    assert m["aurc"] == pytest.approx((0 + 1 / 2 + 2 / 3 + 3 / 4) / 4)


def test_pass_metrics_by_relation():
    records = [dict(r, relation=rel) for r, rel in zip(hand_records()[:4], ("capital", "capital", "author", "author"))]
    records.append(rec(True, "Rome.", 0.2, gold="Rome"))  # no relation: not in by_relation
    m = M.pass_metrics(records)
    assert m["by_relation"] == {
        "author": {"n": 2, "clean_accuracy": 0.0, "passed": 1.0, "base_clean_accuracy": 0.5},    # C, D passed
        "capital": {"n": 2, "clean_accuracy": 0.5, "passed": 0.0, "base_clean_accuracy": 1.0},  # A right, B wrong
    }
    unknown = M.pass_metrics([dict(r, base_correct=None) for r in records])["by_relation"]
    assert unknown["author"]["base_clean_accuracy"] is None


def test_false_pass_falls_back_without_base_answers():
    records = [dict(r, base_correct=None) for r in hand_records()]
    m = M.pass_metrics(records)
    assert m["false_pass_rate"] == 2 / 4  # C, D of all answerable
    assert m["idk_recall"] is None and m["idk_error_rate"] is None


def test_aurc_four_rows_by_hand():
    # confidence .9 .8 .7 .6 with errors F T F T: risks 0/1, 1/2, 1/3, 2/4 -> mean 1/3.
    records = [rec(True, g, p) for g, p in (("Paris", .1), ("Rome", .2), ("Paris", .3), ("Rome", .4))]
    assert M.aurc(records) == pytest.approx(1 / 3)
    # The oracle puts both correct rows first: risks 0, 0, 1/3, 1/2.
    assert M.aurc_optimal(records) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    # The worst ranking (both wrong rows most confident): risks 1, 1, 2/3, 1/2.
    worst = [rec(True, g, p) for g, p in (("Rome", .1), ("Rome", .2), ("Paris", .3), ("Paris", .4))]
    assert M.aurc(worst) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)


def test_aurc_ties_do_not_depend_on_order():
    # Rows 1-2 tie at confidence .9 (one right, one wrong): each counts 1/2 error.
    # cumulative errors .5, 1, 1, 2 -> risks .5, .5, 1/3, .5 -> mean 11/24.
    records = [rec(True, "Paris", .1), rec(True, "Rome", .1), rec(True, "Paris", .5), rec(True, "Rome", .9)]
    assert M.aurc(records) == pytest.approx(11 / 24)
    assert M.aurc(records[::-1]) == pytest.approx(11 / 24)
    assert M.aurc([rec(False, "<PASS>", .5)]) is None


def test_forced_answers_define_correctness_of_passed_rows():
    # Greedy passed, but with <PASS> banned the model would have said Paris: not an error for AURC.
    records = [rec(True, "<PASS>", .6, forced="Paris"), rec(True, "Rome", .1)]
    # confidence: row 2 .9 (wrong), row 1 .4 (right) -> risks 1, 1/2.
    assert M.aurc(records) == pytest.approx(0.75)
    sweep = M.threshold_sweep(records, [0.7])
    assert sweep[0]["selective_accuracy"] == 0.5 and sweep[0]["coverage"] == 1.0


def test_threshold_sweep_and_pick_by_hand():
    records = hand_records()
    sweep = M.threshold_sweep(records, [0.0, 0.5, 0.65, 0.95])
    # t=0: everything passed.
    assert sweep[0] == {"threshold": 0.0, "pass_recall": 1.0, "false_pass_rate": 1.0, "coverage": 0.0,
                        "selective_accuracy": None}
    # t=.5: passed C(.9) D(.6) | E(.8) G(.7); base-right {A,B,D}: D passed.
    assert sweep[1]["pass_recall"] == 2 / 3 and sweep[1]["false_pass_rate"] == 1 / 3
    assert sweep[1]["coverage"] == 0.5 and sweep[1]["selective_accuracy"] == 0.5
    # t=.65: D now answered (its greedy output is <PASS>, so it counts as wrong).
    assert sweep[2]["false_pass_rate"] == 0.0 and sweep[2]["coverage"] == 0.75
    assert sweep[2]["selective_accuracy"] == pytest.approx(1 / 3)
    assert sweep[3]["pass_recall"] == 0.0
    # Lowest threshold with false-pass <= 0: just above D's .6, i.e. the next observed value .7.
    assert M.pick_threshold_for_false_pass(records, 0.0) == 0.7
    # t=.2 passes B and D (2/3 of base-right); t=.3 passes only D (1/3 <= .5).
    assert M.pick_threshold_for_false_pass(records, 0.5) == 0.3
    assert M.pick_threshold_for_false_pass(records, 1.0) == 0.1
    with pytest.raises(TokengraftError):
        M.pick_threshold_for_false_pass(records, 1.5)


def test_pick_threshold_can_pass_nothing():
    records = [rec(True, "Paris", .9, base_correct=True), rec(False, "<PASS>", .9)]
    t = M.pick_threshold_for_false_pass(records, 0.0)
    assert t > 0.9 and M.threshold_sweep(records, [t])[0]["false_pass_rate"] == 0.0


def test_length_stats_paired_ratio_and_ci():
    terse = [2, 4, 0, 5, 3]
    verbose = [20, 20, 30, 5, 60]
    # Ratios: 10, 5, 30 (terse 0 counts as 1), 1, 20 -> median 10; verbose longer in 4 of 5.
    s = M.length_stats(terse, verbose, seed=0)
    assert s["median_ratio"] == 10.0 and s["verbose_longer_rate"] == 0.8 and s["n"] == 5
    assert 1.0 <= s["ci_low"] <= 10.0 <= s["ci_high"] <= 30.0
    assert M.length_stats(terse, verbose, seed=0) == s
    assert M.length_stats([3] * 4, [6] * 4)["ci_low"] == M.length_stats([3] * 4, [6] * 4)["ci_high"] == 2.0
    with pytest.raises(TokengraftError):
        M.length_stats([1, 2], [3])


def test_answer_accuracy():
    rows = [{"gold": "12", "aliases": ["twelve"]}, {"gold": "Paris", "aliases": []}]
    assert M.answer_accuracy(["It is twelve.", "Lyon"], rows) == 0.5
    with pytest.raises(TokengraftError):
        M.answer_accuracy(["x"], rows)


def test_bits_and_tokens_per_byte():
    assert M.bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)
    assert M.tokens_per_byte(3, 12) == 0.25


def _manual_nll(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return float(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_text_nll_matches_a_manual_forward(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    texts = ["the cat sat on the mat", "déjà vu", "a"]
    nll, n_tokens, n_bytes = M.text_nll(model, tok, texts, max_length=64, batch_size=2)
    expected = sum(_manual_nll(model, [tok.bos_token_id] + tok.encode(t, add_special_tokens=False)) for t in texts)
    assert nll == pytest.approx(expected, rel=1e-4)
    assert n_tokens == sum(len(tok.encode(t, add_special_tokens=False)) for t in texts)
    assert n_bytes == sum(len(t.encode("utf-8")) for t in texts) == 32  # 22 + 9 ("déjà vu": é and à take 2 bytes) + 1
    # Padding in a batch does not change the total.
    assert M.text_nll(model, tok, texts, max_length=64, batch_size=1)[0] == pytest.approx(nll, rel=1e-4)


def test_text_nll_windows_predict_every_token_once():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.train()
    text = "an example sentence that is longer than one window of tokens"
    ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    nll, n_tokens, _ = M.text_nll(model, tok, [text], max_length=8, batch_size=3)
    assert n_tokens == len(ids) - 1
    # Windows of 8 overlapping by one token: [0:8], [7:15], ...
    expected = sum(_manual_nll(model.eval(), ids[s:s + 8]) for s in range(0, len(ids) - 1, 7))
    assert nll == pytest.approx(expected, rel=1e-4)
    model.train()
    M.text_nll(model, tok, [text])
    assert model.training  # the caller's mode is restored
    with pytest.raises(TokengraftError):
        M.text_nll(model, tok, [text], max_length=1)


def test_the_pass_bias_is_calibrated_with_a_finite_sample_margin():
    """(k + 1) / (n + 1) <= target: on 40 base-right questions a 0.05 target admits one false pass, not two."""
    from tokengraft.evaluation.generative import choose_pass_bias

    right = [{"answerable": True, "base_correct": True, "gold": "x", "aliases": [], "margin": m, "generated": "x"}
             for m in [-1.2, -1.8] + [-9.0] * 38]  # the two closest to passing need bias 1.2 and 1.8
    corrupted = [{"answerable": False, "margin": m, "generated": "<PASS>"} for m in (-3.0, -2.0, 0.5)]
    bias, sweep = choose_pass_bias(right + corrupted, 0.05, biases=(0.0, 1.0, 1.5, 2.0, 3.0))
    assert bias == 1.5  # 1 false pass: (1+1)/41 = 0.049; at 2.0 two would give 0.073
    assert [row["false_pass_rate"] for row in sweep][:4] == [0.0, 0.0, 0.025, 0.05]
    assert choose_pass_bias(right[:10] + corrupted, 0.05, biases=(0.0, 1.0))[0] == 0.0  # n=10 cannot certify 5 %


def test_a_recall_target_takes_the_smallest_certified_bias_that_reaches_it():
    """Recall 2/3 already at bias 1.0; the false-PASS rule alone would go to 1.5 (recall 2/3, one false pass)."""
    from tokengraft.evaluation.generative import choose_pass_bias

    right = [{"answerable": True, "base_correct": True, "gold": "x", "aliases": [], "margin": m, "generated": "x"}
             for m in [-1.2, -1.8] + [-9.0] * 38]
    corrupted = [{"answerable": False, "margin": m, "generated": "<PASS>"} for m in (-3.0, -0.8, 0.5)]
    biases = (0.0, 1.0, 1.5, 2.0, 3.0)
    assert choose_pass_bias(right + corrupted, 0.05, biases=biases)[0] == 1.5
    assert choose_pass_bias(right + corrupted, 0.05, biases=biases, target_recall=0.6)[0] == 1.0
    assert choose_pass_bias(right + corrupted, 0.05, biases=biases, target_recall=0.3)[0] == 0.0
    # unreachable within the false-PASS bound (recall 1.0 needs bias 3.0): the largest certified bias
    assert choose_pass_bias(right + corrupted, 0.05, biases=biases, target_recall=1.0)[0] == 1.5
