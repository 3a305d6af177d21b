"""task: classification end to end on tiny models: the generator, labels, training with each
injection point of reference 002 (post-attention adapter, post-FFN adapter, LoRA on attention,
head only), frozen weights, reloading, accuracy, and `compare`.

Every run is a real ``train()`` on a tiny random model saved to a temporary directory, with
JSONL rows written here; nothing is mocked. Accuracy is recomputed independently: one
unpadded forward per row through the reloaded classifier.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import tokengraft
from tokengraft.api import train
from tokengraft.cli.main import main
from tokengraft.config import recipe_from_dict, validate_recipe
from tokengraft.data import ClassificationCollator
from tokengraft.errors import TokengraftError
from tokengraft.evaluation.classification import evaluate_classification
from tokengraft.core.graft import TokenSettings
from tokengraft.methods.spec import canonical_name
from tokengraft.methods.spec import unwrap_peft as unwrap
from tokengraft.tasks import check_disjoint
from tokengraft.tasks.classify_data import CORRUPTED, generate_splits, label_set
from tokengraft.training.classifier import build_classifier_graft
from tiny import tiny_model, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS: dict[str, list[dict[str, Any]]] = {
    "post_attn_adapter": [{"type": "adapter", "placement": "post_attn", "bottleneck": 8}],
    "post_ffn_adapter": [{"type": "adapter", "placement": "post_ffn", "bottleneck": 8}],
    "lora_attention": [{"type": "lora", "targets": "attention", "r": 4, "alpha": 8, "dropout": 0.0}],
    "head_only": [],
}
WORDS = ["red cat", "blue dog", "green owl", "pink fox"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_rows(n: int, offset: int = 0, token: str | None = None) -> list[dict[str, Any]]:
    """Three string classes; texts of different lengths so batches need padding."""
    rows = []
    for i in range(offset, offset + n):
        label = ("alpha", "beta", "gamma")[i % 3]
        text = f"{WORDS[i % 4]} {label[:2]} {'x' * (i % 5)} {i}"
        rows.append({"text": f"{token} {text}" if token and i % 2 == 0 else text, "label": label})
    return rows


def save_tiny(directory: Path, family: str) -> Path:
    tiny_model(family).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    return {f: save_tiny(tmp_path_factory.mktemp(f), f) for f in ("llama", "gpt2")}


def make_recipe(root: Path, model_dir: Path, methods: list[dict[str, Any]], *, tokens: list[str] | None = None,
                rows: list[dict[str, Any]] | None = None, **train_cfg: Any):
    token = tokens[0] if tokens else None
    data = write_jsonl(root / "in" / "train.jsonl", rows if rows is not None else toy_rows(16, token=token))
    validation = write_jsonl(root / "in" / "validation.jsonl", toy_rows(8, offset=100))
    settings = {"max_steps": 2, "batch_size": 4, "save_steps": 0, "logging_steps": 1, "eval_steps": 2,
                "warmup_ratio": 0.0, "lr": 1e-2, "token_lr": 1e-2}
    settings.update(train_cfg)
    recipe = recipe_from_dict({
        "seed": 5, "task": "classification", "model": {"name": str(model_dir), "device": "cpu"},
        "tokens": {"add": tokens or []}, "methods": methods,
        "data": {"train": str(data), "validation": str(validation), "max_length": 64}, "train": settings})
    validate_recipe(recipe)
    return recipe


def independent_accuracy(run: Path, rows: list[dict[str, Any]]) -> float:
    """One forward per row, no padding, no batching: argmax of the head at the last token."""
    model, tokenizer = tokengraft.load(run)
    names = json.loads((run / "labels.json").read_text())["labels"]
    right = 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([tokenizer(row["text"])["input_ids"]])
            right += names[int(model(input_ids=ids).logits[0].argmax())] == row["label"]
    return right / len(rows)


# ----------------------------------------------------------------------------- data


def test_generator_is_seeded_disjoint_and_holds_unseen_corruptions():
    a = generate_splits(seed=3, n_train=60, n_validation=20, n_test=40)
    assert a == generate_splits(seed=3, n_train=60, n_validation=20, n_test=40)
    assert a != generate_splits(seed=4, n_train=60, n_validation=20, n_test=40)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [60, 20, 40]
    check_disjoint(a)  # entities and templates never straddle splits
    assert {r["label"] for r in a["train"]} == {"capital", "arithmetic", "fact", CORRUPTED}
    for row in a["test"]:
        assert (row["label"] == CORRUPTED) == (row["kind"] != "answerable")
    assert {r["kind"] for r in a["test"]} - {r["kind"] for r in a["train"]}  # corruption kinds unseen in training
    binary = generate_splits(seed=3, n_train=40, n_validation=10, n_test=10, scheme="answerable")
    assert {r["label"] for r in binary["train"]} == {"answerable", CORRUPTED}
    with pytest.raises(TokengraftError, match="scheme"):
        generate_splits(scheme="topic")


def test_labels_ids_and_refusals():
    names = label_set([("b", "f:1"), ("a", "f:2"), ("c", "f:3")])
    assert names.names == ["a", "b", "c"] and names.to_id("c", "x") == 2
    ints = label_set([(2, "f:1"), (0, "f:2")])
    assert ints.num_labels == 3 and ints.to_id(1, "x") == 1
    with pytest.raises(TokengraftError, match="mix integers"):
        label_set([(1, "f:1"), ("a", "f:2")])
    with pytest.raises(TokengraftError, match="at least two classes"):
        label_set([("a", "f:1"), ("a", "f:2")])
    with pytest.raises(TokengraftError, match="f:9: label 'z' never occurs"):
        names.to_id("z", "f:9")
    with pytest.raises(TokengraftError, match="integer class id or a string"):
        label_set([(True, "f:1"), (False, "f:2")])


def test_collator_pads_with_the_classifier_pad_id():
    batch = ClassificationCollator(pad_id=7)([{"input_ids": [5, 6, 9], "labels": 1}, {"input_ids": [4], "labels": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 9], [4, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


# ----------------------------------------------------------------------------- training per method


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_trains_each_injection_point(tmp_path, model_dirs, family, method):
    recipe = make_recipe(tmp_path, model_dirs[family], METHODS[method])
    run = tmp_path / "run"
    result = train(recipe, run, quiet=True)
    meta = json.loads((run / "graft.json").read_text())
    assert meta["task"] == "classification" and meta["num_labels"] == 3 and meta["trainable_ids"] == []
    assert json.loads((run / "labels.json").read_text())["labels"] == ["alpha", "beta", "gamma"]
    evals = [h for h in result.log_history if "eval_accuracy" in h]
    assert evals and 0.0 <= evals[-1]["eval_accuracy"] <= 1.0

    # Frozen backbone: bit-identical to the LM it came from.
    lm = tiny_model(family)
    base = lm.state_dict()
    clf = unwrap(result.graft.model)
    compared = 0
    for name, p in clf.named_parameters():
        if p.requires_grad or name.split(".")[0] == "score" or "lora_" in name or "tokengraft_adapters" in name:
            continue
        assert torch.equal(p.detach(), base[canonical_name(name)]), name
        compared += 1
    assert compared == len([n for n, _ in lm.named_parameters() if not n.startswith("lm_head")])

    # Every trained tensor (method weights and the head) moved from its seeded initial value.
    fresh = build_classifier_graft(lm, tiny_tokenizer(), TokenSettings(add=[]), METHODS[method],
                                   result.graft.labels, seed=recipe.seed, verbose=False)
    initial = fresh.methods.tensors()
    trained = load_file(str(run / "methods.safetensors"))
    assert set(trained) == set(initial) and any("score" in n for n in trained)
    moved = {name for name, tensor in trained.items() if not torch.equal(tensor, initial[name])}
    # An adapter's `down` gets gradient only once `up` (zero at init) has moved, and then only through
    # the ReLU units alive at the pooled positions, which can all be off in a tiny random block; every
    # other tensor must move, and `down` must move somewhere.
    assert {n for n in trained if ".down." not in n} <= moved, sorted(set(trained) - moved)
    assert not any(".down." in n for n in trained) or any(".down." in n for n in moved)
    # LoRA's PEFT wrapper trains the head inside its own record (modules_to_save); otherwise it is a record of its own.
    expected = {"head_only": {"head"}, "lora_attention": {"lora"}}.get(method, {"adapter", "head"})
    assert {r.label for r in result.graft.methods.records} == expected


def test_accuracy_reload_and_cli_eval(tmp_path, model_dirs, capsys):
    recipe = make_recipe(tmp_path, model_dirs["llama"], METHODS["post_ffn_adapter"], max_steps=4, eval_steps=4)
    run = tmp_path / "run"
    train(recipe, run, quiet=True)
    test_rows = toy_rows(12, offset=200)
    write_jsonl(run / "data" / "test.jsonl", test_rows)
    metrics = evaluate_classification(run)
    assert metrics["accuracy"] == pytest.approx(independent_accuracy(run, test_rows))
    assert metrics["test_rows"] == 12
    per_class = metrics["per_class"]
    assert set(per_class) == {"alpha", "beta", "gamma"} and sum(v["rows"] for v in per_class.values()) == 12
    assert metrics["macro_accuracy"] == pytest.approx(sum(v["accuracy"] for v in per_class.values()) / 3)
    assert sum(map(sum, metrics["confusion"]["rows_true_columns_predicted"])) == 12
    capsys.readouterr()  # drop the training log lines
    assert main(["eval", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "classification" and printed["accuracy"] == metrics["accuracy"]
    assert json.loads((run / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    assert main(["generate", str(run), "hello"]) == 2  # a classifier cannot generate: one clear line
    assert "is a classification run" in capsys.readouterr().err


def test_tokens_train_input_rows_only_and_reload(tmp_path, model_dirs):
    recipe = make_recipe(tmp_path, model_dirs["gpt2"], METHODS["head_only"], tokens=["<MARK>"], max_steps=2)
    run = tmp_path / "run"
    result = train(recipe, run, quiet=True)
    g = result.graft
    assert g.settings.sides == "input" and g.rows is not None
    assert not isinstance(g.rows.output_rows, torch.nn.Parameter)  # a classifier never writes tokens
    rows = load_file(str(run / "rows.safetensors"))
    assert not torch.equal(rows["input"], g.report.init_input)  # the new token's input row trained
    write_jsonl(run / "data" / "test.jsonl", toy_rows(6, offset=300, token="<MARK>"))
    ids = torch.tensor([g.tokenizer("<MARK> red cat al 1")["input_ids"]])
    with torch.no_grad():
        live = g.model(input_ids=ids).logits
        reloaded, _ = tokengraft.load(run)
        assert torch.allclose(reloaded(input_ids=ids).logits, live, atol=1e-6)


def test_refusals(tmp_path, model_dirs):
    bad = toy_rows(8) + [{"text": "oops", "label": 3}]
    with pytest.raises(TokengraftError, match="labels mix integers"):
        train(make_recipe(tmp_path, model_dirs["llama"], [], rows=bad), tmp_path / "r1", quiet=True)
    unseen = toy_rows(8)
    for row in unseen:
        row["label"] = "alpha" if row["label"] == "gamma" else row["label"]
    with pytest.raises(TokengraftError, match=r"validation.jsonl:\d+: label 'gamma' never occurs"):
        train(make_recipe(tmp_path, model_dirs["llama"], [], rows=unseen), tmp_path / "r2", quiet=True)
    with pytest.raises(TokengraftError, match="'<UNUSED>' occurs in no training text"):
        train(make_recipe(tmp_path, model_dirs["llama"], [], tokens=["<UNUSED>"], rows=toy_rows(8)),
              tmp_path / "r3", quiet=True)
    with pytest.raises(TokengraftError, match=r"train.jsonl:9: the text ends with the pad token '<pad>'"):
        train(make_recipe(tmp_path, model_dirs["llama"], [], rows=toy_rows(8) + [{"text": "a cat<pad>", "label": "beta"}]),
              tmp_path / "r5", quiet=True)
    with pytest.raises(TokengraftError, match="classification row"):
        prompt_rows = [{"prompt": "q", "completion": "a"}] * 4
        train(make_recipe(tmp_path, model_dirs["llama"], [], rows=prompt_rows), tmp_path / "r4", quiet=True)


# ----------------------------------------------------------------------------- compare


def test_compare_two_tiny_recipes(tmp_path, model_dirs):
    import yaml

    from tokengraft.cli.compare import compare

    paths = []
    for name, methods in (("cls_adapter", METHODS["post_attn_adapter"]), ("cls_head", METHODS["head_only"])):
        recipe = make_recipe(tmp_path / name, model_dirs["llama"], methods, max_steps=1, eval_steps=1)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.to_dict()))
        paths.append(str(path))
    # The test split lives beside the first run's data, as a generator would leave it.
    write_jsonl(tmp_path / "out" / "cls_adapter" / "data" / "test.jsonl", toy_rows(9, offset=400))
    result = compare(paths, tmp_path / "out")
    table = (tmp_path / "out" / "compare.md").read_text()
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["task"] == "classification" and [r["recipe"] for r in saved["rows"]] == ["cls_adapter", "cls_head"]
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["trainable"] > 0 and row["final_eval_loss"] is not None
    adapter, head = result["rows"]
    assert adapter["trainable"] > head["trainable"] == 64 * 3  # the head alone: hidden x classes
    assert "| cls_head |" in table and "accuracy" in table.splitlines()[0]


def test_compare_own_data_keeps_each_recipes_data_and_seed(tmp_path, model_dirs):
    """--own-data: the second recipe trains on its own data with its own seed, not on the first recipe's."""
    import yaml

    from tokengraft.cli.compare import compare

    paths = []
    for name, seed in (("first", 1), ("second", 2)):
        recipe = make_recipe(tmp_path / name, model_dirs["llama"], METHODS["head_only"], max_steps=1, eval_steps=1)
        recipe.seed = seed
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.to_dict()))
        paths.append(str(path))
    for own_data, expected in ((True, [1, 2]), (False, [1, 1])):
        out = tmp_path / f"out-{own_data}"
        saved = compare(paths, out, evaluate=False, own_data=own_data)
        assert saved["own_data"] is own_data
        assert [json.loads((out / n / "graft.json").read_text())["seed"] for n in ("first", "second")] == expected
