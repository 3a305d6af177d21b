"""`tokengraft eval RUN_DIR` for ``task: classification``: accuracy and the confusion matrix on the test split.

No generation and no base model to compare: the classifier is loaded from the run
directory (`rundir.load_classifier`) and its argmax at the last non-pad token is the
prediction, read through the same encoding and padding as training (data.py's classification rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tokengraft.data import ClassificationCollator, as_labelled_rows, encode_labelled_rows
from tokengraft.errors import TokengraftError
from tokengraft.rundir import CLASSIFICATION_TASK, load_classifier, read_run_recipe, split_file, write_metrics
from tokengraft.tasks import read_jsonl


@torch.no_grad()
def predict(model: Any, items: list[dict[str, Any]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """Class logits ``[N, C]`` for encoded items, in order."""
    collate = ClassificationCollator(pad_id)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate([{"input_ids": x["input_ids"]} for x in items[start:start + batch_size]])
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def evaluate_classification(run_dir: str | Path, *, limit: int | None = None) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall of each true class), macro average and the confusion
    matrix on ``RUN_DIR/data/test.jsonl``; per-kind accuracy when the rows carry a ``kind``.

    Writes ``metrics.json`` (with ``task: classification``) and ``confusion.png`` into the run.
    """
    run = Path(run_dir)
    recipe = read_run_recipe(run)
    path = split_file(run, "test")
    if not path.is_file():
        raise TokengraftError(f"{path} is missing: put the held-out {{\"text\", \"label\"}} rows there to evaluate")
    g = load_classifier(run, device=recipe.model.device)
    rows = as_labelled_rows(read_jsonl(path)[:limit], str(path))
    pad_id = int(g.hf_model.config.pad_token_id)
    items, dropped = encode_labelled_rows(rows, g.tokenizer, g.labels, recipe.data.max_length,
                                         "truncate_prompt" if recipe.data.on_overflow == "truncate_prompt" else "drop", pad_id)
    if not items:
        raise TokengraftError(f"{path}: no test row fits data.max_length {recipe.data.max_length}")
    kept = [rows[x["row"]] for x in items]
    logits = predict(g.model, items, pad_id, recipe.eval.batch_size)
    predicted = logits.argmax(-1).tolist()
    gold = [x["labels"] for x in items]
    names = g.labels.names
    n = len(names)
    confusion = [[0] * n for _ in range(n)]
    for t, p in zip(gold, predicted):
        confusion[t][p] += 1
    per_class = {names[c]: {"rows": sum(confusion[c]), "accuracy": confusion[c][c] / sum(confusion[c])}
                 for c in range(n) if sum(confusion[c])}
    result: dict[str, Any] = {
        "task": CLASSIFICATION_TASK,
        "accuracy": sum(t == p for t, p in zip(gold, predicted)) / len(gold),
        "macro_accuracy": sum(v["accuracy"] for v in per_class.values()) / len(per_class),
        "majority_baseline": max(v["rows"] for v in per_class.values()) / len(gold),
        "test_rows": len(gold), "test_dropped_too_long": dropped,
    }
    result.update({f"accuracy_{name}": v["accuracy"] for name, v in per_class.items()})
    result["per_class"] = per_class
    result["confusion"] = {"labels": names, "rows_true_columns_predicted": confusion}
    kinds = sorted({str(r.meta["kind"]) for r in kept if "kind" in r.meta})
    if kinds:
        result["accuracy_by_kind"] = {
            k: sum(t == p for r, t, p in zip(kept, gold, predicted) if r.meta.get("kind") == k)
            / sum(1 for r in kept if r.meta.get("kind") == k) for k in kinds}
    result["examples"] = [{"text": r.text, "gold": names[t], "predicted": names[p]}
                          for r, t, p in list(zip(kept, gold, predicted))[:8]]
    _plot_confusion(confusion, names, run / "confusion.png")
    write_metrics(run, result)
    return result


def _plot_confusion(confusion: list[list[int]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.1 * len(names) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
