"""`tokengraft methods MODEL`: reference 002's trade-off table, computed for one model.

Every count is *measured*: each method is applied with the real registry code to a
fresh meta-device copy of the model (built from its config, so a 7B model costs
nothing) and its trainable parameters are counted. A formula could drift from what
training actually unfreezes; applying the method cannot. A method that does not
fit the model (BitFit on Llama, prefix on multi-query Falcon) gets a row saying why.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from tokengraft.core.arch import ArchInfo, describe
from tokengraft.errors import TokengraftError
from tokengraft.methods import apply_methods, build_spec
from tokengraft.methods.classification import config_classifier
from tokengraft.models import load_config_model


@dataclass
class Row:
    method: str
    settings: str
    trainable: int | None       # None when the method does not apply to this model
    percent: float | None       # of the base model's parameters
    mergeable: bool | None
    where: str                  # where the parameters sit, or why the method does not apply


def default_specs(top_k: int) -> list[tuple[str, dict[str, Any]]]:
    """The table's rows: (settings label, recipe dict)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for targets in ("attention", "attention_mlp", "all_linear"):
        for r in (8, 16):
            rows.append((f"r={r} {targets}", {"type": "lora", "r": r, "alpha": 2 * r, "targets": targets}))
    for placement in ("post_attn", "post_ffn", "both"):
        rows.append((f"bottleneck 64 {placement}", {"type": "adapter", "bottleneck": 64, "placement": placement}))
    rows.append(("20 virtual tokens", {"type": "prefix", "num_virtual_tokens": 20}))
    for mode in ("attention_only", "bitfit", "top_k_blocks"):
        rows.append((f"{mode} k={top_k}", {"type": "freeze", "mode": mode, "top_k": top_k}))
    return rows


def method_table(make_model: Callable[[], nn.Module], top_k: int = 4, num_labels: int = 2) -> tuple[ArchInfo, list[Row]]:
    """``(arch, rows)``: each default method applied to a fresh model from ``make_model`` (meta device is fine).

    ``top_k`` is clamped to the model's depth so small models still get freeze rows.
    """
    if top_k < 1:
        raise TokengraftError(f"--top-k must be at least 1 (got {top_k})")
    first = make_model()
    arch = describe(first)
    total = int(arch.parameters["total"])
    k = min(top_k, arch.num_blocks)
    rows: list[Row] = []
    model: nn.Module | None = first
    for label, d in default_specs(k):
        spec = build_spec(d)
        model = model if model is not None else make_model()
        try:
            _, state = apply_methods(model, arch, [spec])
        except TokengraftError as exc:
            rows.append(Row(spec.type, label, None, None, None, f"n/a: {exc}"))
            model = None  # a failed apply may have half-modified the model: start fresh
            continue
        model = None
        rows.append(Row(spec.type, label, state.num_trainable, 100.0 * state.num_trainable / total, state.mergeable,
                        spec.where(arch)))
    rows.append(_head_row(make_model, num_labels, total))
    return arch, rows


def _head_row(make_model: Callable[[], nn.Module], num_labels: int, total: int) -> Row:
    """The linear probe: a sequence classifier from the same weights, only its head trained."""
    label = f"head only, {num_labels} labels"
    clf = config_classifier(make_model().config, num_labels)
    if clf is None:
        return Row("head", label, None, None, None, "n/a: transformers has no sequence-classification class for this family")
    try:
        _, state = apply_methods(clf, describe(clf), [])
    except TokengraftError as exc:
        return Row("head", label, None, None, None, f"n/a: {exc}")
    where = state.records[0].where if state.records else "no head found"
    return Row("head", label, state.num_trainable, 100.0 * state.num_trainable / total, True,
               f"{where} (sequence classification; linear-probe baseline)")


def _n(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def render(model_spec: str, arch: ArchInfo, rows: list[Row], top_k: int) -> str:
    total = int(arch.parameters["total"])
    header = (f"{model_spec}: {arch.model_type}, {arch.num_blocks} blocks, hidden {arch.hidden_size}, "
              f"{total:,} parameters (freeze rows use the top {min(top_k, arch.num_blocks)} blocks)")
    table = [("method", "settings", "trainable", "% model", "merge", "where")]
    for r in rows:
        pct = "-" if r.percent is None else (f"{r.percent:.4f}" if r.percent < 0.01 else f"{r.percent:.3f}")
        merge = "-" if r.mergeable is None else ("yes" if r.mergeable else "no")
        table.append((r.method, r.settings, _n(r.trainable), pct, merge, r.where))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [header, ""]
    for j, row in enumerate(table):
        cells = [row[i].ljust(widths[i]) if i in (0, 1, 4) else row[i].rjust(widths[i]) for i in range(5)]
        lines.append("  ".join(cells + [row[5]]))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 5)
    lines += ["", "Token rows for new tokens come on top of every row (see `tokengraft plan`). merge = export --merged "
              "can fold the method into plain weights; adapters and prefixes need the run directory."]
    return "\n".join(lines)


def run_methods(model_spec: str, as_json: bool = False, top_k: int = 4, trust_remote_code: bool = False) -> int:
    with warnings.catch_warnings():  # PEFT/transformers deprecation chatter is noise in a table
        warnings.simplefilter("ignore")
        arch, rows = method_table(lambda: load_config_model(model_spec, trust_remote_code=trust_remote_code), top_k)
    if as_json:
        print(json.dumps({"model": model_spec, "model_type": arch.model_type, "num_blocks": arch.num_blocks,
                          "total_parameters": int(arch.parameters["total"]), "top_k": min(top_k, arch.num_blocks),
                          "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(model_spec, arch, rows, top_k))
    return 0
