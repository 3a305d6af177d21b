"""`tokengraft inspect MODEL`: roles, module names, biases, tying, padding rows.

Inspect never needs weights, so it always builds the model on the meta device from
its config (a 14B config is described in seconds without allocating anything).
Tying survives that: ``tie_weights()`` on meta makes head and embedding the same
Parameter, which ``describe`` checks by identity. The human report follows the
spirit of reference 001 (sections B/C): names per component, then what each
freezing strategy would unfreeze in the top blocks, with parameter counts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from torch import nn

from tokengraft.core.arch import (ATTENTION_ROLES, ArchInfo, bias_parameter_names, describe, linear_shapes, module_names_in_blocks)
from tokengraft.data import describe_prompt_format
from tokengraft.errors import TokengraftError
from tokengraft.models import load_meta

_ROLE_LABELS = {"q": "q", "k": "k", "v": "v", "o": "o (output)", "qkv": "fused qkv",
                "gate": "gate", "up": "up", "down": "down"}


def _params_of(model: nn.Module, module_names: list[str]) -> int:
    return sum(p.numel() for name in module_names for p in model.get_submodule(name).parameters())


def freezing_summary(model: nn.Module, arch: ArchInfo, top_k: int) -> dict[str, Any]:
    """What attention-only, BitFit and whole-block freezing would train in the top-k blocks."""
    top = arch.top_blocks(top_k)
    attn_modules = module_names_in_blocks(arch, list(ATTENTION_ROLES), top)
    bias_names = bias_parameter_names(model, arch, top)
    params = dict(model.named_parameters())
    blocks = model.get_submodule(arch.blocks)
    return {
        "top_blocks": top,
        "attention_only": {"modules": attn_modules, "parameters": _params_of(model, attn_modules)},
        "bitfit": {"parameters_names": bias_names, "parameters": sum(params[n].numel() for n in bias_names)},
        "top_k_blocks": {"parameters": sum(p.numel() for i in top for p in blocks[i].parameters())},
    }


def run_inspect(model_spec: str, as_json: bool = False, top_k: int = 4, trust_remote_code: bool = False) -> int:
    if top_k < 1:
        raise TokengraftError(f"--top-k must be at least 1 (got {top_k})")
    model, tokenizer, tokenizer_problem = load_meta(model_spec, trust_remote_code)
    arch = describe(model, tokenizer)
    summary = freezing_summary(model, arch, top_k)
    prompt = describe_prompt_format(tokenizer) if tokenizer is not None else None
    if as_json:
        payload = arch.to_dict()
        payload["architecture"] = type(model).__name__
        payload["prompt_format"] = prompt
        payload["freezing"] = {
            "top_blocks": summary["top_blocks"],
            "attention_only_parameters": summary["attention_only"]["parameters"],
            "bitfit_parameters": summary["bitfit"]["parameters"],
            "top_k_blocks_parameters": summary["top_k_blocks"]["parameters"],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(render(model, arch, summary, model_spec, tokenizer_problem, prompt))
    return 0


# ----------------------------------------------------------------------------- the human report


def _n(x: int) -> str:
    return f"{x:,}"


def _shape(shapes: dict[str, tuple[int, int, bool]], name: str) -> str:
    return f"{shapes[name][0]} -> {shapes[name][1]}" if name in shapes else "?"


def _span(arch: ArchInfo, blocks: list[int]) -> str:
    """`model.layers.{26..29}` instead of one line per block."""
    return f"{arch.blocks}.{{{blocks[0]}..{blocks[-1]}}}" if len(blocks) > 1 else arch.block_path(blocks[0])


def _block_relative(arch: ArchInfo, full_names: list[str]) -> list[str]:
    """Distinct block-relative names, in order, from full names inside the blocks."""
    rel: list[str] = []
    for name in full_names:
        tail = name[len(arch.blocks) + 1:].split(".", 1)[1]
        if tail not in rel:
            rel.append(tail)
    return rel


def _layers(indices: list[int]) -> str:
    return ", ".join(map(str, indices)) if indices else "none"


def render(model: nn.Module, arch: ArchInfo, summary: dict[str, Any], spec: str, tokenizer_problem: str | None,
           prompt: dict[str, str] | None = None) -> str:
    out: list[str] = []
    add = out.append
    shapes = linear_shapes(model, arch)
    width = max((len(f"{arch.blocks}.[i].{n}") for n in arch.linear_roles), default=0)
    p = arch.parameters
    add(f"tokengraft inspect: {spec}")
    add(f"  model type {arch.model_type} ({type(model).__name__}), hidden size {arch.hidden_size}")
    head_text = "shared with the embedding (tied)" if arch.tied_embeddings else _n(p["head"])
    add(f"  parameters {_n(p['total'])}: embedding {_n(p['embedding'])}, head {head_text}, "
        f"blocks {_n(p['blocks'])} ({arch.num_blocks} x {_n(p['per_block'])})")
    add("")
    add("B. Architecture and module names")
    add(f"  blocks: {arch.num_blocks} at `{arch.blocks}.[i]`, i in 0..{arch.num_blocks - 1}")
    a = arch.attention
    heads = f"{a.num_heads} heads, {a.num_kv_heads} key/value heads" if a.num_heads else "head counts unknown"
    add(f"  attention ({a.kind}, {heads}, head_dim {arch.head_dim}) in `{a.module}`:")
    if arch.attention_layers:
        layers = arch.attention_layers
        add(f"    sliding window {layers['sliding_window']} on {len(layers['sliding_attention_layers'])} layers; "
            f"full attention on layers {_layers(layers['full_attention_layers'])}")
    for role in ("q", "k", "v", "qkv", "o"):
        name = getattr(a, role)
        if name:
            bias = "bias" if arch.biases.get(role) else "no bias"
            add(f"    {_ROLE_LABELS[role]:<11} {f'{arch.blocks}.[i].{name}':<{width}} {_shape(shapes, name):>14}  {bias}")
    m = arch.mlp
    add(f"  mlp (intermediate {arch.intermediate_size}) in `{m.module or '(the block itself)'}`:")
    for role in ("gate", "up", "down"):
        name = getattr(m, role)
        if name:
            bias = "bias" if arch.biases.get(role) else "no bias"
            add(f"    {_ROLE_LABELS[role]:<11} {f'{arch.blocks}.[i].{name}':<{width}} {_shape(shapes, name):>14}  {bias}")
    others = [n for n, r in arch.linear_roles.items() if r == "other"]
    if others:
        add(f"  other linears (no role): {', '.join(others)}")
    nm = arch.norms
    add(f"  norms: {nm['type']} {', '.join(nm['names']) or '-'} ({'with' if nm['bias'] else 'no'} bias); final `{nm['final']}`")
    add(f"  input embedding  `{arch.input_embedding}`  {_n(arch.embedding_rows)} rows x {arch.hidden_size}")
    if arch.embedding_scale:
        scale = arch.embedding_scale
        of = f" = {scale['of']}" if scale.get("of") else ""
        add(f"    scaled by {scale['factor']:.4f}{of}, {scale['where']}")
    if arch.output_embedding is None:
        add("  output head      none found")
    elif arch.tied_embeddings:
        add(f"  output head      `{arch.output_embedding}` TIED to the input embedding: one matrix, new rows train once")
    else:
        add(f"  output head      `{arch.output_embedding}` untied: new tokens need input AND output rows trained")
    if arch.tokenizer_size is None:
        add(f"  tokenizer        not available ({tokenizer_problem}); padding rows unknown")
    else:
        add(f"  tokenizer        {_n(arch.tokenizer_size)} tokens; padding rows {_n(arch.padding_rows)}"
            + (" (rows past the tokenizer: new tokens can take them without resizing)" if arch.padding_rows else ""))
    add(f"  position embedding: `{arch.position_embedding}`" if arch.position_embedding
        else "  position embedding: none learned (rotary or none)")
    if prompt is None:
        add("  prompt format    unknown (no tokenizer)")
    elif prompt["kind"] == "plain":
        add(f"  prompt format    plain (no chat template): tokengraft's Question/Answer format, answers end with "
            f"{prompt['end_of_turn']}; a run saves it as the tokenizer's chat_template")
    else:
        add(f"  prompt format    the tokenizer's chat template; an answer ends with {prompt['end_of_turn'] or '(nothing detected: EOS)'}")
    if prompt is not None:
        add(f"    e.g. {prompt['example_prompt']!r}")
    add("  LoRA target_modules (block-relative, PEFT suffix match):")
    for key, names in arch.lora_targets.items():
        add(f"    {key:<14} {names}")
    add("")
    top = summary["top_blocks"]
    add(f"C. Freezing in the top {len(top)} blocks: {', '.join(map(str, top))}")
    span = _span(arch, top)
    att = summary["attention_only"]
    add(f"  attention-only unfreezes {_n(att['parameters'])} parameters:")
    for rel in _block_relative(arch, att["modules"]):
        add(f"    {span}.{rel}." + ("{weight,bias}" if shapes[rel][2] else "weight"))
    bit = summary["bitfit"]
    if bit["parameters"] == 0:
        add("  BitFit would select NOTHING: the model has no bias parameters in these blocks; pick another method")
    else:
        add(f"  BitFit unfreezes {_n(bit['parameters'])} bias parameters:")
        for rel in _block_relative(arch, bit["parameters_names"]):
            add(f"    {span}.{rel}")
    add(f"  whole top-{len(top)} blocks unfreeze {_n(summary['top_k_blocks']['parameters'])} parameters "
        f"({100.0 * summary['top_k_blocks']['parameters'] / max(1, p['total']):.1f}% of the model)")
    if arch.notes:
        add("")
        add("Notes:")
        for note in arch.notes:
            add(f"  - {note}")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_inspect(sys.argv[1]))
