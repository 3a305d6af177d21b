"""Each field task end to end on the built-in model, shortened: train a few steps, evaluate a few rows.

These check that the metrics are computed and well-formed, not that they reach
their targets (the full runs' numbers live in benchmarks/).
"""

from __future__ import annotations

import json

import pytest

from tokengraft.config import load_recipe
from tokengraft.cli.demo import recipe_path
from tokengraft.api import train
from tokengraft.evaluation.generative import evaluate_run, new_token_rate
from tokengraft.rundir import load_graft, read_graft_meta, split_file
from tokengraft.tasks import read_jsonl

pytestmark = [pytest.mark.network, pytest.mark.slow]

SHORT = ["train.max_steps=3", "train.save_steps=0", "train.eval_steps=0", "train.logging_steps=1", "eval.batch_size=8"]
KEYS = {
    "pass": ["pass_recall", "false_pass_rate", "clean_accuracy", "base_clean_accuracy", "aurc", "wrong_answer_rate",
             "selective_accuracy", "coverage", "idk_recall", "idk_error_rate", "pass_bias"],
    "style": ["length_ratio", "verbose_longer_rate", "terse_accuracy", "verbose_accuracy", "base_accuracy",
              "untokened_identical_rate"],
    "lexicon": ["bits_per_byte", "base_bits_per_byte", "tokens_per_byte", "base_tokens_per_byte",
                "step0_bits_per_byte_subwords", "step0_bits_per_byte_spherical", "generated_new_token_rate",
                "continuation_new_token_rate", "test_text_new_token_rate"],
}
OPTIONS = {
    "pass": ["data.generate_options={n_train: 40, n_validation: 12, n_test: 16, relations: all, read_rows: 4}",
             "data.know_check=true"],
    "style": ["data.generate_options={n_train: 40, n_validation: 8, n_test: 8, n_untokened: 4}", "eval.max_new_tokens=24"],
    "lexicon": ["data.generate_options={min_pieces: 3, min_count: 5, max_words: 20, chunk_chars: 400}"],
}


@pytest.mark.parametrize("task", ["pass", "style", "lexicon"])
def test_task_end_to_end(task, tmp_path):
    recipe = load_recipe(recipe_path(task), SHORT + OPTIONS[task])
    run = tmp_path / task
    result = train(recipe, run, quiet=True)
    assert result.steps == 3
    metrics = evaluate_run(run, limit=8)
    assert metrics["task"] == task
    for key in KEYS[task]:
        assert isinstance(metrics[key], (int, float)), (key, metrics[key])
    assert json.loads((run / "metrics.json").read_text())["task"] == task
    assert (run / "loss.png").is_file()
    if task == "lexicon":
        assert metrics["continuation_examples"]
        # The mined words occur in the held-out text, so its tokenization uses new tokens: checked on the whole
        # split, since the first 8 texts the shortened eval reads need not contain any of the 15 mined words.
        texts = [r["text"] for r in read_jsonl(split_file(run, "test"))]
        tokenizer = load_graft(run).tokenizer
        assert new_token_rate([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
                               set(read_graft_meta(run)["trainable_ids"])) > 0
    if task == "pass":  # know-check labelled the answerable training rows with the base model's own answers
        rows = [json.loads(line) for line in (run / "data" / "train.jsonl").read_text().splitlines()]
        labelled = [r for r in rows if r.get("answerable")]
        assert labelled and all(r["know_check"] in ("right", "wrong") and "base_answer" in r for r in labelled)
        assert all(r["completion"] == ("<PASS>" if r["know_check"] == "wrong" else r["base_answer"]) for r in labelled)
        assert sum(r["kind"] == "read" for r in rows) == 4
