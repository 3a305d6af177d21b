"""benchmarks/pass_probe.py: the logistic probe, its exact form as an output row, and the script end to end on a
tiny saved model (the real run is the lead's: the built-in model on issue 19's recipe)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_scripts import BENCHMARKS, load_benchmark
from tiny import tiny_model, tiny_tokenizer
from tokengraft.answer_cache import answer_keys
from tokengraft.config import load_recipe
from tokengraft.errors import TokengraftError
from tokengraft.generation import answer_hidden_states, first_answer_hidden_states, first_answer_states
from tokengraft.models import fingerprint, load_model
from tokengraft.tasks import get_task

SIZES = ["data.generate_options.n_train=60", "data.generate_options.n_validation=30",
         "data.generate_options.n_test=30", "data.generate_options.read_rows=0", "eval.batch_size=16"]


def test_the_probe_fits_and_is_exactly_an_output_row():
    bench = load_benchmark("pass_probe")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) * np.arange(1, 9) + 3.0  # unstandardised, off-centre features
    y = (x[:, 0] - 3.0 + rng.normal(size=200) > 0)
    weight, bias = bench.fit_logistic((x - x.mean(0)) / x.std(0), y, lam=0.01)
    z = (x - x.mean(0)) / x.std(0)
    p = 1 / (1 + np.exp(-(z @ weight + bias)))
    assert np.abs(z.T @ (p - y) / len(y) + 0.01 * weight).max() < 1e-8  # the optimum: the gradient vanishes
    assert abs(float(np.mean(p - y))) < 1e-8  # the unpenalised intercept
    probe = bench.fit_probe(x[:150], y[:150], x[150:], y[150:])
    assert set(probe.validation_auroc) == {f"{lam:g}" for lam in bench.LAMBDAS} and probe.train_auroc > 0.8
    row, row_bias = bench.probe_as_row(probe)
    assert np.allclose(x @ row + row_bias, probe.logits(x), rtol=0, atol=1e-9)
    with pytest.raises(Exception, match="one class"):
        bench.fit_probe(x, np.ones(200, dtype=bool), x, y)


def test_weighted_fit_is_the_fit_on_repeated_rows_and_relation_weights_balance_by_hand():
    bench = load_benchmark("pass_probe")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    y = x[:, 0] + rng.normal(size=60) > 0
    counts = rng.integers(1, 4, size=60)  # integer weights = each row repeated that many times
    weighted = bench.fit_logistic(x, y, lam=0.01, weights=counts.astype(float))
    repeated = bench.fit_logistic(np.repeat(x, counts, axis=0), np.repeat(y, counts), lam=0.01)
    assert np.allclose(weighted[0], repeated[0], atol=1e-8) and weighted[1] == pytest.approx(repeated[1], abs=1e-8)
    relations = ["a", "a", "a", "b", "b", "c", "c"]
    errors = np.array([True, False, False, True, False, True, True])  # "c": always wrong, nothing to learn inside it
    w = bench.relation_balanced_weights(relations, errors)
    assert np.allclose(w, np.array([1 / 4, 1 / 8, 1 / 8, 1 / 4, 1 / 4, 0, 0]) * 7)
    with pytest.raises(Exception, match="both right and wrong"):
        bench.relation_balanced_weights(["c", "c"], np.array([True, True]))


def test_relation_curve_draws_seeded_relation_subsets_and_scores_the_unseen_relations():
    bench = load_benchmark("pass_probe")
    rng = np.random.default_rng(2)
    split_relations = {"train": [f"r{i}" for i in range(6) for _ in range(40)], "validation": [f"r{i}" for i in range(6)
                       for _ in range(10)], "test_heldout_relations": ["new"] * 80}
    relations = {s: np.asarray(r) for s, r in split_relations.items()}
    x = {s: rng.normal(size=(len(r), 4)) for s, r in relations.items()}
    y = {s: x[s][:, 0] + 0.5 * rng.normal(size=len(x[s])) > 0 for s in x}  # the same signal in every relation
    y["train"][relations["train"] == "r5"] = True  # r5: the base model is always wrong there
    curve = bench.relation_curve(x, y, relations, [1, 3, 6], draws=4, seed=7)
    assert [len(curve[k]) for k in ("1", "3", "6")] == [4, 4, 1]  # all six relations: one draw
    for k, draws in curve.items():
        for draw in draws:
            assert len(draw["relations"]) == int(k) and draw["relations"] == sorted(set(draw["relations"]))
            assert draw["train_rows"] == 40 * int(k)
            if draw["relations"] == ["r5"]:  # one class only: nothing to learn
                assert draw["auroc"] is None
            else:
                assert draw["auroc"] > 0.8
    assert curve == bench.relation_curve(x, y, relations, [1, 3, 6], draws=4, seed=7)  # seeded
    assert curve != bench.relation_curve(x, y, relations, [1, 3, 6], draws=4, seed=8)
    with pytest.raises(Exception, match="has 6 relations"):
        bench.relation_curve(x, y, relations, [7], draws=1, seed=7)


def test_confidence_features_are_the_answer_probabilities_by_hand():
    bench = load_benchmark("pass_probe")
    records = [{"base_first_max": 0.8, "base_token_probs": [0.8, 0.5, 1.0]},
               {"base_first_max": 0.3, "base_token_probs": []}]  # stopped at once: its first maximum stands in
    x = bench.confidence_features(records)
    floor = bench.PROB_FLOOR
    assert x.shape == (2, len(bench.CONFIDENCE))
    assert np.allclose(x[0], [np.log(4.0), np.log(0.5), np.mean(np.log([0.8, 0.5, 1 - floor])), np.log(4.0)])
    assert np.allclose(x[1], [np.log(0.3 / 0.7), np.log(0.3), np.log(0.3), 0.0])


def test_hidden_states_are_what_the_head_reads_and_the_residual_stream():
    model, tok = tiny_model("llama", seed=1, num_hidden_layers=3), tiny_tokenizer()
    prompts = ["What is the capital of France?", "2 + 2?", "Who wrote Hamlet, the play?"]
    states = first_answer_hidden_states(model, tok, prompts, layers=[1, 2], batch_size=2)
    assert set(states) == {"final", "layer_1", "layer_2"} and states["final"].shape == (3, 64)
    assert torch.equal(states["final"], first_answer_states(model, tok, prompts, batch_size=2))
    for i, prompt in enumerate(prompts):  # one prompt alone, no padding: the same states
        alone = first_answer_hidden_states(model, tok, [prompt], layers=[1, 2])
        for name in states:
            assert torch.allclose(states[name][i], alone[name][0], atol=1e-5)
        ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                    add_generation_prompt=True, return_dict=True)["input_ids"]])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        assert torch.allclose(out.hidden_states[1][0, -1], alone["layer_1"][0], atol=1e-5)
        head = model.get_output_embeddings()
        assert torch.allclose(out.logits[0, -1], head(alone["final"][0]), atol=1e-4)  # "final" is what the head reads
    with pytest.raises(Exception, match="choose layers from 1 to 2"):
        first_answer_hidden_states(model, tok, prompts, layers=[3])



def test_states_over_the_answer_are_its_last_token_and_its_mean():
    model, tok = tiny_model("llama", seed=1, num_hidden_layers=3), tiny_tokenizer()
    prompts = ["What is the capital of France?", "2 + 2?", "Who wrote Hamlet, the play?"]
    answers = [tok("Paris.", add_special_tokens=False)["input_ids"], [], tok("Shakespeare wrote it", add_special_tokens=False)["input_ids"]]
    states = answer_hidden_states(model, tok, prompts, answers, layers=[2], batch_size=2)
    assert set(states) == {"final@end", "final@mean", "layer_2@end", "layer_2@mean"}
    first = first_answer_hidden_states(model, tok, prompts, layers=[2])
    head = model.get_output_embeddings()
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        prompt_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                             add_generation_prompt=True, return_dict=True)["input_ids"]
        with torch.no_grad():  # one row alone, no padding
            out = model(input_ids=torch.tensor([prompt_ids + answer]), output_hidden_states=True)
        span = slice(len(prompt_ids) - 1, len(prompt_ids) + len(answer))
        assert torch.allclose(out.hidden_states[2][0, -1], states["layer_2@end"][i], atol=1e-5)
        assert torch.allclose(out.hidden_states[2][0, span].mean(0), states["layer_2@mean"][i], atol=1e-5)
        assert torch.allclose(out.logits[0, -1], head(states["final@end"][i]), atol=1e-4)  # what the head reads there
    for name in ("final", "layer_2"):  # no answer: both read the first answer position
        assert torch.allclose(states[f"{name}@end"][1], first[name][1], atol=1e-5)
        assert torch.allclose(states[f"{name}@mean"][1], first[name][1], atol=1e-5)
    with pytest.raises(Exception, match="2 answers for 3 prompts"):
        answer_hidden_states(model, tok, prompts, answers[:2])

def _seed_answers(model_dir: Path, cache: Path, recipe_overrides: list[str]) -> int:
    """The answers cache as an earlier eval would leave it, for every other answerable question with its gold
    answer: a random tiny model answers none right, and a probe needs both classes. The rest the tiny model
    generates itself during the run."""
    recipe = load_recipe(BENCHMARKS.parent / "configs" / "pass_generalise.yaml", recipe_overrides)
    splits = get_task("pass").generate(recipe.seed, recipe.data.generate_options).splits
    rows = [r for name in ("train", "validation", "test", "test_heldout_relations")
            for r in [r for r in splits[name] if r["answerable"]][:30]][::2]
    model, tok = load_model(str(model_dir), device="cpu")
    fp = fingerprint(model)
    keys = answer_keys(model, tok, [r["prompt"] for r in rows], max_new_tokens=max(48, recipe.eval.max_new_tokens),
                       system=recipe.data.system, model_fingerprint=fp)
    entries = {k: {"text": r["completion"], "ids": tok(r["completion"], add_special_tokens=False)["input_ids"]}
               for k, r in zip(keys, rows)}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{fp}.json").write_text(json.dumps({"format": 1, "model": fp, "sha256": digest,
                                                      "entries": entries}))
    return len(entries)


def test_the_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model_dir = tmp_path / "model"
    tiny_model("llama", max_position_embeddings=1024, num_hidden_layers=4).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    overrides = [*SIZES, f"model.name={model_dir}"]
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    seeded = _seed_answers(model_dir, tmp_path / "answers", overrides)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"error_detection": {"test": {
        "n": 21, "base_errors": 10, "p_pass": {"n": 21, "auroc": 0.61, "aurc": 0.33}}}}))
    bench = load_benchmark("pass_probe")
    results = tmp_path / "results" / "pass_probe"
    args = ["--model", str(model_dir), "--limit", "30", "--results", str(results), "--run", str(run),
            *[x for o in SIZES for x in ("--set", o)]]
    assert bench.main(args) == 0
    saved = json.loads(results.with_suffix(".json").read_text())
    states = {"probe_final", "probe_layer2", "probe_final_end", "probe_final_mean", "probe_layer2_end", "probe_layer2_mean"}
    assert saved["layers"] == [2] and set(saved["probes"]) == {
        *states, "probe_confidence", *(f"{name}+confidence" for name in states)}
    assert saved["probes"]["probe_layer2_mean+confidence"]["features"] == "layer_2@mean+confidence"
    assert set(saved["splits"]) == {"train", "validation", "test", "test_heldout_relations"}
    for split in saved["splits"].values():  # the seeded half is right, the tiny model's own answers are wrong
        assert 0 < split["base_errors"] < split["n"]
    for split in ("test", "test_heldout_relations"):
        scores = saved["scores"][split]
        assert {"probe_final", "probe_layer2", "probe_final_row", "max_softmax", "min_token_prob"} <= set(scores)
        assert all(0 <= s["auroc"] <= 1 and s["n"] == saved["splits"][split]["n"]
                   for name, s in scores.items() if name != "p_pass (run)")
        better = saved["better_baseline"][split]
        assert scores[better]["auroc"] >= max(scores[b]["auroc"] for b in ("max_softmax", "min_token_prob"))
        for name, s in scores.items():  # every other per-row score against the better baseline, interval around it
            if name in (better, "p_pass (run)"):
                assert "over_baseline" not in s
                continue
            gain = s["over_baseline"]
            assert gain["gain"] == pytest.approx(s["auroc"] - scores[better]["auroc"])
            assert gain["ci95"][0] <= gain["ci95"][1] and 900 <= gain["resamples"] <= 1000
    assert saved["scores"]["test"]["p_pass (run)"]["auroc"] == 0.61
    check = saved["row_check"]  # the probe is an output row: exactly in float64, and through the model's own head
    assert check["max_abs_logit_difference"] < 1e-9
    assert check["max_abs_p_difference"] < 1e-5 and check["max_abs_margin_difference"] < 1e-3
    assert sum(p.get("detail", {}).get("cached", 0) for p in saved["phases"]) == seeded
    text = results.with_suffix(".md").read_text()
    assert saved["command"] in text and "probe_final_row" in text and "test_heldout_relations (n=30)" in text
    assert "| p_pass (run) | 0.610 / 0.330 |  | n/a / n/a |  |" in text
    assert sum(c["n"] for c in saved["train_relations"].values()) == saved["splits"]["train"]["n"]
    assert sum(c["base_errors"] for c in saved["train_relations"].values()) == saved["splits"]["train"]["base_errors"]
    assert "Base-model error rate per training relation" in text and not saved["balance_relations"]
    balanced = tmp_path / "results" / "balanced"  # the same, each training relation's errors weighed like its right answers
    assert bench.main([*args[:5], str(balanced), *args[6:], "--balance-relations", "--relation-curve", "1",
                       "--curve-draws", "2", "--curve-features", "final", "confidence"]) == 0
    saved_balanced = json.loads(balanced.with_suffix(".json").read_text())
    assert set(saved_balanced["relation_curve"]) == {"final", "confidence"}
    assert all(len(c["1"]) == 2 for c in saved_balanced["relation_curve"].values())
    assert "Relation curve" in balanced.with_suffix(".md").read_text()
    assert "relation_curve" not in saved
    with pytest.raises(Exception, match="not a feature here"):
        bench.main([*args, "--relation-curve", "1", "--curve-features", "nope"])
    with pytest.raises(Exception, match="at least one"):
        bench.main([*args, "--relation-curve", "1", "--curve-draws", "0"])
    assert saved_balanced["balance_relations"] and "--balance-relations" in balanced.with_suffix(".md").read_text()
    assert saved_balanced["scores"]["test"]["probe_final"] != saved["scores"]["test"]["probe_final"]


def test_the_retraction_benchmark_trains_keeps_its_best_validation_step_and_scores(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    model_dir = tmp_path / "model"
    tiny_model("llama", max_position_embeddings=1024, num_hidden_layers=2).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    _seed_answers(model_dir, tmp_path / "answers", [*SIZES, f"model.name={model_dir}"])
    bench = load_benchmark("pass_retract")
    results = tmp_path / "results" / "pass_retract"
    args = ["--model", str(model_dir), "--recipe", str(BENCHMARKS.parent / "configs" / "pass_generalise.yaml"),
            "--limit", "30", "--steps", "6", "--eval-every", "2", "--batch-size", "8", "--lr", "1e-2",
            "--results", str(results), *[x for o in SIZES for x in ("--set", o)]]
    assert bench.main(args) == 0
    saved = json.loads(results.with_suffix(".json").read_text())
    assert [p["step"] for p in saved["curve"]] == [0, 2, 4, 6] and sum(p["kept"] for p in saved["curve"]) == 1
    kept = next(p for p in saved["curve"] if p["kept"])
    assert kept["validation_auroc"] == max(p["validation_auroc"] for p in saved["curve"])
    assert saved["kept_validation_auroc"] == pytest.approx(kept["validation_auroc"], abs=1e-9)  # weights restored
    for split in ("test", "test_heldout_relations"):
        scores = saved["scores"][split]
        assert set(scores) == {"retraction_pass", "max_softmax", "min_token_prob"}
        assert all(0 <= s["auroc"] <= 1 and s["n"] == saved["splits"][split]["n"] for s in scores.values())
        better = saved["better_baseline"][split]
        assert "over_baseline" not in scores[better]
        gain = scores["retraction_pass"]["over_baseline"]
        assert gain["gain"] == pytest.approx(scores["retraction_pass"]["auroc"] - scores[better]["auroc"])
    text = results.with_suffix(".md").read_text()
    assert saved["command"] in text and "retraction_pass" in text and f"step {kept['step']}" in text
    with pytest.raises(SystemExit):
        bench.main([*args[:-2 * len(SIZES)], "--steps", "0"])


@pytest.mark.parametrize("read", ["last", "mean", "first"])
def test_the_retraction_read_out_reads_the_head_input_over_the_answer_whatever_the_padding(read: str):
    bench = load_benchmark("pass_retract")
    model = tiny_model("llama", num_hidden_layers=2).eval()
    scorer = bench.RetractionScorer(model, pad=0, read=read)
    torch.nn.init.normal_(scorer.readout.weight)
    short, long = bench.Example([5, 6, 7, 8], 1, False), bench.Example([9, 10, 11, 12, 13, 14, 15], 3, True)
    with torch.no_grad():
        together = scorer([short, long])
        alone = torch.cat([scorer([short]), scorer([long])])
        head_input = model(input_ids=torch.tensor([long.ids]), output_hidden_states=True).hidden_states[-1][0]
    assert torch.allclose(together, alone, atol=1e-5)  # right padding changes nothing
    first = long.first_answer_position
    read_positions = {"mean": head_input[first:], "last": head_input[-1:], "first": head_input[first:first + 1]}[read]
    assert torch.allclose(alone[1], scorer.readout(read_positions.mean(0)).squeeze(-1), atol=1e-5)
    with pytest.raises(TokengraftError, match="read must be one of"):
        bench.RetractionScorer(model, pad=0, read="middle")


def test_consistency_scores_by_hand():
    bench = load_benchmark("pass_consistency")
    assert bench.answers_agree("Paris.", "The capital of France is Paris.")
    assert bench.answers_agree("The capital of France is Paris.", "paris")
    assert not bench.answers_agree("Paris.", "Lyon.") and not bench.answers_agree("Parisian food.", "Paris")
    assert bench.answers_agree("", "")
    assert bench.disagreement("Paris.", ["Paris", "It is Paris.", "Lyon", "Marseille."]) == 0.5
    assert bench.sample_entropy(["Paris.", "paris", "PARIS!"]) == 0.0
    assert bench.sample_entropy(["a", "b", "a", "b"]) == pytest.approx(np.log(2))


def test_the_consistency_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model_dir = tmp_path / "model"
    tiny_model("llama", max_position_embeddings=1024, num_hidden_layers=2).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    sizes = [*SIZES, "eval.max_new_tokens=8"]
    monkeypatch.setenv("TOKENGRAFT_ANSWER_CACHE", str(tmp_path / "answers"))
    _seed_answers(model_dir, tmp_path / "answers", [*sizes, f"model.name={model_dir}"])
    bench = load_benchmark("pass_consistency")
    results = tmp_path / "results" / "pass_consistency"
    args = ["--model", str(model_dir), "--limit", "12", "--samples", "3", "--temperatures", "0.7", "1.5",
            "--results", str(results), *[x for o in sizes for x in ("--set", o)]]
    assert bench.main(args) == 0
    saved = json.loads(results.with_suffix(".json").read_text())
    assert set(saved["scores"]) == {"test", "test_heldout_relations"}
    for split, scores in saved["scores"].items():
        assert 0 < saved["splits"][split]["base_errors"] < saved["splits"][split]["n"] == 12
        assert set(scores) == {"max_softmax", "min_token_prob", "disagreement@0.7", "entropy@0.7",
                               "disagreement@1.5", "entropy@1.5"}
        better = saved["better_baseline"][split]
        for name, s in scores.items():
            assert 0 <= s["auroc"] <= 1 and s["n"] == 12
            assert ("over_baseline" in s) == (name != better)
    text = results.with_suffix(".md").read_text()
    assert saved["command"] in text and "entropy@1.5" in text and "test_heldout_relations (n=12" in text
    again = tmp_path / "results" / "again"  # seeded samples through the cache: the same scores
    assert bench.main([*args[:10], str(again), *args[11:]]) == 0
    assert json.loads(again.with_suffix(".json").read_text())["scores"] == saved["scores"]
    with pytest.raises(SystemExit):
        bench.main([*args, "--samples", "1"])
