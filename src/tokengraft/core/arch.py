"""Structural role discovery: where a causal LM keeps its embeddings, blocks, attention and MLP.

Every later step (freezing, BitFit, LoRA targets, row-sparse embeddings) needs the
*roles* of modules, not their names: GPT-NeoX calls the head ``embed_out``, GPT-2
uses ``Conv1D`` with transposed weights and one ``c_proj`` in attention and another
in the MLP, Phi-3 fuses q/k/v and gate/up. Using a remembered name table alone is
how LoRA setups fail silently (reference 000). So we work from structure:

- the embeddings come from ``get_input_embeddings()`` / ``get_output_embeddings()``;
  tying is decided by shared storage (Parameter identity on the meta device);
- the blocks are the ``ModuleList`` of identical-class modules holding the most
  parameters;
- inside block 0, linears are grouped by parent module and each group is parsed by
  shapes: a *writer* returns to the hidden size, its input width ``X`` says what
  the group computes (readers of width ``X``: an MLP; three readers of which two
  are narrower, or one fused reader between ``X`` and ``3X`` wide: attention).

A small name table only breaks ties between linears of identical shape (q vs o in
MHA, gate vs up); registration order is the last resort. Works on the meta device.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.quantization import logical_numel

ATTENTION_ROLES = ("q", "k", "v", "o", "qkv")
MLP_ROLES = ("up", "gate", "down")

# Leaf names that *confirm* a role. Consulted only to break ties between linears whose
# shapes fit equally well; a family missing here still works through shapes and order.
NAME_HINTS: dict[str, tuple[str, ...]] = {
    "qkv": ("qkv_proj", "query_key_value", "c_attn", "wqkv", "qkv", "in_proj", "w_pack"),
    "q": ("q_proj", "query", "wq", "q", "q_lin", "to_q"),
    "k": ("k_proj", "key", "wk", "k", "k_lin", "to_k"),
    "v": ("v_proj", "value", "wv", "v", "v_lin", "to_v"),
    "o": ("o_proj", "out_proj", "dense", "c_proj", "wo", "o", "out_lin", "to_out", "proj", "output"),
    "gate": ("gate_proj", "w1", "gate", "wi_0", "fc_gate"),
    "up": ("up_proj", "w3", "up", "wi_1", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "gate_up_proj"),
    "down": ("down_proj", "w2", "down", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "wo"),
}


@dataclass
class AttentionInfo:
    kind: str  # "MHA" | "GQA" | "MQA"
    num_heads: int | None
    num_kv_heads: int | None
    module: str | None  # block-relative path of the attention module
    q: str | None
    k: str | None
    v: str | None
    o: str | None
    qkv: str | None


@dataclass
class MLPInfo:
    module: str | None  # block-relative path of the feed-forward module; None when its linears sit in the block
    up: str | None
    gate: str | None
    down: str | None


@dataclass
class ArchInfo:
    model_type: str
    blocks: str
    num_blocks: int
    input_embedding: str
    output_embedding: str | None
    tied_embeddings: bool
    embedding_rows: int
    tokenizer_size: int | None
    padding_rows: int
    hidden_size: int
    attention: AttentionInfo
    mlp: MLPInfo
    norms: dict
    biases: dict[str, bool]
    position_embedding: str | None
    lora_targets: dict[str, list[str]]
    parameters: dict[str, int]
    linear_roles: dict[str, str]
    # Trailing, defaulted extras (constructing ArchInfo with the fields above still works).
    head_dim: int | None = None
    intermediate_size: int | None = None
    notes: list[str] = field(default_factory=list)
    # {"factor", "where"}: the embedding output is multiplied by factor (Gemma: sqrt(hidden), inside the module)
    embedding_scale: dict | None = None
    # {"sliding_window", "full_attention_layers", "sliding_attention_layers"}; None when every layer attends to all
    attention_layers: dict | None = None

    def block_path(self, i: int) -> str:
        return f"{self.blocks}.{i}"

    def top_blocks(self, k: int) -> list[int]:
        """The ``k`` highest block indices (all blocks when ``k`` exceeds their number)."""
        if k < 1:
            raise TokengraftError(f"top-k must be at least 1 (got {k})")
        return list(range(max(0, self.num_blocks - k), self.num_blocks))

    def to_dict(self) -> dict:
        """The ``inspect --json`` schema: plain JSON types, absent roles as null."""
        return asdict(self)


@dataclass
class _Linear:
    name: str  # block-relative dotted path
    in_f: int
    out_f: int
    bias: bool

    @property
    def parent(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def leaf(self) -> str:
        return self.name.rpartition(".")[2].lower()


# ----------------------------------------------------------------------------- small helpers


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always ships it today
        return None
    return Conv1D


def _linear_dims(module: nn.Module, conv1d: type | None) -> tuple[int, int] | None:
    """(in, out) of a linear layer; GPT-2's Conv1D stores its weight as (in, out)."""
    if conv1d is not None and isinstance(module, conv1d):
        nx, nf = module.weight.shape
        return int(nx), int(nf)
    if isinstance(module, nn.Linear):
        return int(module.in_features), int(module.out_features)
    return None


def _numel(module: nn.Module) -> int:
    # parameters() skips shared duplicates; a packed 4-bit weight counts the weights it holds, not its bytes
    return sum(logical_numel(p) for p in module.parameters())


def _path_of(model: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, mod in model.named_modules() if mod is target), None)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two weights are one tensor. Meta tensors have no storage: identity only."""
    if a is b:
        return True
    if a.device.type == "meta" or b.device.type == "meta" or a.shape != b.shape:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.data_ptr() == b.data_ptr()


def _base_weight(module: nn.Module | None) -> torch.Tensor | None:
    """The matrix an embedding or head module holds, under PEFT's wrappers (trainable tokens, modules_to_save)."""
    if module is None:
        return None
    inner = getattr(module, "base_layer", None) or getattr(module, "original_module", None) or module
    weight = getattr(inner, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def shares_matrix(embedding: nn.Module | None, head: nn.Module | None) -> bool:
    """Whether a head module computes with the embedding module's matrix (the test behind `is_tied`).

    Sees through PEFT's layer wrappers (their base matrices decide) and tokengraft's row
    overlays (whose ``weight`` is the frozen base matrix). Meta tensors: identity only.
    """
    a, b = _base_weight(embedding), _base_weight(head)
    return a is not None and b is not None and _same_storage(a, b)


def is_tied(model: nn.Module) -> bool:
    """Whether the model's output head computes with its input embedding matrix: one row per token to READ and WRITE.

    The one tying test of the package (a PEFT model wrapper is looked through). Decided by
    the weights, not by the config's ``tie_word_embeddings``: they can disagree, and
    describe() notes it when they do.
    """
    hf = unwrap_peft(model)
    return shares_matrix(hf.get_input_embeddings(), hf.get_output_embeddings())


def _cfg(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _hints(leaf: str) -> set[str]:
    return {role for role, names in NAME_HINTS.items() if leaf in names}


def _assign(cands: list[_Linear], roles: list[str]) -> dict[str, _Linear]:
    """Give each role one candidate of identical shape: name hints first, then registration order."""
    result: dict[str, _Linear] = {}
    left = list(cands)
    for role in roles:
        hit = next((c for c in left if role in _hints(c.leaf)), None)
        if hit is not None:
            result[role] = hit
            left.remove(hit)
    for role in roles:
        if role not in result and left:
            result[role] = left.pop(0)
    return result


def _common_parent(names: list[str]) -> str | None:
    parts = os.path.commonprefix([n.split(".")[:-1] for n in names])
    return ".".join(parts) or None


# ----------------------------------------------------------------------------- blocks and linears


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList, list[str]]:
    """The ModuleList of identical-class modules holding the most parameters."""
    uniform, mixed = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            count = _numel(mod)
            if count == 0:
                continue
            (uniform if len({type(c) for c in mod}) == 1 else mixed).append((count, name, mod))
    notes = []
    pool = uniform or mixed
    if not pool:
        raise TokengraftError(f"{type(model).__name__} has no repeated block list (nn.ModuleList); not a decoder model tokengraft understands")
    if not uniform:
        notes.append("the block list mixes module classes; roles were read from block 0 only")
    count, name, mod = max(pool, key=lambda t: t[0])
    return name, mod, notes


def _block_linears(block: nn.Module) -> list[_Linear]:
    """Linears of one block in registration order; PEFT-wrapped layers count under their own name."""
    conv1d = _conv1d_type()
    found = []
    for name, mod in block.named_modules():
        dims = _linear_dims(mod, conv1d)
        if dims is None or any(part.startswith("lora_") for part in name.split(".")):
            continue
        name = name.removesuffix(".base_layer")
        found.append(_Linear(name, dims[0], dims[1], getattr(mod, "bias", None) is not None))
    return found


# ----------------------------------------------------------------------------- parsing a group


@dataclass
class _Unit:
    kind: str  # "attention" | "mlp"
    roles: dict[str, _Linear]
    fused_gate_up: bool = False


def _parse_group(lins: list[_Linear], hidden: int, cfg_i: int | None, cfg_qkv: int | None) -> _Unit | None:
    """Read one group of sibling linears as attention or MLP from their shapes."""
    writers = [l for l in lins if l.out_f == hidden]
    strict = [l for l in writers if l.in_f != hidden]
    if len(strict) > 1 or not writers:
        return None
    # Without a widening/narrowing writer every writer is hidden->hidden, as attention's o (and
    # q) when heads x head_dim == hidden. An MLP there would need intermediate == hidden, which
    # no real model has, so such groups may only parse as attention (this keeps BERT-style
    # `attention.self.{query,key,value}` from looking like a gated MLP).
    square = not strict
    if strict:
        w = strict[0]
    else:  # q and o look alike: name hint, else the last registered
        w = next((l for l in writers if "o" in _hints(l.leaf)), writers[-1])
    x = w.in_f
    readers = [l for l in lins if l is not w and l.in_f == hidden]
    if len(readers) != len(lins) - 1:
        return None  # a linear reads neither hidden nor feeds the writer: not a shape we know
    outs = [r.out_f for r in readers]
    if len(readers) == 1:
        r, out = readers[0], outs[0]
        if out == x:
            return None if square else _Unit("mlp", {"up": r, "down": w})
        if out == 2 * x:
            # Fused gate+up (Phi-3) or fused GQA qkv with kv = q/2: names and config decide.
            qkv_like = square or "qkv" in _hints(r.leaf) or (cfg_qkv == out and (cfg_i is None or 2 * cfg_i != out))
            if not qkv_like:
                return _Unit("mlp", {"up": r, "down": w}, fused_gate_up=True)
            return _Unit("attention", {"qkv": r, "o": w})
        if x < out <= 3 * x and (out - x) % 2 == 0:
            return _Unit("attention", {"qkv": r, "o": w})
        return None
    if len(readers) == 2 and outs[0] == outs[1] == x and not square:
        picked = _assign(readers, ["gate", "up"])
        return _Unit("mlp", {**picked, "down": w})
    if len(readers) == 3:
        wide = [r for r in readers if r.out_f == x]
        narrow = [r for r in readers if r.out_f != x]
        if len(wide) == 3:  # MHA: all three alike
            return _Unit("attention", {**_assign(readers, ["q", "k", "v"]), "o": w})
        if len(wide) == 1 and len(narrow) == 2 and narrow[0].out_f == narrow[1].out_f < x:
            return _Unit("attention", {"q": wide[0], **_assign(narrow, ["k", "v"]), "o": w})
    return None


def _split_mixed(lins: list[_Linear], hidden: int) -> list[list[_Linear]]:
    """Attention and MLP linears sharing one parent: split around each widening writer."""
    strict = [l for l in lins if l.out_f == hidden and l.in_f != hidden]
    groups, used = [], set()
    for w in strict:
        sub = [w] + [l for l in lins if l.in_f == hidden and l.out_f in (w.in_f, 2 * w.in_f) and id(l) not in used and l is not w]
        used.update(id(l) for l in sub)
        groups.append(sub)
    rest = [l for l in lins if id(l) not in used]
    return groups + ([rest] if rest else [])


def _parse_block(lins: list[_Linear], hidden: int, cfg_i: int | None, cfg_qkv: int | None) -> list[_Unit]:
    by_parent: dict[str, list[_Linear]] = defaultdict(list)
    for lin in lins:
        by_parent[lin.parent].append(lin)
    units, failed = [], []
    for group in by_parent.values():
        unit = _parse_group(group, hidden, cfg_i, cfg_qkv)
        if unit is None:
            subs = [_parse_group(s, hidden, cfg_i, cfg_qkv) for s in _split_mixed(group, hidden)]
            if len(subs) > 1 and all(subs):
                units.extend(s for s in subs if s)
                continue
            failed.append(group)
        else:
            units.append(unit)
    # Projections spread over sibling modules (q/k/v in one, o in another): merge by grandparent.
    by_grand: dict[str, list[_Linear]] = defaultdict(list)
    for group in failed:
        by_grand[group[0].parent.rpartition(".")[0]].extend(group)
    for merged in by_grand.values():
        unit = _parse_group(merged, hidden, cfg_i, cfg_qkv)
        if unit is not None:
            units.append(unit)
    return units


# ----------------------------------------------------------------------------- describe


def _norm_type(module: nn.Module) -> str | None:
    """'RMSNorm' / 'LayerNorm' for a normalisation module, None for anything else."""
    cls = type(module).__name__.lower()
    is_norm = "norm" in cls or isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm))
    weight = getattr(module, "weight", None)
    if not is_norm or not isinstance(weight, torch.Tensor) or weight.dim() != 1 or list(module.children()):
        return None
    if "rms" in cls or isinstance(module, nn.RMSNorm):
        return "RMSNorm"
    if "layernorm" in cls or isinstance(module, nn.LayerNorm):
        return "LayerNorm"
    return "LayerNorm" if getattr(module, "bias", None) is not None else "RMSNorm"


def _heads(config: Any, q_size: int | None, kv_size: int | None, notes: list[str]) -> tuple[str, int | None, int | None, int | None]:
    """Attention kind and head counts: config values checked against projection widths."""
    heads = _cfg(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    head_dim = _cfg(config, "head_dim", "kv_channels")
    if head_dim is None and heads and q_size:
        head_dim = q_size // heads
    if heads is None and head_dim and q_size and q_size % head_dim == 0:
        heads = q_size // head_dim
    kv_cfg = _cfg(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num")
    if kv_cfg is None and getattr(config, "multi_query", False):
        kv_cfg = 1
    kv_heads = kv_cfg
    if head_dim and kv_size and kv_size % head_dim == 0:
        kv_heads = kv_size // head_dim  # the weights are the truth (Falcon's config keeps num_kv_heads=heads under multi_query)
        if kv_cfg is not None and kv_cfg != kv_heads:
            notes.append(f"config says {kv_cfg} key/value heads but the k/v projections hold {kv_heads}; using {kv_heads}")
    if kv_heads is None and heads is not None:
        kv_heads = heads
    if heads is not None and kv_heads is not None:
        kind = "MHA" if kv_heads == heads else "MQA" if kv_heads == 1 else "GQA"
    else:
        kind = "MHA" if q_size is not None and q_size == kv_size else "GQA"
    return kind, heads, kv_heads, head_dim


def _norms(model: nn.Module, blocks_path: str, block: nn.Module) -> dict:
    """Block norms (type, block-relative names, any bias) and the final norm outside the blocks."""
    types: dict[str, str] = {}
    bias = False
    for name, mod in block.named_modules():
        kind = _norm_type(mod) if name else None
        if kind:
            types[name] = kind
            bias = bias or getattr(mod, "bias", None) is not None
    # The last norm outside the blocks, skipping embedding norms (BLOOM's word_embeddings_layernorm).
    final = [n for n, m in model.named_modules()
             if n != blocks_path and not n.startswith(blocks_path + ".") and _norm_type(m)
             and "emb" not in n.rpartition(".")[2]]
    return {"type": "/".join(sorted(set(types.values()))) or None, "names": list(types),
            "final": final[-1] if final else None, "bias": bias}


def _parameters(model: nn.Module, emb: nn.Module, head: nn.Module | None, blocks: nn.ModuleList, position: str | None) -> dict[str, int]:
    """Counts by role; ``head`` is None when tied, so a shared matrix is counted once (as embedding)."""
    counts = {
        "total": _numel(model), "embedding": _numel(emb), "head": _numel(head) if head is not None else 0,
        "blocks": _numel(blocks), "position_embedding": _numel(model.get_submodule(position)) if position else 0,
    }
    counts["per_block"] = counts["blocks"] // len(blocks)
    counts["other"] = counts["total"] - sum(counts[k] for k in ("embedding", "head", "blocks", "position_embedding"))
    return counts


def scale_inside(embedding: nn.Module | None) -> float | None:
    """The factor an embedding module multiplies its looked-up rows by, when it scales inside (else None).

    Gemma's ``*ScaledWordEmbedding`` keeps ``sqrt(hidden)`` as a Python float
    (``scalar_embed_scale``, readable on the meta device) and as a non-persistent
    ``embed_scale`` buffer; the stored matrix is unscaled. Looked for under PEFT's and
    tokengraft's wrappers too.
    """
    module = embedding
    while module is not None:
        for attr in ("scalar_embed_scale", "embed_scale"):
            value = getattr(module, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, torch.Tensor) and value.numel() == 1 and value.device.type != "meta":
                return float(value)
        module = getattr(module, "base", None) or getattr(module, "base_layer", None) or getattr(module, "original_module", None)
    return None


# Config fields of models that multiply the embedding output outside the embedding module.
_OUTSIDE_SCALES = ("embedding_multiplier", "scale_emb")


def _embedding_scale(embedding: nn.Module, config: Any, hidden: int) -> dict | None:
    factor = scale_inside(embedding)
    if factor is not None:
        how = "sqrt(hidden_size)" if abs(factor - hidden ** 0.5) < 1e-4 * factor else None
        return {"factor": factor, "of": how, "where": "inside the input embedding module (the stored matrix is unscaled)"}
    for name in _OUTSIDE_SCALES:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value != 1:
            return {"factor": float(value), "of": f"config.{name}", "where": "after the input embedding module"}
    return None


def _attention_layers(config: Any, num_blocks: int) -> dict | None:
    """Which layers use a sliding window and which attend to everything, from the config."""
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if kinds:
        kinds = list(kinds)
        sliding = [i for i, kind in enumerate(kinds) if kind == "sliding_attention"]
        if not sliding:
            return None
        full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
        other = {kind for kind in kinds if kind not in ("sliding_attention", "full_attention")}
        result = {"sliding_window": window, "full_attention_layers": full, "sliding_attention_layers": sliding}
        if other:
            result["other_layer_types"] = sorted(other)
        return result
    if window and getattr(config, "use_sliding_window", True) is not False:
        return {"sliding_window": window, "full_attention_layers": [], "sliding_attention_layers": list(range(num_blocks))}
    return None


def describe(model: nn.Module, tokenizer: Any = None) -> ArchInfo:
    """Discover a causal LM's structure by roles; works on real and meta-device models."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    notes: list[str] = []

    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    if emb is None or not isinstance(getattr(emb, "weight", None), torch.Tensor):
        raise TokengraftError(f"{type(model).__name__} exposes no input embedding (get_input_embeddings); not a causal LM tokengraft understands")
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    emb_path = _path_of(model, emb) or ""
    head_path = _path_of(model, head) if head is not None else None
    tied = shares_matrix(emb, head)
    if bool(getattr(text_config, "tie_word_embeddings", False)) != tied and head is not None:
        notes.append(f"config tie_word_embeddings={getattr(text_config, 'tie_word_embeddings', None)} but the weights are {'shared' if tied else 'separate'}; the weights win")

    blocks_path, blocks, block_notes = _find_blocks(model)
    notes += block_notes
    lins = _block_linears(blocks[0])
    hidden = _cfg(text_config, "hidden_size", "n_embd", "d_model", "dim") or int(emb.weight.shape[1])
    if lins and not any(l.in_f == hidden for l in lins):
        widths = [l.in_f for l in lins]
        hidden = max(set(widths), key=widths.count)

    cfg_i = _cfg(text_config, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff")
    heads_cfg = _cfg(text_config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    kv_cfg = _cfg(text_config, "num_key_value_heads", "num_kv_heads", "n_head_kv")
    hd_cfg = _cfg(text_config, "head_dim") or (hidden // heads_cfg if heads_cfg else None)
    cfg_qkv = (heads_cfg + 2 * (kv_cfg or heads_cfg)) * hd_cfg if heads_cfg and hd_cfg else None
    units = _parse_block(lins, hidden, cfg_i, cfg_qkv)

    roles: dict[str, str] = {l.name: "other" for l in lins}
    for unit in units:
        for role, lin in unit.roles.items():
            roles[lin.name] = role
    attn = next((u for u in units if u.kind == "attention"), None)
    mlp = next((u for u in units if u.kind == "mlp"), None)
    if attn is None:
        notes.append("no attention projections recognised in block 0")
    if mlp is None:
        notes.append("no feed-forward projections recognised in block 0")

    def name(unit: _Unit | None, role: str) -> str | None:
        lin = unit.roles.get(role) if unit else None
        return lin.name if lin else None

    q_size = kv_size = None
    if attn is not None:
        q_size = attn.roles["o"].in_f
        if "k" in attn.roles:
            kv_size = attn.roles["k"].out_f
        elif "qkv" in attn.roles:
            kv_size = (attn.roles["qkv"].out_f - q_size) // 2
    kind, heads, kv_heads, head_dim = _heads(text_config, q_size, kv_size, notes)
    attention = AttentionInfo(
        kind=kind, num_heads=heads, num_kv_heads=kv_heads,
        module=_common_parent([l.name for l in attn.roles.values()]) if attn else None,
        q=name(attn, "q"), k=name(attn, "k"), v=name(attn, "v"), o=name(attn, "o"), qkv=name(attn, "qkv"),
    )
    mlp_info = MLPInfo(module=_common_parent([l.name for l in mlp.roles.values()]) if mlp else None,
                       up=name(mlp, "up"), gate=name(mlp, "gate"), down=name(mlp, "down"))
    intermediate = mlp.roles["down"].in_f if mlp else cfg_i
    if mlp is not None and mlp.fused_gate_up:
        notes.append(f"{mlp_info.up} is a fused gate+up projection (out = 2 x {intermediate}); it counts as 'up'")
    if attn is not None and "qkv" in attn.roles:
        notes.append(f"{attention.qkv} is a fused q/k/v projection; LoRA on it adapts all three")

    norms = _norms(model, blocks_path, blocks[0])

    biases: dict[str, bool] = {}
    for lin in lins:
        role = roles[lin.name]
        if role != "other":
            biases[role] = biases.get(role, False) or lin.bias
    if norms["names"]:
        biases["norm"] = norms["bias"]

    position = _position_embedding(model, emb, head, blocks_path)

    embedding_rows = int(emb.weight.shape[0])
    tokenizer_size = len(tokenizer) if tokenizer is not None else None
    padding = max(0, embedding_rows - tokenizer_size) if tokenizer_size is not None else 0
    if tokenizer_size is not None and tokenizer_size > embedding_rows:
        notes.append(f"the tokenizer has {tokenizer_size} tokens but the embedding only {embedding_rows} rows; resize before training")

    attn_names = [l.name for l in lins if roles[l.name] in ATTENTION_ROLES]
    mlp_names = [l.name for l in lins if roles[l.name] in MLP_ROLES]
    parameters = _parameters(model, emb, None if tied else head, blocks, position)

    return ArchInfo(
        embedding_scale=_embedding_scale(emb, text_config, int(hidden)),
        attention_layers=_attention_layers(text_config, len(blocks)),
        model_type=str(getattr(config, "model_type", type(model).__name__)),
        blocks=blocks_path, num_blocks=len(blocks),
        input_embedding=emb_path, output_embedding=head_path, tied_embeddings=tied,
        embedding_rows=embedding_rows, tokenizer_size=tokenizer_size, padding_rows=padding,
        hidden_size=int(hidden), attention=attention, mlp=mlp_info, norms=norms, biases=biases,
        position_embedding=position,
        lora_targets={"attention": attn_names, "attention_mlp": attn_names + mlp_names,
                      "all_linear": [l.name for l in lins]},
        parameters=parameters, linear_roles=roles,
        head_dim=head_dim, intermediate_size=intermediate, notes=notes,
    )


def _position_embedding(model: nn.Module, emb: nn.Module, head: nn.Module | None, blocks_path: str) -> str | None:
    """A learned absolute position table (GPT-2 ``wpe``, OPT ``embed_positions``), if any."""
    cands = [n for n, m in model.named_modules()
             if isinstance(m, nn.Embedding) and m is not emb and m is not head
             and not n.startswith(blocks_path + ".")]
    named = [n for n in cands if "pos" in n.rpartition(".")[2].lower() or n.endswith("wpe")]
    if named:
        return named[0]
    # An unnamed table counts only when it is sized like the context (OPT-style tables add 2 rows).
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    sized = [n for n in cands if max_pos and 0 <= model.get_submodule(n).num_embeddings - max_pos <= 2]
    return sized[0] if len(sized) == 1 else None


# ----------------------------------------------------------------------------- helpers for methods


def module_names_in_blocks(arch: ArchInfo, roles: list[str], blocks: list[int] | None = None) -> list[str]:
    """Full dotted names of the linears with ``roles`` in ``blocks`` (all blocks when None).

    Names come from block 0; blocks of one ModuleList share a class, so they repeat.
    """
    unknown = set(roles) - set(ATTENTION_ROLES) - set(MLP_ROLES) - {"other"}
    if unknown:
        raise TokengraftError(f"unknown linear role(s) {sorted(unknown)}; use q, k, v, o, qkv, up, gate, down, other")
    indices = range(arch.num_blocks) if blocks is None else blocks
    bad = [i for i in indices if not 0 <= i < arch.num_blocks]
    if bad:
        raise TokengraftError(f"block index {bad[0]} out of range: the model has {arch.num_blocks} blocks (0..{arch.num_blocks - 1})")
    chosen = [n for n, r in arch.linear_roles.items() if r in roles]
    return [f"{arch.block_path(i)}.{n}" for i in indices for n in chosen]


def linear_shapes(model: nn.Module, arch: ArchInfo, block: int = 0) -> dict[str, tuple[int, int, bool]]:
    """Block-relative linear name -> (in, out, has_bias), Conv1D's transposed weight handled."""
    found = _block_linears(model.get_submodule(arch.block_path(block)))
    return {l.name: (l.in_f, l.out_f, l.bias) for l in found}


def bias_parameter_names(model: nn.Module, arch: ArchInfo, blocks: list[int] | None = None) -> list[str]:
    """Full names of every bias parameter inside ``blocks`` (BitFit's selection); may be empty."""
    indices = range(arch.num_blocks) if blocks is None else blocks
    module_list = model.get_submodule(arch.blocks)
    names = []
    for i in indices:
        if not 0 <= i < arch.num_blocks:
            raise TokengraftError(f"block index {i} out of range: the model has {arch.num_blocks} blocks")
        for pname, _ in module_list[i].named_parameters():
            if pname == "bias" or pname.endswith(".bias"):
                names.append(f"{arch.block_path(i)}.{pname}")
    return names
