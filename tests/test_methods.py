"""The methods registry on tiny models: training, identity at step 0, targets, save/load, merge, table counts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny import tiny_config, tiny_model, tiny_tokenizer
from tokengraft.core.arch import describe
from tokengraft.errors import TokengraftError
from tokengraft.methods import apply_methods, build_spec, load_methods
from tokengraft.methods.adapter import CONTAINER
from tokengraft.methods.classification import build_classifier, head_module_name
from tokengraft.methods.prefix import takes_past_key_values
from tokengraft.cli.methods import method_table

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

FAMILIES = ["llama", "qwen2", "gpt_neox", "gpt2"]

METHODS = {
    "lora": [{"type": "lora", "r": 4, "targets": "attention_mlp"}],
    "adapter": [{"type": "adapter", "placement": "both", "bottleneck": 8}],
    "prefix": [{"type": "prefix", "num_virtual_tokens": 3}],
    "attention_only": [{"type": "freeze", "mode": "attention_only", "top_k": 1}],
    "bitfit": [{"type": "freeze", "mode": "bitfit", "top_k": 1}],
    "top_k_blocks": [{"type": "freeze", "mode": "top_k_blocks", "top_k": 1}],
    "pattern": [{"type": "freeze", "mode": "pattern", "pattern": r"\.0\.(.*norm|ln_)"}],
    "composed": [{"type": "lora", "r": 2, "targets": "attention", "top_k_blocks": 1},
                 {"type": "adapter", "placement": "post_attn", "bottleneck": 4},
                 {"type": "freeze", "mode": "top_k_blocks", "top_k": 1}],
}


def _ids(seed: int, batch: int = 2, length: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 250, (batch, length), generator=g)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.detach().clone()


def _train(model, steps: int = 2, lr: float = 1e-2) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        ids = _ids(100 + step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _applied(family: str, specs, seed: int = 0):
    model = tiny_model(family, seed=seed)
    return apply_methods(model, describe(model), specs)


# ----------------------------------------------------------------------------- every method trains


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_only_its_parameters(family: str, method: str) -> None:
    if method == "bitfit" and family == "llama":
        pytest.skip("llama has no biases (the error is tested below)")
    model, state = _applied(family, METHODS[method])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    recorded = {n for r in state.records for n in r.names}
    assert trainable == recorded and trainable
    assert state.num_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert [r.label for r in state.records] == [s["type"] for s in METHODS[method]]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _train(model)
    params = dict(model.named_parameters())
    unchanged = [n for n, t in before.items() if torch.equal(params[n], t)]
    assert not unchanged, f"trainable but not updated: {unchanged}"
    moved = [n for n, t in frozen.items() if not torch.equal(params[n], t)]
    assert not moved, f"frozen but changed: {moved}"


def test_freeze_never_touches_embeddings_or_head() -> None:
    for family in FAMILIES:
        model, _ = _applied(family, METHODS["top_k_blocks"])
        assert not model.get_input_embeddings().weight.requires_grad
        assert not model.get_output_embeddings().weight.requires_grad
    model = tiny_model("qwen2")
    with pytest.raises(TokengraftError, match="token embedding or head"):
        apply_methods(model, describe(model), [{"type": "freeze", "mode": "pattern", "pattern": "embed|lm_head"}])


# ----------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("family", FAMILIES + ["opt", "falcon", "phi3"])
def test_adapters_are_identity_at_step_zero(family: str) -> None:
    model = tiny_model(family)
    ids = _ids(1)
    base = _logits(model, ids)
    model, state = apply_methods(model, describe(model), [{"type": "adapter", "placement": "houlsby", "bottleneck": 8}])
    assert torch.equal(_logits(model, ids), base)
    container = getattr(model, CONTAINER)
    assert len(container) == 2 * 2 and set(container) == {"0_post_attn", "0_post_ffn", "1_post_attn", "1_post_ffn"}
    # The hooks are live: a non-zero up-projection changes the output.
    with torch.no_grad():
        container["1_post_ffn"].up.bias.fill_(0.1)
    assert not torch.allclose(_logits(model, ids), base)


def test_adapter_hooks_touch_only_their_model() -> None:
    """Hooks, not a patched class forward: another instance of the same class is unaffected."""
    other = tiny_model("llama", seed=3)
    ids = _ids(2)
    before = _logits(other, ids)
    model, _ = _applied("llama", [{"type": "adapter", "placement": "both", "bottleneck": 8}])
    with torch.no_grad():
        for adapter in getattr(model, CONTAINER).values():
            adapter.up.bias.fill_(0.5)
    assert torch.equal(_logits(other, ids), before)
    assert not any(n.startswith(CONTAINER) for n, _ in other.named_parameters())


def test_adapter_placement_names_and_sizes() -> None:
    pfeiffer = build_spec({"type": "adapter", "placement": "pfeiffer"})
    assert pfeiffer.sites() == ("post_ffn",)
    assert build_spec({"type": "adapter", "placement": "houlsby"}).sites() == ("post_attn", "post_ffn")
    model, state = _applied("gpt2", [{"type": "adapter", "placement": "post_attn", "reduction_factor": 16}])
    # hidden 64 / 16 = 4: per block down 64*4+4, up 4*64+64
    assert state.num_trainable == 2 * (64 * 4 + 4 + 4 * 64 + 64)
    with pytest.raises(TokengraftError, match="'bottleneck'"):
        build_spec({"type": "adapter", "bottleneck": 8, "reduction_factor": 4})


# ----------------------------------------------------------------------------- freeze modes


def test_bitfit_on_llama_is_a_clear_error() -> None:
    model = tiny_model("llama")
    with pytest.raises(TokengraftError, match=r"BitFit selects nothing: this llama model has no bias parameters in block 1; "
                                              r"choose freeze mode attention_only or lora"):
        apply_methods(model, describe(model), [{"type": "freeze", "mode": "bitfit", "top_k": 1}])


def test_bitfit_on_qwen2_selects_only_qkv_biases_of_top_blocks() -> None:
    model, state = _applied("qwen2", [{"type": "freeze", "mode": "bitfit", "top_k": 1}])
    assert set(state.records[0].names) == {f"model.layers.1.self_attn.{x}_proj.bias" for x in "qkv"}


def test_attention_only_selects_projections_with_biases() -> None:
    model, state = _applied("qwen2", [{"type": "freeze", "mode": "attention_only", "top_k": 1}])
    names = set(state.records[0].names)
    expected = {f"model.layers.1.self_attn.{x}_proj.weight" for x in "qkvo"} | \
               {f"model.layers.1.self_attn.{x}_proj.bias" for x in "qkv"}
    assert names == expected


def test_top_k_past_depth_is_an_error() -> None:
    model = tiny_model("llama")
    with pytest.raises(TokengraftError, match="'top_k' is 4 but this llama model has only 2 blocks"):
        apply_methods(model, describe(model), [{"type": "freeze", "mode": "attention_only", "top_k": 4}])


# ----------------------------------------------------------------------------- LoRA targets


def _lora_modules(model) -> set[str]:
    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A") and m.lora_A}


@pytest.mark.parametrize("family,targets,expected", [
    ("gpt2", "attention", {"attn.c_attn", "attn.c_proj"}),
    ("gpt2", "attention_mlp", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}),
    ("llama", "attention", {f"self_attn.{x}_proj" for x in "qkvo"}),
    ("llama", "attention_mlp", {f"self_attn.{x}_proj" for x in "qkvo"} | {f"mlp.{x}_proj" for x in ("gate", "up", "down")}),
    ("gpt_neox", "attention", {"attention.query_key_value", "attention.dense"}),
    ("gpt_neox", "attention_mlp", {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}),
    ("qwen2", ["q", "v"], {"self_attn.q_proj", "self_attn.v_proj"}),
    ("gpt2", ["mlp.c_proj"], {"mlp.c_proj"}),
])
def test_lora_targets_per_family(family: str, targets, expected: set[str]) -> None:
    model, _ = _applied(family, [{"type": "lora", "targets": targets}])
    blocks = describe(tiny_model(family)).blocks
    assert _lora_modules(model) == {f"{blocks}.{i}.{rel}" for i in range(2) for rel in expected}


def test_lora_top_k_blocks_and_ambiguous_names() -> None:
    model, _ = _applied("llama", [{"type": "lora", "targets": "attention", "top_k_blocks": 1}])
    assert all(n.startswith("model.layers.1.") for n in _lora_modules(model))
    model = tiny_model("gpt2")
    with pytest.raises(TokengraftError, match="'c_proj' is ambiguous"):
        apply_methods(model, describe(model), [{"type": "lora", "targets": ["c_proj"]}])


def test_lora_gpt2_conv1d_merges_to_the_same_function() -> None:
    """fan_in_fan_out must be right for Conv1D: the merged plain model computes what the LoRA model computes."""
    model, state = _applied("gpt2", [{"type": "lora", "r": 4, "targets": "attention_mlp", "dropout": 0.0}])
    _train(model, steps=2)
    ids = _ids(5)
    lora_logits = _logits(model, ids)
    assert state.mergeable
    merged = state.merge()
    assert type(merged).__name__ == "GPT2LMHeadModel" and not _lora_modules(merged)
    assert torch.allclose(_logits(merged, ids), lora_logits, atol=1e-5)
    assert not torch.allclose(_logits(tiny_model("gpt2"), ids), lora_logits, atol=1e-4)  # training did change it


# ----------------------------------------------------------------------------- prefix


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_forward_backward_generate(family: str) -> None:
    model, state = _applied(family, [{"type": "prefix", "num_virtual_tokens": 4}])
    ids = _ids(3)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    gen = model.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 3)
    assert not state.mergeable and "not a weight delta" in state.unmergeable_reason


def test_prefix_refuses_multi_query_falcon() -> None:
    model = tiny_model("falcon")
    with pytest.raises(TokengraftError, match="prefix: this falcon model has 1 KV head"):
        apply_methods(model, describe(model), [{"type": "prefix"}])


# ----------------------------------------------------------------------------- save / load / merge


@pytest.mark.parametrize("family,method", [("llama", "lora"), ("gpt2", "adapter"), ("qwen2", "bitfit"),
                                           ("gpt_neox", "composed"), ("llama", "prefix")])
def test_save_load_restores_identical_logits(tmp_path, family: str, method: str) -> None:
    model, state = _applied(family, METHODS[method])
    _train(model)
    ids = _ids(7)
    trained = _logits(model, ids)
    state.save(tmp_path)
    fresh, _ = _applied(family, METHODS[method])
    assert not torch.equal(_logits(fresh, ids), trained)  # the load below is what makes them equal
    loaded, loaded_state = load_methods(tiny_model(family), describe(tiny_model(family)), None, tmp_path)
    assert torch.equal(_logits(loaded, ids), trained)
    assert loaded_state.num_trainable == state.num_trainable


def test_load_refuses_other_specs_and_missing_tensors(tmp_path) -> None:
    model, state = _applied("qwen2", METHODS["bitfit"])
    state.save(tmp_path)
    base = tiny_model("qwen2")
    with pytest.raises(TokengraftError, match="differ from the ones requested"):
        load_methods(base, describe(base), [{"type": "freeze", "mode": "bitfit", "top_k": 2}], tmp_path)
    with pytest.raises(TokengraftError, match="has no methods.json"):
        load_methods(base, describe(base), None, tmp_path / "nowhere")


def test_merge_rules() -> None:
    model, state = _applied("llama", METHODS["attention_only"])
    assert state.mergeable and state.merge() is model
    _, state = _applied("llama", METHODS["adapter"])
    with pytest.raises(TokengraftError, match=r"cannot be folded into the base weights; export --merged is unavailable, use the run directory form \(tokengraft.load\(run_dir\)\)"):
        state.merge()


# ----------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize("d,match", [
    ({"type": "lora", "rank": 8}, "lora: unknown field 'rank'"),
    ({"type": "lora", "r": "8"}, "lora: field 'r' must be an integer"),
    ({"type": "lora", "r": 0}, "lora: field 'r' must be positive"),
    ({"type": "lora", "targets": "everything"}, "lora: field 'targets' must be one of attention"),
    ({"type": "adapter", "activation": "tanh"}, "adapter: field 'activation'"),
    ({"type": "freeze", "mode": "pattern"}, "freeze: field 'pattern' is required"),
    ({"type": "freeze", "mode": "pattern", "pattern": "("}, "freeze: field 'pattern' is not a valid regex"),
    ({"type": "dora"}, "method field 'type' must be one of"),
])
def test_build_spec_errors_name_the_field(d, match: str) -> None:
    with pytest.raises(TokengraftError, match=match):
        build_spec(d)


def test_only_one_peft_wrapping_method() -> None:
    model = tiny_model("llama")
    with pytest.raises(TokengraftError, match="only one of lora/alora/prefix"):
        apply_methods(model, describe(model), [{"type": "lora"}, {"type": "prefix"}])


def test_spec_round_trips_through_to_dict() -> None:
    for specs in METHODS.values():
        for d in specs:
            spec = build_spec(d)
            assert build_spec(spec.to_dict()) == spec


# ----------------------------------------------------------------------------- classification


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_classifier_from_causal_lm(family: str) -> None:
    lm = tiny_model(family, pad_token_id=None)
    clf = build_classifier(lm, num_labels=3, tokenizer=tiny_tokenizer())
    assert clf.config.pad_token_id == 0 and head_module_name(clf) == "score"
    lm_state = lm.state_dict()
    for name, tensor in clf.state_dict().items():
        if not name.startswith("score."):
            assert torch.equal(tensor, lm_state[name]), name
    arch = describe(clf)
    assert arch.num_blocks == 2 and arch.lora_targets["attention"]
    # head only (linear probe): no method, only the head trains
    model, state = apply_methods(clf, arch, [])
    assert [r.label for r in state.records] == ["head"] and state.num_trainable == 64 * 3
    ids = _ids(4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(input_ids=ids, labels=torch.tensor([0, 2])).loss
    loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("specs", [METHODS["lora"], METHODS["adapter"], METHODS["prefix"]])
def test_methods_apply_to_classifier(specs) -> None:
    clf = build_classifier(tiny_model("gpt2"), num_labels=2)
    if specs[0]["type"] == "prefix" and not takes_past_key_values(clf) and not takes_past_key_values(clf.transformer):
        # transformers >= 5.24 renamed the argument PEFT's classifier prefix needs: one clear refusal
        with pytest.raises(TokengraftError, match="prefix: PEFT .* cannot pass a prefix to GPT2ForSequenceClassification"):
            apply_methods(clf, describe(clf), specs)
        return
    model, state = apply_methods(clf, describe(clf), specs)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable)  # the head always trains on a classifier
    assert len(trainable) > 1
    ids = _ids(6)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert out.logits.shape == (2, 2)


# ----------------------------------------------------------------------------- the `tokengraft methods` table


@pytest.mark.parametrize("family", FAMILIES)
def test_table_counts_equal_applied_counts(family: str) -> None:
    def meta_model():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(tiny_config(family))

    arch, rows = method_table(meta_model, top_k=4)
    assert len(rows) == 14
    from tokengraft.cli.methods import default_specs

    for (label, d), row in zip(default_specs(min(4, arch.num_blocks)), rows[:-1]):
        assert row.settings == label
        model = tiny_model(family)
        if row.trainable is None:
            with pytest.raises(TokengraftError):
                apply_methods(model, describe(model), [d])
            continue
        _, state = apply_methods(model, describe(model), [d])
        assert row.trainable == state.num_trainable, label
        assert row.trainable == sum(p.numel() for p in _.parameters() if p.requires_grad)
    head = rows[-1]
    clf = build_classifier(tiny_model(family), num_labels=2)
    _, state = apply_methods(clf, describe(clf), [])
    assert head.method == "head" and head.trainable == state.num_trainable == 64 * 2


def test_methods_cli_json(capsys, tmp_path) -> None:
    from tokengraft.cli.main import main

    tiny_config("gpt2").save_pretrained(tmp_path)
    assert main(["methods", str(tmp_path), "--json", "--top-k", "1"]) == 0
    import json

    payload = json.loads(capsys.readouterr().out)
    by_settings = {r["settings"]: r for r in payload["rows"]}
    assert by_settings["bitfit k=1"]["trainable"] == 704  # gpt2 block: ln_1, c_attn, c_proj, ln_2, c_fc, mlp.c_proj biases
    assert by_settings["bottleneck 64 both"]["mergeable"] is False


def test_lora_classifier_merges_with_its_trained_head() -> None:
    clf = build_classifier(tiny_model("llama"), num_labels=2)
    model, state = apply_methods(clf, describe(clf), [{"type": "lora", "dropout": 0.0}])
    assert "classification head 'score'" in state.records[0].where
    ids = _ids(8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    trained = _logits(model, ids)
    merged = state.merge()
    assert type(merged).__name__ == "LlamaForSequenceClassification" and type(merged.score).__name__ == "Linear"
    assert torch.allclose(_logits(merged, ids), trained, atol=1e-5)


# ----------------------------------------------------------------------------- composition with token rows


@pytest.mark.parametrize("method", ["lora", "prefix", "adapter", "bitfit"])
def test_token_rows_attach_after_methods(tmp_path, method: str) -> None:
    """rows.py attaches after apply_methods: its rows train, and the methods' state does not include them."""
    from tokengraft.core.rows import attach_rows

    model, state = _applied("qwen2", METHODS[method])
    emb = model.get_input_embeddings().weight.detach()
    graft = attach_rows(model, [256, 257], emb[:2].clone(), emb[2:4].clone())
    ids = torch.tensor([[5, 6, 256, 257, 9]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    out.loss.backward()
    assert out.logits.shape[-1] == 258
    assert all(p.grad is not None for p in graft.parameters())
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == state.num_trainable + graft.num_trainable()
    state.save(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "methods.safetensors"))) == {n for r in state.records for n in r.names}


def test_applying_twice_is_refused() -> None:
    for method in ("lora", "adapter"):
        model, _ = _applied("llama", METHODS[method])
        with pytest.raises(TokengraftError, match="already applied"):
            apply_methods(model, describe(tiny_model("llama")), METHODS[method])


# ----------------------------------------------------------------------------- independent formulas


def _formula(model, arch, d: dict) -> int | None:
    """Trainable count from module shapes alone (the textbook formulas), to cross-check the applied counts."""
    from tokengraft.methods.lora import resolve_relative_targets

    spec = build_spec(d)
    block = lambda i: model.get_submodule(arch.block_path(i))  # noqa: E731
    n, h = arch.num_blocks, arch.hidden_size
    if spec.type == "lora":
        total = 0
        for rel in resolve_relative_targets(spec, arch):
            w = block(0).get_submodule(rel).weight
            total += spec.r * (w.shape[0] + w.shape[1])  # A: r x in, B: out x r (Conv1D only transposes)
        return total * n
    if spec.type == "adapter":
        b = spec.width(h)
        return len(spec.sites()) * n * (h * b + b + b * h + h)
    if spec.type == "prefix":
        kv_width = arch.attention.num_kv_heads * arch.head_dim
        return spec.num_virtual_tokens * n * 2 * kv_width
    top = range(n - spec.top_k, n)
    if spec.mode == "attention_only":
        rels = [r for r in (arch.attention.q, arch.attention.k, arch.attention.v, arch.attention.o, arch.attention.qkv) if r]
        return sum(p.numel() for i in top for r in rels for p in block(i).get_submodule(r).parameters())
    if spec.mode == "bitfit":
        return sum(p.numel() for i in top for name, p in block(i).named_parameters() if name.endswith("bias")) or None
    return sum(p.numel() for i in top for p in block(i).parameters())


def _check_formulas(make_model, top_k: int = 4) -> int:
    from tokengraft.cli.methods import default_specs

    arch, rows = method_table(make_model, top_k=top_k)
    model = make_model()
    for (label, d), row in zip(default_specs(min(top_k, arch.num_blocks)), rows[:-1]):
        assert row.trainable == _formula(model, arch, d), label
    assert rows[-1].trainable == 2 * arch.hidden_size  # score: hidden x num_labels, no bias
    return len(rows)


@pytest.mark.parametrize("family", FAMILIES + ["phi3", "opt"])
def test_table_counts_match_shape_formulas(family: str) -> None:
    def meta_model():
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(tiny_config(family))

    assert _check_formulas(meta_model) == 14


@pytest.mark.network
def test_table_counts_match_shape_formulas_builtin() -> None:
    from tokengraft.models import load_config_model

    assert _check_formulas(load_config_model) == 14
