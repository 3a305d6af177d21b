"""Human-readable tables for metrics dictionaries (what `eval` and `demo` print)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(result: dict[str, Any]) -> str:
    """Flat numeric metrics as a two-column table, then the task's sweep and examples."""
    lines = [f"task: {result.get('task')}"]
    if result.get("answers") == "base":
        lines.append("answers: the base model's (the run decides only whether to pass)")
    lines += [f"{'metric':<30} value", f"{'-' * 30} {'-' * 10}"]
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
    splits = result.get("splits") or {}
    if len(splits) > 1:
        keys = ("n_answerable", "clean_accuracy", "base_clean_accuracy", "false_pass_rate", "pass_recall")
        lines += ["", "held-out splits: " + " / ".join(keys)]
        lines += [f"  {name:<20} " + " / ".join(_fmt(m.get(k)) for k in keys) + _change_note(m)
                  for name, m in splits.items()]
    if result.get("error_detection"):
        lines += ["", "finding the base model's wrong answers (answerable rows): AUROC (higher is better) / "
                  "AURC (lower is better)"]
        for name, d in result["error_detection"].items():
            scores = " | ".join(f"{score} {_fmt(v['auroc'])} / {_fmt(v['aurc'])}"
                                for score, v in d.items() if isinstance(v, dict) and "auroc" in v)
            lines.append(f"  {name} ({d['base_errors']}/{d['n']} wrong): {scores}")
            if d.get("p_pass_gain"):
                g = d["p_pass_gain"]
                lines.append(f"    p_pass AUROC - {g['over']}: {g['gain']:+.3f} "
                             f"(95% CI {g['ci95'][0]:+.3f} to {g['ci95'][1]:+.3f})")
    if result.get("examples"):
        lines += ["", "examples:"]
        for ex in result["examples"]:
            lines.append("  " + " | ".join(f"{k}: {str(v)[:80]!r}" for k, v in ex.items() if v is not None))
    return "\n".join(lines)


def _change_note(split: dict[str, Any]) -> str:
    """``  (tuned - base -0.014, 95% CI -0.053 to +0.024)`` for a split whose base model was asked, else ""."""
    change = split.get("clean_accuracy_change")
    if not change:
        return ""
    return f"  (tuned - base {change['change']:+.3f}, 95% CI {change['ci95'][0]:+.3f} to {change['ci95'][1]:+.3f})"


def _phase_note(detail: dict[str, Any]) -> str:
    if "prompts" in detail:
        return f"{detail['prompts']} prompts: {detail.get('cached', 0)} cached, {detail.get('generated', 0)} generated"
    if "steps" in detail:
        extra = detail.get("validation_loss_seconds")
        return f"{detail['steps']} steps" + (f", of which validation loss {extra:.0f} s" if extra else "")
    return ", ".join(f"{k}={v}" for k, v in detail.items())


def phase_table(phases: dict[str, Any]) -> str:
    """The phases of a ``timing.PhaseLog.to_dict()`` as an indented table of wall times.

    A child's time is part of its parent's; "other" is what no top-level phase covered."""
    total = phases.get("total_seconds") or 0.0
    rows = [(("  " * p["depth"]) + p["name"], p.get("seconds") or 0.0, _phase_note(p.get("detail") or {}))
            for p in phases["phases"]]
    covered = sum(p.get("seconds") or 0.0 for p in phases["phases"] if p["depth"] == 0)
    rows.append(("other (between phases)", max(0.0, total - covered), ""))
    width = max(len(name) for name, _, _ in rows + [("total", 0.0, "")])
    lines = [f"{'phase':<{width}}  {'wall':>9}  {'share':>5}  notes", f"{'-' * width}  {'-' * 9}  {'-' * 5}  {'-' * 5}"]
    for name, seconds, text in rows + [("total", total, "")]:
        share = f"{100 * seconds / total:4.0f}%" if total else "  n/a"
        lines.append(f"{name:<{width}}  {_duration(seconds):>9}  {share:>5}  {text}".rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
