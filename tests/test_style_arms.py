"""Issue 20's arms for style tokens that change style only, on tiny models.

- activated LoRA (`alora`): untokened prompts run the base weights bit for bit; either
  style token invokes the adapter; it agrees with PEFT's own aLoRA; saves, loads, and
  refuses a merged export;
- rows only, with ``tokens.expand`` giving a style several rows: untokened prompts are the
  base model by construction;
- LoRA + ``train.kl_untokened``: the loss holds the KL term and its gradient reaches LoRA;
- ``data.self_answers`` for the style task and the style evaluation's new metrics.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import tiny_config, tiny_model, tiny_tokenizer
from tokengraft.api import evaluate, load_graft, train
from tokengraft.config import TokenInit, TokensConfig, expansion_tokens, recipe_from_dict, validate_recipe
from tokengraft.core.arch import describe
from tokengraft.core.guard import audit
from tokengraft.core.graft import TokenSettings, graft, listed_tokens, token_settings
from tokengraft.data import ChatFormat, Collator, encode_examples
from tokengraft.errors import TokengraftError
from tokengraft.export.merged import export_merged
from tokengraft.generation import generate_batch
from tokengraft.methods import apply_methods, build_spec
from tokengraft.methods.alora import ACTIVATION_ATTR, invocation_starts
from tokengraft.methods.lora import target_module_names
from tokengraft.rundir import save_graft
from tokengraft.tasks import metrics
from tokengraft.tasks.style_data import generate_splits, label_with_base_answers, own_words_answer
from tokengraft.training.lm import LMLoss, check_plain_rows
from tokengraft.training.prepare import drop_unknown
from tokengraft.training.objectives import UntokenedKL

STYLES = ["<STYLE_TERSE>", "<STYLE_VERBOSE>"]
BASE_VOCAB = 256  # tiny_tokenizer / tiny_model
ALORA = {"type": "alora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}
PLAIN = "What is the capital of France?"


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb_lora(model) -> None:
    """LoRA's B starts at zero (the base function); give it weight so 'differs' can be seen."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def _prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    fmt = ChatFormat(tokenizer)
    return [fmt.encode_prompt(p) for p in prompts]


@pytest.fixture()
def alora_graft():
    base = tiny_model("llama")
    g = graft(copy.deepcopy(base), tiny_tokenizer(), TokenSettings(add=STYLES), [ALORA], verbose=False)
    _perturb_lora(g.model)
    g.model.eval()
    return base, g


# ----------------------------------------------------------------------------- activated LoRA


def test_alora_untokened_prompts_are_the_base_model_bit_for_bit(alora_graft):
    base, g = alora_graft
    plain = torch.tensor(_prompt_ids(g.tokenizer, [PLAIN]))
    tuned = _logits(g.model, plain)
    assert tuned.shape[-1] == BASE_VOCAB + 2
    assert torch.equal(tuned[..., :BASE_VOCAB], _logits(base, plain))
    for style in STYLES:  # either style token invokes the one adapter, from its own position onward
        ids = torch.tensor(_prompt_ids(g.tokenizer, [f"{style}\n{PLAIN}"]))
        start = int((ids[0] == g.tokenizer.convert_tokens_to_ids(style)).nonzero()[0])
        tuned = _logits(g.model, ids)
        with g.model.disable_adapter():  # the same model (rows included) with the LoRA switched off
            off = _logits(g.model, ids)
        assert torch.equal(tuned[0, :start], off[0, :start])
        assert (tuned[0, start:] - off[0, start:]).abs().amax(dim=-1).min() > 0


def test_alora_generation_untokened_equals_base_and_tokened_differs(alora_graft):
    base, g = alora_graft
    prompts = [PLAIN, f"<STYLE_VERBOSE>\n{PLAIN}", "Why is the sky blue?", f"<STYLE_TERSE>\n{PLAIN}"]
    tuned = generate_batch(g.model, g.tokenizer, prompts, max_new_tokens=6, batch_size=4)
    plain_base = generate_batch(base, tiny_tokenizer(), [prompts[0], prompts[2]], max_new_tokens=6, batch_size=2)
    with g.model.disable_adapter():
        off = generate_batch(g.model, g.tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert [tuned[0]["ids"], tuned[2]["ids"]] == [off[0]["ids"], off[2]["ids"]]
    # batched alone (other padding) the base model gives the same greedy ids
    assert [o["ids"] for o in plain_base] == [off[0]["ids"], off[2]["ids"]]
    assert tuned[1]["ids"] != off[1]["ids"] or tuned[3]["ids"] != off[3]["ids"]
    assert getattr(g.hf_model, ACTIVATION_ATTR).active == [False, True, False, True]  # after the last decode step


def test_alora_agrees_with_pefts_own_alora_for_one_invocation():
    """Same weights, one invocation: our offsets give PEFT's logits and PEFT's generation, decoding included."""
    from peft import get_peft_model

    base, tok = tiny_model("llama"), tiny_tokenizer()
    invocation = tok.encode("Q", add_special_tokens=False)
    spec = build_spec({**ALORA, "invocation": ["Q"]}).bind(tok, [])
    ours, _ = apply_methods(copy.deepcopy(base), describe(base), [spec])
    _perturb_lora(ours)
    native = get_peft_model(copy.deepcopy(base), spec.peft_config(base, describe(base), alora_invocation_tokens=invocation))
    native.load_state_dict(ours.state_dict())
    ours.eval(), native.eval()
    rows = [tok.encode("hello Q there", add_special_tokens=False), tok.encode("no invocation", add_special_tokens=False),
            tok.encode("Q at the start and Q again", add_special_tokens=False)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # left padded, as generation pads
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids, attention_mask=mask).logits,
                           native(input_ids=ids, attention_mask=mask).logits)
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(**kwargs), native.generate(**kwargs))


def test_invocation_starts_finds_the_last_occurrence_of_any_sequence():
    ids = torch.tensor([[5, 7, 9, 7, 3], [1, 2, 3, 4, 5], [9, 8, 4, 4, 2]])
    assert invocation_starts(ids, [[7]]).tolist() == [3, -1, -1]
    assert invocation_starts(ids, [[7], [3]]).tolist() == [4, 2, -1]
    assert invocation_starts(ids, [[4, 4], [9]]).tolist() == [2, -1, 2]
    assert invocation_starts(ids, [[4, 5, 6, 7, 8, 9]]).tolist() == [-1, -1, -1]


def test_alora_run_saves_loads_and_refuses_a_merged_export(tmp_path: Path):
    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    g = graft(AutoModelForCausalLM.from_pretrained(base_dir), tiny_tokenizer(), TokenSettings(add=STYLES),
              [{**ALORA, "invocation": ["<STYLE_VERBOSE>"]}], verbose=False)
    _perturb_lora(g.model)
    g.model.eval()
    save_graft(g, tmp_path / "run", base_spec=str(base_dir))
    loaded = load_graft(tmp_path / "run", device="cpu")
    tokened, plain = (torch.tensor(_prompt_ids(g.tokenizer, [p])) for p in (f"<STYLE_VERBOSE>\n{PLAIN}", PLAIN))
    assert torch.equal(_logits(loaded.model, tokened), _logits(g.model, tokened))
    assert torch.equal(_logits(loaded.model, plain)[..., :BASE_VOCAB], _logits(base, plain))
    # only <STYLE_VERBOSE> invokes this one: a terse prompt runs the base weights (LoRA-wise)
    terse = torch.tensor(_prompt_ids(g.tokenizer, [f"<STYLE_TERSE>\n{PLAIN}"]))
    with loaded.model.disable_adapter():
        off = _logits(loaded.model, terse)
    assert torch.equal(_logits(loaded.model, terse), off)
    with pytest.raises(TokengraftError, match="alora: an activated LoRA acts only from its invocation tokens onward"):
        export_merged(tmp_path / "run", tmp_path / "merged")


def test_alora_needs_resolved_tokens_except_for_planning_on_meta():
    model = tiny_model("llama")
    with pytest.raises(TokengraftError, match="invocation tokens were not resolved"):
        apply_methods(model, describe(model), [dict(ALORA)])
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(tiny_config("llama"))
        wrapped, state = apply_methods(meta, describe(meta), [dict(ALORA)])
    assert state.num_trainable > 0 and not state.mergeable
    with pytest.raises(TokengraftError, match="invocation' is empty and the recipe adds no token"):
        build_spec(dict(ALORA)).bind(tiny_tokenizer(), [])


# ----------------------------------------------------------------------------- rows only, several rows per style


def test_expand_gives_a_token_several_rows_and_leaves_untokened_prompts_alone():
    base, tok = tiny_model("llama"), tiny_tokenizer()
    plain_before = _prompt_ids(tok, [PLAIN])
    settings = token_settings(TokensConfig(add=list(STYLES), expand={"<STYLE_VERBOSE>": 3},
                                           init=TokenInit("text", "text"),
                                           init_text={"<STYLE_TERSE>": "brief", "<STYLE_VERBOSE>": "long"}))
    hidden = expansion_tokens("<STYLE_VERBOSE>", 3)
    assert hidden == ["<STYLE_VERBOSE_1>", "<STYLE_VERBOSE_2>", "<STYLE_VERBOSE_3>"]
    assert settings.add == ["<STYLE_TERSE>", "<STYLE_VERBOSE>", *hidden]
    assert settings.init_text["<STYLE_VERBOSE_2>"] == "long" and listed_tokens(settings) == STYLES
    g = graft(copy.deepcopy(base), tok, settings, [], verbose=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in settings.add}
    assert sorted(g.trainable_ids) == sorted(ids.values())  # every hidden token is a trainable row
    verbose = _prompt_ids(tok, [f"<STYLE_VERBOSE>\n{PLAIN}"])[0]
    at = verbose.index(ids["<STYLE_VERBOSE>"])
    assert verbose[at:at + 4] == [ids[t] for t in ["<STYLE_VERBOSE>", *hidden]]
    assert not set(_prompt_ids(tok, [f"<STYLE_TERSE>\n{PLAIN}"])[0]) & {ids[t] for t in hidden}
    assert _prompt_ids(tok, [PLAIN]) == plain_before  # the template renders plain prompts as before
    plain = torch.tensor(plain_before)
    assert torch.equal(_logits(g.model, plain)[..., :BASE_VOCAB], _logits(base, plain))
    # the hidden rows start from the token's own init ("long")
    rows = g.rows.state_dict()
    index = {int(i): n for n, i in enumerate(rows["ids"].tolist())}
    assert torch.equal(rows["input"][index[ids["<STYLE_VERBOSE_1>"]]], rows["input"][index[ids["<STYLE_VERBOSE>"]]])


def test_expand_works_in_the_plain_format_without_a_chat_template():
    """A base model without a template trains in the plain format (data.py), whose template takes the expansion."""
    from tokengraft.data import is_plain_template

    tok = tiny_tokenizer(with_chat_template=False)
    graft(tiny_model("llama"), tok, TokenSettings(add=STYLES, expand={"<STYLE_TERSE>": 2}), [], verbose=False)
    assert is_plain_template(tok.chat_template) and ChatFormat(tok).kind == "plain"
    rendered = tok.apply_chat_template([{"role": "user", "content": "<STYLE_TERSE>\nhi"}], add_generation_prompt=True,
                                       tokenize=False)
    assert rendered == "Question:<STYLE_TERSE><STYLE_TERSE_1><STYLE_TERSE_2>\nhi\nAnswer:"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False) == "Question: hi\nAnswer:"


def test_expand_survives_save_and_load(tmp_path: Path):
    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    g = graft(AutoModelForCausalLM.from_pretrained(base_dir), tiny_tokenizer(),
              TokenSettings(add=["<STYLE_TERSE>", "<STYLE_TERSE_1>"], expand={"<STYLE_TERSE>": 1}), [], verbose=False)
    save_graft(g, tmp_path / "run", base_spec=str(base_dir))
    loaded = load_graft(tmp_path / "run", device="cpu")
    assert loaded.settings.expand == {"<STYLE_TERSE>": 1}
    assert _prompt_ids(loaded.tokenizer, ["<STYLE_TERSE>\nhi"]) == _prompt_ids(g.tokenizer, ["<STYLE_TERSE>\nhi"])
    assert "<STYLE_TERSE><STYLE_TERSE_1>" in loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<STYLE_TERSE>\nhi"}], tokenize=False)


# ----------------------------------------------------------------------------- LoRA + KL on untokened rows


def _kl_batch(g):
    rows = [{"prompt": f"<STYLE_TERSE>\n{PLAIN}", "completion": "Paris."},
            {"prompt": PLAIN, "completion": "The capital of France is Paris."}]
    items, _ = encode_examples(rows, g.tokenizer, 128)
    return items, Collator(g.tokenizer)(items)


def test_kl_term_is_in_the_loss_and_its_gradient_reaches_lora():
    lora = {"type": "lora", "targets": "attention_mlp", "r": 4, "alpha": 8, "dropout": 0.0}
    g = graft(tiny_model("llama"), tiny_tokenizer(), TokenSettings(add=STYLES), [lora], verbose=False)
    kl = UntokenedKL(2.0, torch.tensor(sorted(g.trainable_ids)))
    items, batch = _kl_batch(g)
    assert kl.plain_rows(batch["input_ids"]).tolist() == [False, True]
    g.model.train()
    with_kl, without = LMLoss(True, kl=kl), LMLoss(True)
    # LoRA starts at the base function: the base distribution is the tuned one, KL = 0 exactly
    assert torch.equal(with_kl(g.model, batch, None)[0], without(g.model, batch, None)[0])
    _perturb_lora(g.model)
    loss, _ = with_kl(g.model, batch, None)
    plain_loss, logits = without(g.model, batch, None)
    term = loss - plain_loss
    # the term by hand: KL(base || tuned) at the plain row's completion positions, per supervised token
    keep = batch["labels"][:, 1:] != -100
    at = keep.nonzero()[:, 0] == 1
    with torch.no_grad(), g.model.disable_adapter():
        reference = g.model(input_ids=batch["input_ids"][1:], attention_mask=batch["attention_mask"][1:]).logits
    reference = reference[:, :-1][keep[1:]]
    log_t, log_b = torch.log_softmax(logits[at], -1), torch.log_softmax(reference, -1)
    expected = 2.0 * (log_b.exp() * (log_b - log_t)).sum() / keep.sum()
    assert term.item() > 0
    torch.testing.assert_close(term, expected)
    term.backward()
    grads = [p.grad for n, p in g.model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and max(float(x.abs().max()) for x in grads) > 0
    with pytest.raises(TokengraftError, match="every training row holds a grafted token"):
        check_plain_rows(items[:1], g)
    check_plain_rows(items, g)


# ----------------------------------------------------------------------------- self answers and metrics


def test_own_words_answer_keeps_the_sentence_that_answers():
    row = {"gold": "Paris", "aliases": [], "relation": "capital"}
    assert own_words_answer("The capital of France is Paris. It is lovely.", row) == "The capital of France is Paris."
    assert own_words_answer("Let me think.\nParis is the capital", row) == "Paris is the capital."
    assert own_words_answer("It is Lyon.", row) is None
    assert own_words_answer("Paris " + "and so on " * 10 + ".", row) is None  # too long to be terse
    assert own_words_answer("7 + 5 = 12", {"gold": "12", "aliases": ["twelve"], "relation": "add"}) == "7 + 5 = 12."


def test_style_self_answers_relabel_terse_rows_only():
    splits = generate_splits(seed=3, n_train=12, n_validation=2, n_test=2, n_plain=2)
    rows = [dict(r, completion=r["completion"] or "plain") for r in splits["train"]]
    asked: list[str] = []

    def answer(prompts: list[str]) -> list[str]:
        asked.extend(prompts)
        right = {r["question"]: r["gold"] for r in rows if r["style"] == "terse"}
        return [f"Well, the answer is {right[p]}. Next." if i % 2 == 0 else "I do not know." for i, p in enumerate(prompts)]

    out = label_with_base_answers(rows, answer, self_answers=True, know_check=False)
    terse = [r for r in out if r["style"] == "terse"]
    assert sorted(asked) == sorted(r["question"] for r in terse) and not any("<STYLE" in p for p in asked)
    assert [r["completion_from"] for r in terse] == ["base_model" if i % 2 == 0 else "template" for i in range(len(terse))]
    for r in terse:
        expected = f"Well, the answer is {r['gold']}." if r["base_right"] else r["gold_completion"]
        assert r["completion"] == expected
    assert [r for r in out if r["style"] != "terse"] == [r for r in rows if r["style"] != "terse"]
    asked.clear()
    again = label_with_base_answers(out, answer, self_answers=True, know_check=False)  # base answers are kept
    assert asked == [] and again == out
    with pytest.raises(ValueError, match="know_check"):
        label_with_base_answers(rows, answer, self_answers=False, know_check=True)
    # data.drop_unknown: the terse rows of questions the base model gets wrong go; verbose and plain rows stay.
    kept = drop_unknown(label_with_base_answers(rows, answer, self_answers=False, know_check=False))
    assert [r for r in kept if r["style"] != "terse"] == [r for r in rows if r["style"] != "terse"]
    assert [r["question"] for r in kept if r["style"] == "terse"] == [r["question"] for r in terse if r["base_right"]]
    assert all(r["completion"] == r["gold_completion"] for r in kept if r["style"] == "terse")


def test_style_metrics_identical_rate_and_accuracy_by_relation():
    assert metrics.identical_rate([[1, 2], [3], []], [[1, 2], [3, 4], []]) == pytest.approx(2 / 3)
    rows = [{"gold": "Paris", "relation": "capital"}, {"gold": "12", "relation": "add"},
            {"gold": "Rome", "relation": "capital"}]
    table = metrics.accuracy_by_relation(rows, {"terse": ["Paris.", "12.", "Milan."], "base": ["Lyon", "12", "Rome"]})
    assert table == {"add": {"n": 1, "terse": 1.0, "base": 1.0}, "capital": {"n": 2, "terse": 0.5, "base": 0.5}}


# ----------------------------------------------------------------------------- recipes: validation and end to end


def _style_recipe(model_dir: Path, methods: list[dict], *, tokens: dict | None = None, data: dict | None = None,
                  **train_settings):
    raw = {"seed": 5, "task": "style", "model": {"name": str(model_dir), "device": "cpu"},
           "tokens": {"add": list(STYLES), "special": False, "init": "mean", **(tokens or {})}, "methods": methods,
           "data": {"generate": True, "max_length": 400,
                    "generate_options": {"n_train": 8, "n_validation": 2, "n_test": 4, "n_untokened": 2, "n_plain": 2},
                    **(data or {})},
           "train": {"max_steps": 2, "batch_size": 4, "save_steps": 0, "eval_steps": 0, "logging_steps": 1,
                     "warmup_ratio": 0.0, **train_settings},
           "eval": {"max_new_tokens": 4, "batch_size": 4}}
    recipe = recipe_from_dict(raw)
    validate_recipe(recipe)
    return recipe


@pytest.mark.parametrize("change, message", [
    ({"methods": [{"type": "adapter"}], "train": {"kl_untokened": 1.0}}, "train.kl_untokened compares with"),
    ({"methods": [ALORA], "train": {"kl_untokened": 1.0}}, "an alora already runs untokened rows"),
    ({"tokens": {"expand": {"<STYLE_X>": 2}}}, "tokens.expand names '<STYLE_X>'"),
    ({"tokens": {"expand": {"<STYLE_TERSE>": 0}}}, "from 1 to 64"),
    ({"data": {"know_check": True}}, "it needs task: pass"),
])
def test_recipe_checks_for_the_new_settings(tmp_path: Path, change: dict, message: str):
    raw = {"task": "style", "tokens": {"add": list(STYLES), **change.get("tokens", {})},
           "methods": change.get("methods", [ALORA]), "data": {"generate": True, **change.get("data", {})},
           "train": change.get("train", {})}
    with pytest.raises(TokengraftError, match=message):
        validate_recipe(recipe_from_dict(raw))
    alora_classifier = {"task": "classification", "methods": [ALORA], "data": {"train": __file__}}
    with pytest.raises(TokengraftError, match="alora .* causal language models only"):
        validate_recipe(recipe_from_dict(alora_classifier))
    expand_classifier = {"task": "classification", "methods": [], "tokens": {"add": ["<X>"], "expand": {"<X>": 2}},
                         "data": {"train": __file__}}
    with pytest.raises(TokengraftError, match="drop tokens.expand for task classification"):
        validate_recipe(recipe_from_dict(expand_classifier))
    validate_recipe(recipe_from_dict({"task": "style", "tokens": {"add": list(STYLES)}, "data": {"generate": True,
                                      "self_answers": True}, "train": {"kl_untokened": 0.5}}))


@pytest.fixture(scope="module")
def style_model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("style-base")
    tiny_model("llama", max_position_embeddings=512).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("arm", ["alora", "alora_self_answers", "rows_expand", "lora_kl_self_answers"])
def test_style_arms_train_and_evaluate(tmp_path: Path, style_model_dir: Path, arm: str):
    lora = {"type": "lora", "targets": "attention", "r": 4, "dropout": 0.0}
    recipe = {
        "alora": lambda: _style_recipe(style_model_dir, [ALORA]),
        "alora_self_answers": lambda: _style_recipe(style_model_dir, [ALORA], data={"self_answers": True}),
        "rows_expand": lambda: _style_recipe(style_model_dir, [], tokens={"expand": {"<STYLE_VERBOSE>": 2}}),
        "lora_kl_self_answers": lambda: _style_recipe(style_model_dir, [lora], data={"self_answers": True},
                                                      kl_untokened=1.0),
    }[arm]()
    trained = train(recipe, tmp_path / arm, quiet=True)
    result = evaluate(tmp_path / arm)
    # benchmarks/compare_results.run_row (an arm reported from its run directory) counts what training counted.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from compare_results import run_row

    row = run_row(tmp_path / arm, ("length_ratio",))
    assert row["trainable"] == audit(trained.graft).trainable and row["steps"] == trained.steps
    assert row["length_ratio"] == result["length_ratio"] and row["peak_rss_mb"] is None
    for key in ("length_ratio", "verbose_longer_rate", "terse_accuracy", "verbose_accuracy", "base_accuracy",
                "untokened_identical_rate"):
        assert isinstance(result[key], float), key
    assert set(result["accuracy_by_relation"]) == {r["relation"] for r in _test_pairs(tmp_path / arm)}
    if arm != "lora_kl_self_answers":  # the base model by construction: the same greedy output, every prompt
        assert result["untokened_identical_rate"] == 1.0
    if arm.endswith("self_answers"):
        train_rows = [json.loads(line) for line in (tmp_path / arm / "data" / "train.jsonl").read_text().splitlines()]
        assert all("base_answer" in r for r in train_rows if r["style"] == "terse")


def _test_pairs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "data" / "test.jsonl").read_text().splitlines()]


def test_self_answers_on_a_given_file_keep_the_relabelled_rows_beside_the_run(tmp_path: Path, style_model_dir: Path):
    """compare hands later arms the first arm's train.jsonl: the relabelled copy is written to the run, the input kept."""
    from tokengraft.models import load_model
    from tokengraft.tasks import write_jsonl
    from tokengraft.training.prepare import prepare_data

    splits = generate_splits(seed=2, n_train=6, n_validation=2, n_test=2, n_plain=1)
    given = write_jsonl([dict(r, completion=r["completion"] or "Base words.") for r in splits["train"]],
                        tmp_path / "given" / "train.jsonl")
    before = given.read_text()
    recipe = _style_recipe(style_model_dir, [], data={"generate": False, "train": str(given), "self_answers": True,
                                                      "validation_fraction": 0.0, "generate_options": {}})
    model, tokenizer = load_model(str(style_model_dir), device="cpu")
    data = prepare_data(recipe, tmp_path / "run" / "data", tokenizer, model)
    assert data.files["train"] == tmp_path / "run" / "data" / "train.jsonl" and given.read_text() == before
    saved = [json.loads(line) for line in data.files["train"].read_text().splitlines()]
    assert saved == data.train and all("base_answer" in r for r in saved if r["style"] == "terse")


def test_plain_rows_the_base_model_answers_with_nothing_are_left_out(monkeypatch, capsys, tmp_path):
    import tokengraft.training.prepare as prepare

    rows = [{"prompt": "a?", "completion": None}, {"prompt": "b?", "completion": "kept."},
            {"prompt": "c?", "completion": None}, {"prompt": "d?", "completion": None}]
    answers = {"a?": "Alpha.", "c?": "  \n", "d?": "Delta."}  # the base model ends its turn at once on "c?"
    monkeypatch.setattr(prepare, "base_answers",
                        lambda model, tokenizer, prompts, **kwargs: [{"text": answers[p]} for p in prompts])
    recipe = _style_recipe(tmp_path, [])
    out = prepare.complete_with_base_answers(recipe, rows, tokenizer=None, model=None)
    assert [(r["prompt"], r["completion"]) for r in out] == [("a?", "Alpha."), ("b?", "kept."), ("d?", "Delta.")]
    assert "1 of 3 plain rows left out" in capsys.readouterr().out
