"""Issue 19, the evaluation and recipe half: <PASS> against the base model's own confidence, and keeping
general answering.

- AUROC / AURC computed by hand (ties included) and the error-detection scores of pass records;
- the base model's answer probabilities from one teacher-forced forward (generation.answer_probabilities);
- `tokengraft eval` on a tiny pass run scores every held-out split file of the run, with error detection;
- ``train.kl_untokened`` on the pass task (answerable rows, <PASS> left out of both sides): zero while the
  LoRA is the base function, in the loss otherwise, and it changes what training learns;
- ``data.drop_unknown``: checked against the recipe and leaves out what the base model answers wrong.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import tiny_model, tiny_tokenizer
from tokengraft.api import generate, load_graft, train
from tokengraft.cli.main import main
from tokengraft.cli.report import metrics_table
from tokengraft.config import recipe_from_dict, validate_recipe
from tokengraft.core.graft import TokenSettings, graft
from tokengraft.data import ChatFormat, Collator, encode_examples
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.generative import base_greedy_answers, eval_splits, evaluate_run
from tokengraft.generation import answer_probabilities, generate_batch, pass_gated_generate
from tokengraft.models import load_model
from tokengraft.rundir import read_graft_meta, read_run_recipe
from tokengraft.tasks import metrics, read_jsonl, write_jsonl
from tokengraft.tasks.bank import normalize_answer
from tokengraft.training.lm import LMLoss, lm_loss
from tokengraft.training.objectives import UntokenedKL
from tokengraft.training.prepare import drop_unknown

LORA = {"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}

# ----------------------------------------------------------------------------- AUROC / AURC by hand


def test_auroc_by_hand_with_ties_and_degenerate_cases():
    # positives 0.9, 0.7 against negatives 0.8, 0.6: 3 of the 4 pairs ordered right
    assert metrics.auroc([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(0.75)
    # positives 0.5, 0.1 against negatives 0.5, 0.5: two ties (1/2 each), two losses -> 1/4
    scores, labels = [0.5, 0.5, 0.5, 0.1], [True, False, False, True]
    assert metrics.auroc(scores, labels) == pytest.approx(0.25)
    for seed in range(5):  # ties are split evenly: the order of the rows does not matter
        order = list(range(4))
        random.Random(seed).shuffle(order)
        assert metrics.auroc([scores[i] for i in order], [labels[i] for i in order]) == pytest.approx(0.25)
    assert metrics.auroc([0.3] * 4, [True, False, True, False]) == 0.5
    assert metrics.auroc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert metrics.auroc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert metrics.auroc([1, 2], [True, True]) is None and metrics.auroc([], []) is None
    assert metrics.average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0]).numpy()).tolist() == [3.5, 1.0, 3.5, 2.0]
    with pytest.raises(TokengraftError, match="one score per label"):
        metrics.auroc([0.1, 0.2], [True])
    with pytest.raises(TokengraftError, match="finite"):
        metrics.auroc([0.1, float("nan")], [True, False])


def test_risk_coverage_area_by_hand():
    # kept least suspect first: 0.1 (right), 0.3 (wrong), 0.5 (right), 0.9 (wrong)
    # risks at coverage 1..4: 0, 1/2, 1/3, 2/4
    area = metrics.risk_coverage_area([0.9, 0.1, 0.5, 0.3], [True, False, False, True])
    assert area == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert metrics.risk_coverage_area([0.2, 0.2], [True, False]) == pytest.approx(0.5)  # a tie: half an error each
    assert metrics.risk_coverage_area([0.0, 1.0], [False, True]) == 0.25  # the error kept last: risks 0, 1/2
    assert metrics.risk_coverage_area([], []) is None


def _record(right: bool | None, p_pass: float, first: float, probs: list[float], answerable: bool = True) -> dict:
    return {"answerable": answerable, "base_correct": right, "p_pass": p_pass, "base_first_max": first,
            "base_token_probs": probs}


def test_error_detection_compares_p_pass_with_the_base_models_confidence():
    records = [
        _record(False, 0.9, 0.3, [0.3, 0.9]),    # wrong: p_pass high, the base model unsure
        _record(False, 0.2, 0.8, [0.8, 0.1]),    # wrong: only its minimum token says so
        _record(True, 0.4, 0.9, [0.9, 0.95]),
        _record(True, 0.1, 0.6, []),             # an empty answer: the minimum is the first-position max
        _record(None, 0.99, 0.1, [0.1]),         # the base model was not asked: left out
        _record(None, 0.5, 0.5, [0.5], answerable=False),
    ]
    d = metrics.error_detection(records)
    assert (d["n"], d["base_errors"], d["error_rate"]) == (4, 2, 0.5)
    assert d["aurc_optimal"] == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    # p_pass: errors 0.9, 0.2 vs rights 0.4, 0.1 -> 3/4
    assert d["p_pass"]["auroc"] == pytest.approx(0.75)
    # max softmax: 1 - first = errors 0.7, 0.2 vs rights 0.1, 0.4 -> 3/4
    assert d["max_softmax"]["auroc"] == pytest.approx(0.75)
    # min token prob: 1 - min = errors 0.7, 0.9 vs rights 0.1, 0.4 -> 1
    assert d["min_token_prob"]["auroc"] == 1.0
    assert d["min_token_prob"]["aurc"] == pytest.approx(d["aurc_optimal"])
    assert metrics.error_scores(records[3])["min_token_prob"] == pytest.approx(0.4)
    assert set(d) >= set(metrics.ERROR_SCORES)
    assert metrics.error_detection([_record(True, 0.1, 0.9, [0.9])])["p_pass"]["auroc"] is None  # one class only
    gain = d["p_pass_gain"]  # against the better baseline, min token prob: 0.75 - 1
    assert gain["over"] == "min_token_prob" and gain["gain"] == pytest.approx(-0.25)
    assert gain["ci95"][0] <= gain["gain"] <= gain["ci95"][1] and 0 < gain["resamples"] <= metrics.BOOTSTRAP_RESAMPLES
    assert "p_pass_gain" not in metrics.error_detection([dict(r, p_pass=None) for r in records])  # nothing to compare


def test_the_paired_rate_change_counts_each_question_once_with_an_interval():
    before = [True] * 50 + [False] * 50
    assert metrics.paired_rate_change(before, before) == {"change": 0.0, "ci95": [0.0, 0.0], "n": 100}  # paired
    after = [True] * 40 + [False] * 10 + [True] * 5 + [False] * 45  # 10 answers lost, 5 gained
    change = metrics.paired_rate_change(after, before)
    assert change["change"] == pytest.approx(-0.05) and change["ci95"][0] < -0.05 < change["ci95"][1] < 0.05
    assert metrics.paired_rate_change(after, before) == change  # seeded
    assert metrics.paired_rate_change([], []) is None
    with pytest.raises(TokengraftError, match="one pair per row"):
        metrics.paired_rate_change([True], [True, False])


def test_the_auroc_gain_is_paired_and_its_interval_excludes_zero_for_a_real_gain():
    rng = np.random.default_rng(0)
    errors = rng.random(120) < 0.3
    noise = rng.normal(size=120)
    same = metrics.auroc_gain(noise, noise, errors, resamples=200)
    assert same["gain"] == 0.0 and same["ci95"] == [0.0, 0.0]  # paired: the same scores never differ
    better = metrics.auroc_gain(errors + 0.3 * noise, noise, errors, resamples=200)
    assert better["gain"] > 0.3 and 0.0 < better["ci95"][0] < better["gain"] < better["ci95"][1]
    assert metrics.auroc_gain(errors + 0.3 * noise, noise, errors, resamples=200) == better  # seeded
    swapped = metrics.auroc_gain(noise, errors + 0.3 * noise, errors, resamples=200)
    assert swapped["gain"] == -better["gain"] and swapped["ci95"][1] < 0.0
    assert metrics.auroc_gain([0.1, 0.2], [0.3, 0.4], [True, True]) is None  # one class: no area


# ----------------------------------------------------------------------------- the base model's answer probabilities


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_answer_probabilities_match_a_forward_per_prompt(family):
    model, tok = tiny_model(family), tiny_tokenizer()
    prompts = ["What is the capital of France?", "Hi", "How many legs does a spider have?"]
    answers = [o["ids"] for o in generate_batch(model, tok, prompts, max_new_tokens=5, batch_size=3)]
    answers[1] = []  # no answer: only the first position is read
    got = answer_probabilities(model, tok, prompts, answers, batch_size=2)
    fmt = ChatFormat(tok)
    for prompt, answer, out in zip(prompts, answers, got):
        ids = fmt.encode_prompt(prompt)
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids + answer])).logits[0].float(), dim=-1)
        expected = [float(probs[len(ids) - 1 + k, t]) for k, t in enumerate(answer)]
        assert out["token_probs"] == pytest.approx(expected, abs=1e-5)
        assert out["first_max"] == pytest.approx(float(probs[len(ids) - 1].max()), abs=1e-5)
        if answer:  # greedy: the first answer token IS the most probable one
            assert out["token_probs"][0] == pytest.approx(out["first_max"], abs=1e-5)
    with pytest.raises(TokengraftError, match="2 answers for 3 prompts"):
        answer_probabilities(model, tok, prompts, answers[:2])


# ----------------------------------------------------------------------------- KL to the base on answerable rows


def _pass_graft():
    return graft(tiny_model("llama"), tiny_tokenizer(), TokenSettings(add=["<PASS>"], special=True), [LORA],
                 verbose=False)


def test_kl_on_answerable_rows_is_zero_with_the_base_function_and_leaves_pass_out():
    g = _pass_graft()
    pass_id = g.tokenizer.convert_tokens_to_ids("<PASS>")
    kl = UntokenedKL(3.0, torch.tensor(sorted(g.trainable_ids)), torch.tensor([pass_id]))
    rows = [{"prompt": "What is 2 + 2?", "completion": "4."}, {"prompt": "Wht s 2 + ?", "completion": "<PASS>"}]
    batch = Collator(g.tokenizer)(encode_examples(rows, g.tokenizer, 128)[0])
    assert kl.plain_rows(batch["input_ids"]).tolist() == [True, False]  # the answerable row only
    g.model.train()
    with_kl, without = LMLoss(True, kl=kl), LMLoss(True)
    assert torch.equal(with_kl(g.model, batch, None)[0], without(g.model, batch, None)[0])  # LoRA B = 0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in g.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    term = with_kl(g.model, batch, None)[0] - without(g.model, batch, None)[0]
    assert term.item() > 0
    with g.model.disable_adapter():  # the adapter off: the tuned model IS the reference
        assert torch.equal(with_kl(g.model, batch, None)[0], without(g.model, batch, None)[0])
    # <PASS> is outside both distributions: its logits change nothing
    logits, reference = torch.randn(3, 260), torch.randn(3, 260)
    moved = logits.clone()
    moved[:, pass_id] += 7.0
    assert torch.equal(kl(logits, reference, None, 3), kl(moved, reference, None, 3))
    keep = torch.arange(260) != pass_id
    log_t, log_b = torch.log_softmax(logits[:, keep], -1), torch.log_softmax(reference[:, keep], -1)
    torch.testing.assert_close(kl(logits, reference, None, 3), 3.0 * (log_b.exp() * (log_b - log_t)).sum() / 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pass-base")
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def _pass_recipe(model_dir: Path, *, data: dict | None = None, **train_settings):
    raw = {"seed": 3, "task": "pass", "model": {"name": str(model_dir), "device": "cpu"},
           "tokens": {"add": ["<PASS>"], "special": True}, "methods": [LORA],
           "data": {"generate": True, "max_length": 128,
                    "generate_options": {"n_train": 24, "n_validation": 10, "n_test": 12}, **(data or {})},
           "train": {"max_steps": 3, "batch_size": 4, "save_steps": 0, "eval_steps": 0, "logging_steps": 1,
                     "warmup_ratio": 0.0, "lr": 1e-2, **train_settings},
           "eval": {"max_new_tokens": 4, "batch_size": 8}}
    recipe = recipe_from_dict(raw)
    validate_recipe(recipe)
    return recipe


@pytest.fixture(scope="module")
def pass_runs(model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pass-runs")
    for name, weight in (("plain", 0.0), ("kl", 5.0)):
        train(_pass_recipe(model_dir, kl_untokened=weight), root / name, quiet=True)
    return {"plain": root / "plain", "kl": root / "kl"}


def _untrained_graft(model_dir: Path):
    model, tok = load_model(str(model_dir), device="cpu")
    return graft(model, tok, TokenSettings(add=["<PASS>"], special=True), [LORA], verbose=False)


def test_the_pass_recipe_builds_the_kl_term_without_pass(model_dir: Path):
    g = _untrained_graft(model_dir)
    loss = lm_loss(g, _pass_recipe(model_dir, kl_untokened=1.0))
    assert loss.kl is not None and loss.kl.weight == 1.0
    assert loss.kl.excluded_ids.tolist() == [g.tokenizer.convert_tokens_to_ids("<PASS>")]  # the task's answer token
    assert lm_loss(g, _pass_recipe(model_dir)).kl is None


def test_kl_changes_what_training_learns(pass_runs):
    def lora(run: Path) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in load_graft(run, device="cpu").model.named_parameters() if "lora_" in n}

    plain, kl = lora(pass_runs["plain"]), lora(pass_runs["kl"])
    assert plain.keys() == kl.keys() and plain
    assert any(not torch.equal(plain[n], kl[n]) for n in plain)


# ----------------------------------------------------------------------------- eval: every held-out split


def _known_rows(run: Path, rows: list[dict]) -> list[dict]:
    """Copies of ``rows`` whose gold is, for every other row, a word of the base model's own greedy answer:
    so the base model is right on some rows and wrong on others (a random tiny model knows nothing)."""
    meta = json.loads((run / "graft.json").read_text())
    model, tok = load_model(meta["base_model"], device="cpu")
    answers = generate_batch(model, tok, [r["prompt"] for r in rows], max_new_tokens=48, batch_size=8)
    out = []
    for i, (row, answer) in enumerate(zip(rows, answers)):
        words = normalize_answer(answer["text"]).split()
        gold = words[0] if (i % 2 == 0 and words) else "zzqx"
        out.append({**row, "gold": gold, "aliases": [], "relation": "held_out_relation", "kind": "answerable",
                    "answerable": True, "completion": gold + "."})
    return out


def test_eval_scores_every_held_out_split_with_error_detection(pass_runs, capsys):
    run = pass_runs["kl"]
    test_rows = read_jsonl(run / "data" / "test.jsonl")
    extra = _known_rows(run, [r for r in test_rows if r["answerable"]] * 2)
    write_jsonl(extra, run / "data" / "test_heldout_relations.jsonl")
    write_jsonl([{"text": "not a question row"}], run / "data" / "notes.jsonl")
    assert eval_splits(run) == ["test", "notes", "test_heldout_relations"]
    result = evaluate_run(run, limit=8)
    assert set(result["splits"]) == {"test", "test_heldout_relations"}  # notes.jsonl holds no question rows: skipped
    held_out = result["splits"]["test_heldout_relations"]
    assert held_out["n_answerable"] == 8 and held_out["pass_recall"] is None
    assert isinstance(held_out["clean_accuracy"], float) and isinstance(held_out["base_clean_accuracy"], float)
    assert result["splits"]["test"]["clean_accuracy"] == result["clean_accuracy"]
    change = held_out["clean_accuracy_change"]  # the tuned answers minus the base model's, question by question
    assert change["n"] == 8 and change["change"] == pytest.approx(held_out["clean_accuracy"] - held_out["base_clean_accuracy"])
    assert change["ci95"][0] <= change["change"] <= change["ci95"][1]
    detection = result["error_detection"]["test_heldout_relations"]
    assert 0 < detection["base_errors"] < detection["n"] == 8
    for score in metrics.ERROR_SCORES:
        assert 0.0 <= detection[score]["auroc"] <= 1.0 and detection[score]["aurc"] >= detection["aurc_optimal"]
    assert "error_auroc_p_pass" in result
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["error_detection"] == result["error_detection"]
    table = metrics_table(result)
    assert "test_heldout_relations" in table and "finding the base model's wrong answers" in table
    gain = detection["p_pass_gain"]
    assert f"p_pass AUROC - {gain['over']}: {gain['gain']:+.3f}" in table
    assert f"(tuned - base {change['change']:+.3f}, 95% CI" in table


# ----------------------------------------------------------------------------- eval.answers: base


def test_answers_base_leaves_every_answer_to_the_base_model(pass_runs, model_dir: Path):
    run = pass_runs["plain"]
    # a bias no margin reaches: nothing passes, so the run answers exactly as often right as its base model
    never = evaluate_run(run, limit=8, pass_bias=-1e4, answers="base")
    assert never["answers"] == "base" and never["pass_recall"] == 0.0
    assert never["clean_accuracy"] == never["base_clean_accuracy"]
    assert "answers: the base model's" in metrics_table(never)
    g = load_graft(run, device="cpu")
    base, _ = load_model(str(model_dir), device="cpu")
    rows = read_jsonl(run / "data" / "test.jsonl")[:8]
    recipe = read_run_recipe(run)
    base_texts = [a["text"] for a in base_greedy_answers(base, g.tokenizer, rows, recipe)]
    assert [e["generated"] for e in never["examples"]] == base_texts
    tuned = evaluate_run(run, limit=8, pass_bias=-1e4)
    assert tuned["answers"] == "tuned" and tuned["pass_recall"] == 0.0
    assert "answers: the base model's" not in metrics_table(tuned)
    with pytest.raises(TokengraftError, match="drop --no-base"):
        evaluate_run(run, limit=8, base=False, answers="base")
    with pytest.raises(TokengraftError, match="eval.answers must be one of tuned, base"):
        evaluate_run(run, limit=8, answers="both")
    # generation: the run's margin decides, the base model answers (the tuned model answers otherwise)
    prompts = [r["prompt"] for r in rows[:6]]
    own = [o["text"] for o in generate_batch(base, g.tokenizer, prompts, max_new_tokens=5)]
    assert [o["text"] for o in generate_batch(g.model, g.tokenizer, prompts, max_new_tokens=5)] != own
    answered = pass_gated_generate(g.model, base, g.tokenizer, prompts, bias=-1e4, max_new_tokens=5)
    assert [o["text"] for o in answered] == own
    passed = pass_gated_generate(g.model, base, g.tokenizer, prompts, bias=1e4, max_new_tokens=5)
    assert [o["text"] for o in passed] == ["<PASS>"] * 6
    assert [o["margin"] for o in passed] == [o["margin"] for o in answered]
    # the API with the run's saved bias: each output is <PASS> or the base model's answer, as its margin says
    bias = read_graft_meta(run).get("pass_bias") or 0.0
    for out, base_text in zip(generate(run, prompts, max_new_tokens=5, answers="base"), own):
        assert out["text"] == ("<PASS>" if out["margin"] + bias >= 0 else base_text)


def test_a_run_that_answers_with_its_base_says_what_an_export_cannot_keep(model_dir: Path, tmp_path: Path, capsys):
    recipe = _pass_recipe(model_dir)
    recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, answers="base"))
    run = tmp_path / "run"
    train(recipe, run, quiet=True)
    # the recipe's eval.answers is generate's default: <PASS>, or the base model's own answer
    prompt = "What is the capital of France?"
    base, tok = load_model(str(model_dir), device="cpu")
    own = generate_batch(base, tok, [prompt], max_new_tokens=4)[0]["text"]
    capsys.readouterr()
    assert main(["generate", str(run), prompt, "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed in (f"> {prompt}\n{own}\n\n", f"> {prompt}\n<PASS>\n\n")
    assert main(["export", str(run), "--merged", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert "this run answers with eval.answers: base" in out and "export --lora-adapter" in out


def test_answers_base_is_for_pass_runs_only():
    raw = {"task": "style", "tokens": {"add": ["<STYLE_TERSE>"]}, "eval": {"answers": "base"}}
    with pytest.raises(TokengraftError, match="eval.answers: base needs task: pass"):
        validate_recipe(recipe_from_dict(raw))


# ----------------------------------------------------------------------------- data.drop_unknown


def test_drop_unknown_leaves_out_what_the_base_model_gets_wrong():
    rows = [{"prompt": "a", "answerable": True, "know_check": "right"},
            {"prompt": "b", "answerable": True, "know_check": "wrong"},
            {"prompt": "c", "answerable": False, "completion": "<PASS>"}]
    assert [r["prompt"] for r in drop_unknown(rows)] == ["a", "c"]
    with pytest.raises(TokengraftError, match="none would be left"):
        drop_unknown(rows[1:])
    # a replay_gold row stays with its gold answer, known or not
    kept = {"prompt": "d", "answerable": True, "know_check": "wrong", "keep_unknown": True, "completion": "Gold."}
    assert [r["prompt"] for r in drop_unknown([*rows, kept])] == ["a", "c", "d"]
    assert drop_unknown([rows[1], kept]) == [kept]


@pytest.mark.parametrize("change, message", [
    ({"task": "lexicon", "tokens": {"add": []}}, "drop_unknown .* task lexicon has no such questions"),
    ({"data": {"generate": True, "drop_unknown": True, "know_check": True}}, "set one of them"),
    ({"methods": [{"type": "adapter"}], "train": {"kl_untokened": 1.0}}, "train.kl_untokened compares with"),
])
def test_recipe_checks_for_the_generalisation_settings(change: dict, message: str):
    raw = {"task": "pass", "tokens": {"add": ["<PASS>"]}, "data": {"generate": True, "drop_unknown": True}}
    raw.update(change)
    with pytest.raises(TokengraftError, match=message):
        validate_recipe(recipe_from_dict(raw))
    validate_recipe(recipe_from_dict({"task": "pass", "tokens": {"add": ["<PASS>"]}, "train": {"kl_untokened": 1.0},
                                      "data": {"generate": True, "drop_unknown": True, "self_answers": True}}))


def test_drop_unknown_on_a_model_that_knows_nothing_says_what_to_do(model_dir: Path, tmp_path: Path):
    recipe = _pass_recipe(model_dir, data={"drop_unknown": True})
    with pytest.raises(TokengraftError, match="none would be left; turn drop_unknown off"):
        train(recipe, tmp_path / "run", quiet=True)
