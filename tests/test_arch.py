"""Structural role discovery on tiny models of every family, on meta, and on unknown families."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from tiny import FAMILY_CONFIGS, tiny_config, tiny_model, tiny_tokenizer
import tokengraft.core.arch as arch_mod
from tokengraft.core.arch import ArchInfo, bias_parameter_names, describe, linear_shapes, module_names_in_blocks
from tokengraft.errors import TokengraftError

# What each family looks like, per its transformers implementation (block-relative names).
EXPECTED = {
    "llama": dict(blocks="model.layers", emb="model.embed_tokens", tied=True, kind="GQA", heads=(4, 2),
                  attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                  o="self_attn.o_proj", qkv=None, mlp="mlp", gate="mlp.gate_proj", up="mlp.up_proj",
                  down="mlp.down_proj", norm="RMSNorm", final="model.norm", pos=None, bias_true=set()),
    "mistral": dict(blocks="model.layers", emb="model.embed_tokens", tied=False, kind="GQA", heads=(4, 2),
                    attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                    o="self_attn.o_proj", qkv=None, mlp="mlp", gate="mlp.gate_proj", up="mlp.up_proj",
                    down="mlp.down_proj", norm="RMSNorm", final="model.norm", pos=None, bias_true=set()),
    "qwen2": dict(blocks="model.layers", emb="model.embed_tokens", tied=False, kind="GQA", heads=(4, 2),
                  attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                  o="self_attn.o_proj", qkv=None, mlp="mlp", gate="mlp.gate_proj", up="mlp.up_proj",
                  down="mlp.down_proj", norm="RMSNorm", final="model.norm", pos=None, bias_true={"q", "k", "v"}),
    "qwen3": dict(blocks="model.layers", emb="model.embed_tokens", tied=True, kind="GQA", heads=(4, 2),
                  attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                  o="self_attn.o_proj", qkv=None, mlp="mlp", gate="mlp.gate_proj", up="mlp.up_proj",
                  down="mlp.down_proj", norm="RMSNorm", final="model.norm", pos=None, bias_true=set()),
    "phi3": dict(blocks="model.layers", emb="model.embed_tokens", tied=False, kind="MHA", heads=(4, 4),
                 attn="self_attn", q=None, k=None, v=None, o="self_attn.o_proj", qkv="self_attn.qkv_proj",
                 mlp="mlp", gate=None, up="mlp.gate_up_proj", down="mlp.down_proj", norm="RMSNorm",
                 final="model.norm", pos=None, bias_true=set()),
    "gemma3_text": dict(blocks="model.layers", emb="model.embed_tokens", tied=True, kind="MQA", heads=(4, 1),
                        attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                        o="self_attn.o_proj", qkv=None, mlp="mlp", gate="mlp.gate_proj", up="mlp.up_proj",
                        down="mlp.down_proj", norm="RMSNorm", final="model.norm", pos=None, bias_true=set()),
    "gpt_neox": dict(blocks="gpt_neox.layers", emb="gpt_neox.embed_in", tied=False, kind="MHA", heads=(4, 4),
                     attn="attention", q=None, k=None, v=None, o="attention.dense", qkv="attention.query_key_value",
                     mlp="mlp", gate=None, up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", norm="LayerNorm",
                     final="gpt_neox.final_layer_norm", pos=None, bias_true={"qkv", "o", "up", "down", "norm"}),
    "gpt2": dict(blocks="transformer.h", emb="transformer.wte", tied=True, kind="MHA", heads=(4, 4),
                 attn="attn", q=None, k=None, v=None, o="attn.c_proj", qkv="attn.c_attn",
                 mlp="mlp", gate=None, up="mlp.c_fc", down="mlp.c_proj", norm="LayerNorm",
                 final="transformer.ln_f", pos="transformer.wpe", bias_true={"qkv", "o", "up", "down", "norm"}),
    "opt": dict(blocks="model.decoder.layers", emb="model.decoder.embed_tokens", tied=True, kind="MHA", heads=(4, 4),
                attn="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                o="self_attn.out_proj", qkv=None, mlp=None, gate=None, up="fc1", down="fc2", norm="LayerNorm",
                final="model.decoder.final_layer_norm", pos="model.decoder.embed_positions",
                bias_true={"q", "k", "v", "o", "up", "down", "norm"}),
    # Falcon's config keeps num_kv_heads=4 under multi_query=True; the fused projection holds one k/v head.
    "falcon": dict(blocks="transformer.h", emb="transformer.word_embeddings", tied=True, kind="MQA", heads=(4, 1),
                   attn="self_attention", q=None, k=None, v=None, o="self_attention.dense",
                   qkv="self_attention.query_key_value", mlp="mlp", gate=None, up="mlp.dense_h_to_4h",
                   down="mlp.dense_4h_to_h", norm="LayerNorm", final="transformer.ln_f", pos=None,
                   bias_true={"norm"}),
}


def test_every_tiny_family_has_an_expectation():
    assert set(EXPECTED) == set(FAMILY_CONFIGS)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_family_roles(family: str):
    exp = EXPECTED[family]
    model = tiny_model(family)
    info = describe(model, tiny_tokenizer())
    assert info.model_type == family
    assert (info.blocks, info.num_blocks) == (exp["blocks"], 2)
    assert model.get_submodule(info.blocks) is not None and len(model.get_submodule(info.blocks)) == 2
    assert info.input_embedding == exp["emb"]
    assert model.get_submodule(info.input_embedding) is model.get_input_embeddings()
    assert model.get_submodule(info.output_embedding) is model.get_output_embeddings()
    assert info.tied_embeddings is exp["tied"]
    a = info.attention
    assert (a.kind, a.num_heads, a.num_kv_heads, a.module) == (exp["kind"], *exp["heads"], exp["attn"])
    assert (a.q, a.k, a.v, a.o, a.qkv) == (exp["q"], exp["k"], exp["v"], exp["o"], exp["qkv"])
    m = info.mlp
    assert (m.module, m.gate, m.up, m.down) == (exp["mlp"], exp["gate"], exp["up"], exp["down"])
    assert info.norms["type"] == exp["norm"] and info.norms["final"] == exp["final"]
    assert info.position_embedding == exp["pos"]
    assert {role for role, has in info.biases.items() if has} == exp["bias_true"]
    # Every role the expectation names carries a bias flag; absent roles are omitted.
    present = {r for r in ("q", "k", "v", "o", "qkv", "gate", "up", "down") if exp[r]}
    assert set(info.biases) - {"norm"} == present
    # Bias flags agree with the modules themselves.
    for name, role in info.linear_roles.items():
        has = model.get_submodule(f"{info.blocks}.0.{name}").bias is not None
        assert info.biases[role] is has, (name, role)
    assert info.embedding_rows == 256 and info.tokenizer_size == 256 and info.padding_rows == 0
    assert info.hidden_size == 64
    # Parameter accounting adds up, and the head counts 0 when it shares the embedding.
    p = info.parameters
    assert p["total"] == sum(t.numel() for t in model.parameters())
    assert p["head"] == (0 if exp["tied"] else 256 * 64)
    assert p["total"] == p["embedding"] + p["head"] + p["blocks"] + p["position_embedding"] + p["other"]


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_lora_targets_select_exactly_the_role_modules(family: str):
    """PEFT's suffix matching with our block-relative names hits the intended modules in every block."""
    import warnings

    from peft import LoraConfig, get_peft_model

    model = tiny_model(family)
    info = describe(model)
    roles = {"attention": {"q", "k", "v", "o", "qkv"}, "attention_mlp": {"q", "k", "v", "o", "qkv", "up", "gate", "down"}}
    for key, wanted in roles.items():
        targets = info.lora_targets[key]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Conv1D fan_in_fan_out notice
            peft_model = get_peft_model(tiny_model(family), LoraConfig(r=2, target_modules=targets))
        wrapped = {n.removeprefix("base_model.model.") for n, mod in peft_model.named_modules() if hasattr(mod, "lora_A")}
        expected = set(module_names_in_blocks(info, sorted(wanted)))
        assert wrapped == expected, (key, wrapped ^ expected)


def test_gpt2_attention_c_proj_is_not_the_mlp_c_proj():
    info = describe(tiny_model("gpt2"))
    assert info.linear_roles == {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"}
    assert "mlp.c_proj" not in info.lora_targets["attention"]
    # Conv1D stores (in, out): the fused projection reads 64 and writes 3 x 64.
    shapes = linear_shapes(tiny_model("gpt2"), info)
    assert shapes["attn.c_attn"][:2] == (64, 192) and shapes["mlp.c_proj"][:2] == (256, 64)


def test_phi3_fused_layouts_are_explained():
    info = describe(tiny_model("phi3"))
    assert info.intermediate_size == 128
    assert any("gate_up_proj" in n and "fused" in n for n in info.notes)
    assert any("qkv_proj" in n and "fused" in n for n in info.notes)


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_meta_device_matches_real_model(family: str):
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(tiny_config(family))
    assert next(meta.parameters()).device.type == "meta"
    assert describe(meta).to_dict() == describe(tiny_model(family)).to_dict()


def test_untied_weights_win_over_the_config_flag():
    model = tiny_model("llama")  # config says tied
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    info = describe(model)
    assert info.tied_embeddings is False and info.parameters["head"] == 256 * 64
    assert any("tie_word_embeddings" in n for n in info.notes)


def test_padding_rows_counted_against_the_tokenizer():
    info = describe(tiny_model("qwen2", vocab_size=300), tiny_tokenizer(256))
    assert (info.embedding_rows, info.tokenizer_size, info.padding_rows) == (300, 256, 44)
    assert describe(tiny_model("qwen2", vocab_size=300)).padding_rows == 0  # unknown without a tokenizer


def test_block_helpers():
    model = tiny_model("qwen2", num_hidden_layers=5)
    info = describe(model)
    assert info.top_blocks(2) == [3, 4] and info.top_blocks(99) == [0, 1, 2, 3, 4]
    with pytest.raises(TokengraftError):
        info.top_blocks(0)
    names = module_names_in_blocks(info, ["q", "v"], [4])
    assert names == ["model.layers.4.self_attn.q_proj", "model.layers.4.self_attn.v_proj"]
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in module_names_in_blocks(info, ["down"]))
    assert len(module_names_in_blocks(info, ["down"])) == 5
    with pytest.raises(TokengraftError):
        module_names_in_blocks(info, ["q"], [5])
    with pytest.raises(TokengraftError):
        module_names_in_blocks(info, ["query"], [0])
    biases = bias_parameter_names(model, info, [3, 4])
    assert biases == [f"model.layers.{i}.self_attn.{p}_proj.bias" for i in (3, 4) for p in "qkv"]
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 1 for n in biases)


def test_bitfit_selects_nothing_without_biases():
    model = tiny_model("llama")
    assert bias_parameter_names(model, describe(model), [0, 1]) == []


# ----------------------------------------------------------------------------- families in no table


class OddConfig(PretrainedConfig):
    """Deliberately non-standard field names, so the config cannot tell head counts or widths."""

    model_type = "tg_oddball"

    def __init__(self, vocab_size: int = 300, width: int = 48, depth: int = 3, ffn: int = 112, kv_width: int = 24, **kw):
        self.vocab_size, self.width, self.depth, self.ffn, self.kv_width = vocab_size, width, depth, ffn, kv_width
        super().__init__(**kw)


class ScaleNorm(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.weight


class Mix(nn.Module):
    """GQA-shaped attention whose projections have names no table knows."""

    def __init__(self, c: OddConfig):
        super().__init__()
        self.fetch = nn.Linear(c.width, c.width, bias=False)  # q
        self.match = nn.Linear(c.width, c.kv_width, bias=False)  # k
        self.carry = nn.Linear(c.width, c.kv_width, bias=False)  # v
        self.emit = nn.Linear(c.width, c.width, bias=True)  # o

    def forward(self, x):
        q, k, v = self.fetch(x), self.match(x), self.carry(x)
        k, v = k.repeat(1, 1, 2), v.repeat(1, 1, 2)
        w = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.emit(w @ v)


class FF(nn.Module):
    def __init__(self, c: OddConfig):
        super().__init__()
        self.inp, self.outp = nn.Linear(c.width, c.ffn), nn.Linear(c.ffn, c.width)

    def forward(self, x):
        return self.outp(torch.relu(self.inp(x)))


class Layer(nn.Module):
    def __init__(self, c: OddConfig):
        super().__init__()
        self.n1, self.mix, self.n2, self.ff = ScaleNorm(c.width), Mix(c), ScaleNorm(c.width), FF(c)

    def forward(self, x):
        x = x + self.mix(self.n1(x))
        return x + self.ff(self.n2(x))


class Backbone(nn.Module):
    def __init__(self, c: OddConfig):
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.width)
        self.stack = nn.ModuleList(Layer(c) for _ in range(c.depth))
        self.aux = nn.ModuleList(nn.Linear(c.width, 1) for _ in range(2))  # a small decoy list


class OddForCausalLM(PreTrainedModel):
    config_class = OddConfig
    base_model_prefix = "backbone"

    def __init__(self, config: OddConfig):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.readout = nn.Linear(config.width, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.tok

    def get_output_embeddings(self):
        return self.readout

    def forward(self, input_ids, **kwargs):
        x = self.backbone.tok(input_ids)
        for layer in self.backbone.stack:
            x = layer(x)
        return CausalLMOutput(logits=self.readout(x))


def test_unknown_family_classified_by_structure():
    leaves = {"fetch", "match", "carry", "emit", "inp", "outp"}
    assert not leaves & {n for names in arch_mod.NAME_HINTS.values() for n in names}, "names must be unknown"
    model = OddForCausalLM(OddConfig())
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 300)  # a working model, not a shell
    info = describe(model, tiny_tokenizer(256))
    assert (info.blocks, info.num_blocks) == ("backbone.stack", 3)
    assert (info.input_embedding, info.output_embedding, info.tied_embeddings) == ("backbone.tok", "readout", False)
    a = info.attention
    assert (a.module, a.q, a.k, a.v, a.o, a.qkv) == ("mix", "mix.fetch", "mix.match", "mix.carry", "mix.emit", None)
    assert a.kind == "GQA" and a.num_heads is None  # no head count anywhere in this config
    assert (info.mlp.module, info.mlp.up, info.mlp.gate, info.mlp.down) == ("ff", "ff.inp", None, "ff.outp")
    assert info.hidden_size == 48 and info.intermediate_size == 112
    assert info.biases == {"q": False, "k": False, "v": False, "o": True, "up": True, "down": True, "norm": False}
    assert info.norms["names"] == ["n1", "n2"] and info.norms["type"] == "RMSNorm"
    assert info.padding_rows == 44
    assert info.lora_targets["attention"] == ["mix.fetch", "mix.match", "mix.carry", "mix.emit"]


def test_brief_style_unknown_names_wq_wout():
    """backbone.stack[i].mix.{wq,wk,wv,wout} and ff.{inp,outp}: `wout` is in no table either."""
    model = OddForCausalLM(OddConfig())
    for layer in model.backbone.stack:
        mix = layer.mix
        mix.wq, mix.wk, mix.wv, mix.wout = mix.fetch, mix.match, mix.carry, mix.emit
        del mix.fetch, mix.match, mix.carry, mix.emit
    info = describe(model)
    a = info.attention
    assert (a.q, a.k, a.v, a.o) == ("mix.wq", "mix.wk", "mix.wv", "mix.wout")


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2", "gemma3_text", "falcon"])
def test_shapes_alone_suffice_for_gqa_and_fused_layouts(family: str, monkeypatch):
    """With the name table emptied, structure and registration order still give the same roles
    wherever shapes differ (GQA/MQA, fused qkv, non-gated MLP)."""
    model = tiny_model(family)
    with_names = describe(model)
    monkeypatch.setattr(arch_mod, "NAME_HINTS", {})
    without = describe(model)
    if family == "opt":  # MHA registered k, v, q, out_proj: equal shapes need names; only the order guess differs
        assert without.attention.o == "self_attn.out_proj" and without.mlp == with_names.mlp
        assert without.attention.q == "self_attn.k_proj"  # documents the limit of order alone
    else:
        assert without.linear_roles == with_names.linear_roles


def test_real_family_outside_the_table_ctrl():
    """CTRL keeps its MLP as nn.Sequential (ffn.0 / ffn.2): no name table has those."""
    cfg = AutoConfig.for_model("ctrl", n_embd=64, n_layer=2, n_head=4, dff=128, vocab_size=256, n_positions=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    info = describe(model)
    assert (info.blocks, info.input_embedding, info.tied_embeddings) == ("transformer.h", "transformer.w", True)
    assert (info.mlp.module, info.mlp.up, info.mlp.down, info.mlp.gate) == ("ffn", "ffn.0", "ffn.2", None)
    a = info.attention
    assert (a.module, a.o, a.kind) == ("multi_head_attention", "multi_head_attention.dense", "MHA")
    assert {a.q, a.k, a.v} == {f"multi_head_attention.W{x}" for x in "qkv"}


def test_not_a_decoder_is_a_clear_error():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return None

    with pytest.raises(TokengraftError, match="block list"):
        describe(NoBlocks())


def test_to_dict_is_json_ready():
    import json

    info = describe(tiny_model("qwen2"))
    assert isinstance(info, ArchInfo)
    data = json.loads(json.dumps(info.to_dict()))
    assert data["attention"]["q"] == "self_attn.q_proj" and data["mlp"]["down"] == "mlp.down_proj"
    assert info.block_path(1) == "model.layers.1"


def test_projections_spread_over_sibling_modules_bert_decoder():
    """BERT as a decoder keeps q/k/v in `attention.self`, o in `attention.output`, and the MLP
    halves in `intermediate` / `output`: groups that only make sense merged."""
    cfg = AutoConfig.for_model("bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=128, vocab_size=256, is_decoder=True)
    info = describe(AutoModelForCausalLM.from_config(cfg))
    assert info.blocks == "bert.encoder.layer"
    assert info.linear_roles == {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                                 "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"}
    assert info.attention.module == "attention" and info.mlp.module is None
    assert info.position_embedding == "bert.embeddings.position_embeddings"


class FlatLayer(nn.Module):
    """Attention and MLP projections as direct siblings in the block (no sub-modules)."""

    def __init__(self, c: OddConfig):
        super().__init__()
        self.a1, self.a2, self.a3 = (nn.Linear(c.width, w, bias=False) for w in (c.width, c.kv_width, c.kv_width))
        self.a4 = nn.Linear(c.width, c.width, bias=False)
        self.f1, self.f2 = nn.Linear(c.width, c.ffn), nn.Linear(c.width, c.ffn)
        self.f3 = nn.Linear(c.ffn, c.width)


def test_flat_block_splits_attention_from_mlp():
    model = OddForCausalLM(OddConfig())
    model.backbone.stack = nn.ModuleList(FlatLayer(model.config) for _ in range(3))
    info = describe(model)
    assert info.linear_roles == {"a1": "q", "a2": "k", "a3": "v", "a4": "o", "f1": "gate", "f2": "up", "f3": "down"}
    assert info.attention.module is None and info.mlp.module is None


def test_peft_wrapped_layers_keep_their_names():
    from peft import LoraConfig, get_peft_model

    base = tiny_model("qwen2")
    expected = describe(base).linear_roles
    wrapped = get_peft_model(tiny_model("qwen2"), LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    assert describe(wrapped.base_model.model).linear_roles == expected
