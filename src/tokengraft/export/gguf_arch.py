"""What differs between families in a GGUF: llama.cpp's graph name, tensor conventions, hyper-parameters.

One ``Layout`` per transformers ``model_type`` that llama.cpp can run from tensors we
write. The differences that matter, each measured against files made by llama.cpp's
own converter and against transformers' GGUF loader:

- **llama / mistral** (graph ``llama``): q and k are permuted into llama.cpp's
  interleaved rotary layout (``permute_qk``); norms are written as they are.
- **gemma3** (graph ``gemma3``, ``model_type`` ``gemma3_text``): no permutation
  (llama.cpp runs Gemma 3 with NEOX rotary, the half-split layout transformers uses);
  every ``*norm.weight`` is written as ``1 + w`` (transformers' ``Gemma3RMSNorm``
  computes ``x * (1 + w)``, llama.cpp ``x * w``; transformers subtracts the 1 on
  load); the embedding is written raw, unscaled (llama.cpp multiplies by
  ``sqrt(hidden)`` itself, as ``Gemma3TextScaledWordEmbedding`` does); a tied output
  matrix is not written (llama.cpp reads ``token_embd`` for it).

Hyper-parameters are written from ``config.json`` only for a base that did not come
from a GGUF (a base GGUF's own metadata is copied instead, see ``export.gguf``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tokengraft.errors import TokengraftError


@dataclass(frozen=True)
class Layout:
    """How one family's weights are written for llama.cpp."""

    arch: str  # the gguf package's MODEL_ARCH member name: LLAMA, GEMMA3
    permute_qk: bool  # llama's interleaved rotary layout
    norm_shift: float  # added to every ``*norm.weight`` (Gemma's RMSNorm scales by 1 + w)


LAYOUTS: dict[str, Layout] = {
    "llama": Layout(arch="LLAMA", permute_qk=True, norm_shift=0.0),
    "mistral": Layout(arch="LLAMA", permute_qk=True, norm_shift=0.0),
    "gemma3_text": Layout(arch="GEMMA3", permute_qk=False, norm_shift=1.0),
}


def layout_for(model_type: str) -> Layout:
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise TokengraftError(f"GGUF export supports {', '.join(sorted(LAYOUTS))} models; {model_type} is not "
                              "supported yet (export --merged writes a transformers checkpoint instead)") from None


def arch_name(layout: Layout) -> str:
    """llama.cpp's name for the graph (``general.architecture``)."""
    import gguf

    return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[layout.arch]]


# ----------------------------------------------------------------------------- tensors


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (halves) -> llama.cpp's (interleaved pairs), per head.

    Rows of one head are ``[x0 .. x(d/2-1), y0 .. y(d/2-1)]`` in HF and
    ``[x0, y0, x1, y1, ...]`` in llama.cpp. transformers undoes this on load with
    ``reshape(n_head, d/2, 2, ...).swapaxes(2, 1)``; this is its inverse. Works for
    weights (rows x in) and biases (rows).
    """
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def model_tensors(model: Any, layout: Layout) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of a merged model, in ``layout``'s conventions."""
    import gguf

    config = model.config
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[layout.arch], int(config.num_hidden_layers))
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    graph = arch_name(layout)
    out: list[tuple[str, np.ndarray]] = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TokengraftError(f"GGUF export does not know where {hf_name} goes in llama.cpp's {graph} layout")
        if tied and name == "output.weight":
            continue  # llama.cpp reads the output matrix from token_embd when output.weight is absent
        data = tensor.detach().float().cpu().numpy()
        if layout.permute_qk and ".attn_q." in name:
            data = permute_qk(data, n_head)
        elif layout.permute_qk and ".attn_k." in name:
            data = permute_qk(data, n_kv)
        if layout.norm_shift and hf_name.endswith("norm.weight"):
            data = data + np.float32(layout.norm_shift)
        out.append((name, np.ascontiguousarray(data, dtype=np.float32)))
    return out


# ----------------------------------------------------------------------------- hyper-parameters


def rope_parameters(config: Any) -> dict[str, Any]:
    """The rotary settings of a one-rope config (llama): ``rope_theta`` and ``rope_type`` always present."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def write_hparams(writer: Any, config: Any, layout: Layout) -> np.ndarray | None:
    """Hyper-parameters from a transformers config; returns a ``rope_freqs`` tensor when one is needed."""
    if layout.arch == "GEMMA3":
        write_gemma3_hparams(writer, config)
        return None
    return write_llama_hparams(writer, config)


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def write_llama_hparams(writer: Any, config: Any) -> np.ndarray | None:
    """Llama hyper-parameters; returns the ``rope_freqs`` tensor when llama3 rope scaling needs one."""
    import gguf

    head_dim = head_dim_of(config)
    rope = rope_parameters(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        print(f"tokengraft: warning: llama.cpp's llama graph has no sliding window; beyond {window} tokens "
              "its attention differs from transformers'", file=sys.stderr)
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "llama3":
        # llama.cpp divides each rotary frequency by a factor from `rope_freqs`; take the
        # frequencies from transformers' own llama3 rule so both compute the same angles.
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
        plain = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        return (plain / scaled.float()).numpy().astype(np.float32)
    elif kind not in ("default", None):
        raise TokengraftError(f"GGUF export does not support rope scaling {kind!r} yet (default, linear and llama3 work)")
    return None


GEMMA3_SWA_PATTERN = 6  # llama.cpp's gemma3 graph: every 6th layer full attention (llama_hparams::set_swa_pattern)
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # and the sliding layers' rope base when the file does not say


def gemma3_layer_types(n_layers: int) -> list[str]:
    """The layer pattern llama.cpp's gemma3 graph computes with (the one transformers' config defaults to)."""
    return ["sliding_attention" if (i + 1) % GEMMA3_SWA_PATTERN else "full_attention" for i in range(n_layers)]


def write_gemma3_hparams(writer: Any, config: Any) -> None:
    """Gemma 3 hyper-parameters, refusing what llama.cpp's gemma3 graph would compute differently."""
    head_dim = head_dim_of(config)
    n_layers = int(config.num_hidden_layers)
    if getattr(config, "attn_logit_softcapping", None):
        raise TokengraftError("GGUF export: llama.cpp's gemma3 graph has no attention logit soft-capping "
                              f"(config.attn_logit_softcapping={config.attn_logit_softcapping})")
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and int(scalar) != head_dim:
        raise TokengraftError(f"GGUF export: llama.cpp's gemma3 graph scales queries by 1/sqrt(head_dim={head_dim}); "
                              f"this config uses query_pre_attn_scalar={scalar}")
    window = getattr(config, "sliding_window", None)
    layer_types = list(getattr(config, "layer_types", None) or gemma3_layer_types(n_layers))
    if window and layer_types != gemma3_layer_types(n_layers):
        full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
        raise TokengraftError(f"GGUF export: llama.cpp's gemma3 graph uses full attention on every "
                              f"{GEMMA3_SWA_PATTERN}th layer; this config has it on layers {full}")
    ropes = dict(getattr(config, "rope_parameters", None) or {})
    full_rope = dict(ropes.get("full_attention", ropes))
    local_rope = dict(ropes.get("sliding_attention", {"rope_theta": GEMMA3_LOCAL_ROPE_BASE}))
    for kind, rope in (("full", full_rope), ("sliding", local_rope)):
        if rope.get("rope_type", "default") not in ("default", None):
            raise TokengraftError(f"GGUF export does not support rope scaling {rope['rope_type']!r} on gemma3's "
                                  f"{kind}-attention layers yet")
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(float(full_rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    local = float(local_rope.get("rope_theta", GEMMA3_LOCAL_ROPE_BASE))
    if local != GEMMA3_LOCAL_ROPE_BASE:
        print(f"tokengraft: warning: the sliding layers' rope base {local} is written as rope.freq_base_swa, "
              f"which older llama.cpp builds ignore (they use {GEMMA3_LOCAL_ROPE_BASE})", file=sys.stderr)
    writer.add_rope_freq_base_swa(local)
    # llama.cpp requires the window for gemma3; without one every layer attends to everything.
    writer.add_sliding_window(int(window) if window else int(config.max_position_embeddings))
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        print("tokengraft: warning: llama.cpp applies gemma3's final logit soft-capping only without a sliding "
              "window; check the exported logits", file=sys.stderr)
        writer.add_final_logit_softcapping(float(softcap))
