"""Human-readable tables for metrics dictionaries (what `eval` and `demo` print)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(result: dict[str, Any]) -> str:
    """Flat numeric metrics as a two-column table, then the task's sweep and examples."""
    lines = [f"task: {result.get('task')}", f"{'metric':<30} value", f"{'-' * 30} {'-' * 10}"]
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{key:<30} {_fmt(value)}")
        elif value is None:
            lines.append(f"{key:<30} n/a")
    if result.get("sweep"):
        lines += ["", "<PASS> logit-bias sweep (bias: PASS recall / false-PASS / coverage / selective acc.)"]
        for row in result["sweep"]:
            lines.append(f"  {row['bias']:+5.1f}: {_fmt(row.get('pass_recall'))} / {_fmt(row.get('false_pass_rate'))}"
                         f" / {_fmt(row.get('coverage'))} / {_fmt(row.get('selective_accuracy'))}")
    if result.get("pass_recall_by_kind"):
        lines += ["", "PASS recall by corruption kind:"]
        lines += [f"  {k:<20} {_fmt(v)}" for k, v in result["pass_recall_by_kind"].items()]
    if result.get("examples"):
        lines += ["", "examples:"]
        for ex in result["examples"]:
            lines.append("  " + " | ".join(f"{k}: {str(v)[:80]!r}" for k, v in ex.items() if v is not None))
    return "\n".join(lines)
