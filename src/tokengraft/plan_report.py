"""`tokengraft plan`: the budget table, the verdict, and the first thing to change.

The advice re-assembles the plan with one setting changed at a time (no new trace:
`memory.assemble` is arithmetic on the measured facts), in an order that costs the
run least: a different token backend or the supervised-only head change nothing
about what is learned; checkpointing costs time; a smaller micro-batch with gradient
accumulation keeps the effective batch; Adafactor and 4-bit weights change the
optimisation; a shorter ``data.max_length`` changes the data. Changes accumulate
until the plan fits, and the first one is named first.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from .memory import Facts, Knobs, Plan, Workload, assemble, gib

Change = tuple[str, Callable[[Knobs, Facts, Workload], tuple[Knobs, Workload] | None]]


def _changes() -> list[Change]:
    def backend(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, backend="rows"), w) if k.backend != "rows" and f.new_tokens + f.existing_trained else None

    def head_only(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, supervised_head_only=True), w) if not k.supervised_head_only else None

    def checkpointing(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, gradient_checkpointing=True), w) if not k.gradient_checkpointing else None

    def micro_batch(k: Knobs, f: Facts, w: Workload):
        if k.batch <= 1:
            return None
        return dataclasses.replace(k, batch=1, grad_accum=k.grad_accum * k.batch), w

    def adafactor(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, optimizer="adafactor"), w) if k.optimizer != "adafactor" else None

    def four_bit(k: Knobs, f: Facts, w: Workload):
        return (dataclasses.replace(k, quantization="4bit"), w) if k.device == "cuda" and k.quantization != "4bit" else None

    return [
        ("use tokens.backend: rows (row-sparse token rows, no vocab x hidden copy)", backend),
        ("set train.supervised_head_only: true (logits only where labels train)", head_only),
        ("turn on train.gradient_checkpointing: true", checkpointing),
        ("use train.batch_size: 1 with train.grad_accum x batch (same effective batch)", micro_batch),
        ("use train.optimizer: adafactor (factored second moments)", adafactor),
        ("load the base in model.quantization: 4bit", four_bit),
    ]


def advise(facts: Facts, work: Workload, knobs: Knobs, plan: Plan) -> list[str]:
    """What to change, in order, until the plan fits the budget (empty when it fits or no budget)."""
    if plan.budget is None or plan.fits:
        return []
    advice: list[str] = []
    current, total = knobs, plan.total
    for text, change in _changes():
        changed = change(current, facts, work)
        if changed is None:
            continue
        new_knobs, new_work = changed
        new_total = assemble(facts, new_work, new_knobs, plan.budget).total
        if new_total >= total:
            continue
        advice.append(f"{text}: saves {gib(total - new_total)} -> {gib(new_total)}")
        current, total = new_knobs, new_total
        if total <= plan.budget:
            break
    if total > plan.budget:
        advice.append(f"still {gib(total - plan.budget)} over after these: shorten data.max_length "
                      f"(activations and logits scale with it) or use a device with more memory")
    return advice


def table(plan: Plan) -> str:
    """The reference-004 style budget: one line per resident item at the peak, then the verdict."""
    a = plan.assumptions
    head = (f"tokengraft plan: {a.get('model_type')} on {plan.device}, {a.get('quantization')} weights "
            f"({a.get('dtype')}), backend {a.get('backend')}, {a.get('new_tokens', 0):,} new tokens, "
            f"batch {a.get('batch_size')} x {a.get('seq_len')} tokens, checkpointing "
            f"{'on' if a.get('gradient_checkpointing') else 'off'}, optimizer {a.get('optimizer')}")
    width = max([len(i.label) for i in plan.items] + [24])
    lines = [head, ""]
    for item in plan.items:
        detail = f"  ({item.detail})" if item.detail else ""
        lines.append(f"{item.label:<{width}}  {gib(item.bytes):>11}{detail}")
    lines.append("─" * (width + 14))
    lines.append(f"{'peak (' + plan.peak_phase + ')':<{width}}  {gib(plan.total):>11}")
    others = ", ".join(f"{name} {gib(v)}" for name, v in plan.phases.items() if name != plan.peak_phase)
    lines.append(f"{'other phases':<{width}}  {others}")
    if plan.budget is not None:
        lines.append(f"{'budget':<{width}}  {gib(plan.budget):>11}  -> {plan.verdict}")
    lines.append(f"workload: {a.get('workload_source')}")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if plan.advice:
        lines.append(f"first change: {plan.advice[0]}")
        for more in plan.advice[1:]:
            lines.append(f"then:         {more}")
    return "\n".join(lines)


def run_plan(config: str, overrides: list[str], *, budget: str | None, as_json: bool, new_tokens: int | None,
             device: str | None, seq_len: int | None, supervised_tokens: int | None) -> int:
    """The CLI handler: exit 0 when it fits (or no budget), 1 when it does not."""
    from .config import load_recipe
    from .memory import parse_size, plan

    recipe = load_recipe(config, overrides, validate=False)
    result = plan(recipe, new_tokens=new_tokens, budget=parse_size(budget) if budget else None, device=device,
                  seq_len=seq_len, supervised_tokens=supervised_tokens)
    print(json.dumps(result.to_dict(), indent=2) if as_json else table(result))
    return 1 if result.fits is False else 0
