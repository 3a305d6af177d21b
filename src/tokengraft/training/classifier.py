"""``task: classification``: a classifier head on the causal LM, trained by the same engine.

`train.train` hands classification recipes to `train_classifier`, which reuses the
engine's pieces (seeding, optimiser groups, callbacks, run-directory checkpoints) and
changes only what classification needs:

- the model is ``AutoModelForSequenceClassification`` built from the loaded LM
  (`methods.classification.build_classifier`): same backbone tensors, a fresh seeded
  head. The recipe's methods apply to the classifier, and the head always trains, so
  ``methods: []`` is reference 002's linear probe (head only);
- tokens are optional. With none, nothing is grafted (there is no vocabulary change
  to make). With some, only their INPUT rows train: a classifier reads tokens but
  never writes them (it has no LM head);
- rows are ``{"text", "label"}`` (tasks/classify_data.py); the loss is cross-entropy
  on the head's logits at the last non-pad token; evaluation during training reports
  ``eval_accuracy`` beside ``eval_loss``.

Run directories are ordinary tokengraft run directories (``graft.json`` records
``task: classification``, ``num_labels`` and the label names, also in ``labels.json``);
the head's weights are saved with the method weights. `load_classifier` rebuilds the
classifier from them, and `evaluate_classification` scores the test split.

Padding: the classifier picks the rightmost token that is not the config's pad id,
so batches are right-padded with exactly that id.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokengraft.errors import TokengraftError
from tokengraft.core.graft import Graft, TokenSettings
from tokengraft.tasks.classify_data import LabelSet, label_set

LABELS_FILE = "labels.json"


@dataclass
class ClassifierGraft(Graft):
    """A graft whose model is a sequence classifier; ``labels`` maps head outputs to class names."""

    labels: LabelSet | None = None

    def token_parameters(self) -> list[torch.nn.Parameter]:
        # Only token rows get train.token_lr: PEFT's trainable copy of the head (modules_to_save) is not a token row.
        return self.rows.parameters() if self.rows is not None else []


@dataclass
class Row:
    text: str
    label: Any
    where: str
    meta: dict[str, Any] = field(default_factory=dict)


def as_rows(rows: list[Any], source: str) -> list[Row]:
    """Generated dicts or parsed JSONL examples (data.py's ``text`` form) as classification rows."""
    from tokengraft.data import Example

    out = []
    for i, r in enumerate(rows):
        if isinstance(r, Example):
            if r.kind != "text" or "label" not in r.meta:
                raise TokengraftError(f"{r.where}: a classification row is {{\"text\": ..., \"label\": ...}}; "
                                      f"this one is a {r.kind} row" + ("" if "label" in r.meta else " without 'label'"))
            out.append(Row(r.completion, r.meta["label"], r.where, dict(r.meta)))
            continue
        where = f"{source} row {i + 1}"
        if not isinstance(r, dict) or not isinstance(r.get("text"), str) or "label" not in r:
            raise TokengraftError(f"{where}: a classification row needs a string 'text' and a 'label'")
        if not r["text"].strip():
            raise TokengraftError(f"{where}: empty 'text'")
        out.append(Row(r["text"], r["label"], where, {k: v for k, v in r.items() if k != "text"}))
    return out


# ----------------------------------------------------------------------------- encoding


def encode_rows(rows: list[Row], tokenizer: Any, labels: LabelSet, max_length: int,
                on_overflow: str = "drop", pad_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """``[{"input_ids", "labels", "row"}]`` (``row`` indexes ``rows``) and the number dropped as too long.

    ``truncate_prompt`` keeps the LAST ``max_length`` tokens: the classifier reads the
    final position, so the end of the text is the part that must survive. A text ending
    in the pad token (``pad_id``) is refused: the classifier would skip that token and
    silently read an earlier position.
    """
    items: list[dict[str, Any]] = []
    dropped = 0
    ids = tokenizer([r.text for r in rows])["input_ids"] if rows else []
    for index, (row, seq) in enumerate(zip(rows, ids)):
        label = labels.to_id(row.label, row.where)
        if not seq:
            raise TokengraftError(f"{row.where}: the text tokenizes to nothing")
        if len(seq) > max_length:
            if on_overflow == "error":
                raise TokengraftError(f"{row.where}: {len(seq)} tokens, more than data.max_length {max_length}; "
                                      "raise data.max_length or set data.on_overflow: drop")
            if on_overflow == "drop":
                dropped += 1
                continue
            seq = seq[-max_length:]
        if pad_id is not None and seq[-1] == pad_id:
            raise TokengraftError(f"{row.where}: the text ends with the pad token {tokenizer.convert_ids_to_tokens(pad_id)!r}, "
                                  "which the classifier skips when it looks for the last token; remove it from the text")
        items.append({"input_ids": list(seq), "labels": label, "row": index})
    return items, dropped


class ClassificationCollator:
    """Right-pads ``input_ids`` with the classifier's pad id; ``labels`` become a [B] tensor."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise TokengraftError("cannot collate an empty batch")
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)  # [B, T]
        attention = torch.zeros((len(features), length), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)  # [B]
        return batch


# ----------------------------------------------------------------------------- building


def build_classifier_graft(lm: Any, tokenizer: Any, settings: TokenSettings, method_configs: list[dict],
                           labels: LabelSet, *, seed: int = 0, verbose: bool = True) -> ClassifierGraft:
    """Classifier from ``lm``, optional input-side token rows, methods applied; the head always trains.

    The LM itself is not modified (the classifier holds copies of its tensors).
    """
    from tokengraft.core.arch import describe
    from tokengraft.core.graft import attach_row_graft, resolve_existing_ids
    from tokengraft.methods import apply_methods
    from tokengraft.methods.classification import build_classifier
    from tokengraft.models import fingerprint
    from tokengraft.core.vocab import AddReport, add_tokens

    if settings.backend != "rows":
        raise TokengraftError("task classification trains token rows with tokens.backend: rows only")
    if settings.sides == "output":
        raise TokengraftError("task classification has no LM head to train token OUTPUT rows; set tokens.sides: input")
    settings.sides = "input"  # a classifier only reads its tokens
    base_fingerprint = fingerprint(lm)
    clf = build_classifier(lm, labels.num_labels, tokenizer, seed=seed)
    clf.config.id2label = dict(enumerate(labels.names))
    clf.config.label2id = {name: i for i, name in enumerate(labels.names)}
    if settings.add:
        report = add_tokens(clf, tokenizer, settings.add, special=settings.special, init=settings.init_input,
                            init_text=settings.init_text, resize=False, single_word=settings.single_word, seed=seed,
                            spherical_scale=settings.spherical_scale, verbose=verbose)
    else:  # nothing to graft: the vocabulary stays as it is
        rows = clf.get_input_embeddings().weight.shape[0]
        report = AddReport(requested=0, already_present=[], added=[], ids={}, old_tokenizer_size=len(tokenizer),
                           final_tokenizer_size=len(tokenizer), old_rows=rows, final_rows=rows)
    existing = [i for i in resolve_existing_ids(tokenizer, settings.train_existing) if i not in report.new_ids]
    trainable_ids = sorted(set(report.new_ids) | set(existing))
    # apply_methods always (graft() skips it for methods: []): it is what makes the head trainable.
    model, state = apply_methods(clf, describe(clf, tokenizer), [dict(c) for c in method_configs])
    g = ClassifierGraft(model=model, tokenizer=tokenizer, settings=settings, report=report,
                        trainable_ids=trainable_ids, methods=state, method_configs=[dict(c) for c in method_configs],
                        base_fingerprint=base_fingerprint, labels=labels)
    if trainable_ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows.py warns that input-only rows are never written: intended here
            g.rows = attach_row_graft(model, report, existing, settings)
    return g


def load_classifier(run_dir: str | Path, *, device: str = "auto", dtype: str | None = None,
                    check_fingerprint: bool = True, model: Any = None) -> ClassifierGraft:
    """Rebuild a classification run's classifier (head, methods, token rows) for inference."""
    from transformers import AutoTokenizer

    from tokengraft.core.arch import describe
    from tokengraft.rundir import ROWS_FILE, _load_tensors, _report_from_meta, read_graft_meta
    from tokengraft.methods import load_methods
    from tokengraft.methods.classification import build_classifier
    from tokengraft.models import fingerprint, load_model
    from tokengraft.core.rows import attach_rows

    run = Path(run_dir)
    meta = read_graft_meta(run)
    if meta.get("task") != "classification" or "labels" not in meta:
        raise TokengraftError(f"{run} is not a classification run (graft.json has no task: classification and labels)")
    labels = LabelSet.from_dict(meta["labels"])
    rows_state = _load_tensors(run / ROWS_FILE)
    if model is None:
        model, _ = load_model(meta["base_model"], dtype=dtype or meta.get("dtype", "float32"), device=device)
    if check_fingerprint and fingerprint(model) != meta["base_fingerprint"]:
        raise TokengraftError(f"{run} was trained on a different base model than {meta['base_model']!r} "
                              f"(fingerprint {meta['base_fingerprint']} expected); load it with the base it was trained on")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run))
    except (OSError, ValueError) as exc:
        raise TokengraftError(f"{run}: tokenizer files are missing or damaged ({str(exc).splitlines()[0]})") from None
    clf = build_classifier(model, labels.num_labels, tokenizer, seed=int(meta.get("seed", 0)))
    del model
    clf.config.id2label = dict(enumerate(labels.names))
    clf.config.label2id = {name: i for i, name in enumerate(labels.names)}
    # The head's weights are saved with the method weights, so this also restores a head-only run.
    clf, state = load_methods(clf, describe(clf, tokenizer), None, run)
    ids = [int(i) for i in rows_state["ids"].tolist()]
    rows = None
    if ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the input-only warning is for causal LMs
            rows = attach_rows(clf, ids, rows_state["input"], None, sides="input", total_rows=int(meta["total_rows"]))
        for p in rows.parameters():
            p.requires_grad_(False)
    for p in clf.parameters():
        p.requires_grad_(False)
    clf.eval()
    return ClassifierGraft(model=clf, tokenizer=tokenizer, settings=TokenSettings(**meta["settings"]),
                           report=_report_from_meta(meta), trainable_ids=ids, rows=rows, methods=state,
                           method_configs=meta.get("methods") or [], base_fingerprint=meta["base_fingerprint"],
                           labels=labels)


def restore_classifier_tensors(g: ClassifierGraft, checkpoint: str | Path) -> None:
    """Resume: copy a checkpoint's token rows (if any) and method + head weights into the live model."""
    from tokengraft.rundir import ROWS_FILE, _load_tensors
    from tokengraft.methods.state import WEIGHTS_FILE

    with torch.no_grad():
        if g.rows is not None:
            rows = _load_tensors(Path(checkpoint) / ROWS_FILE)
            g.rows.input_rows.copy_(rows["input"].to(g.rows.input_rows))
        tensors = _load_tensors(Path(checkpoint) / WEIGHTS_FILE)
        for record in g.methods.records:
            for name, parameter in zip(record.names, record.params):
                if name not in tensors:
                    raise TokengraftError(f"checkpoint {checkpoint} lacks weight {name!r}")
                parameter.copy_(tensors[name].to(parameter))


# ----------------------------------------------------------------------------- training


def _trainer_class():
    from tokengraft.training.lm import _make_trainer_class

    class ClassifierTrainer(_make_trainer_class()):
        """The engine's trainer with cross-entropy on the classifier's logits."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True  # the loss below divides by num_items_in_batch itself

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]  # [B]
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits  # [B, C]
            count = int(num_items_in_batch) if num_items_in_batch is not None else None
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            loss = loss / (count if count else max(1, labels.numel()))
            if count is not None and self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # `count` spans all ranks; DDP averages over ranks
            if not torch.isfinite(loss) and self.accelerator.num_processes == 1:
                # (several processes: the engine's gradient guard stops every rank at the same step)
                raise TokengraftError(f"the loss became {loss.item()} at step {self.state.global_step + 1}; training "
                                      "stopped before that update (lower train.lr, or use precision fp32)")
            return (loss, {"logits": logits}) if return_outputs else loss

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            restore_classifier_tensors(self.graft_state, resume_from_checkpoint)

    return ClassifierTrainer


def _accuracy(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}


def _check_tokens_read(g: ClassifierGraft, items: list[dict[str, Any]]) -> None:
    """A new token that no training text contains would keep its initial row: refuse, as guard.py does."""
    present = {i for item in items for i in item["input_ids"]}
    unused = [t for t in g.report.added if g.report.ids[t] not in present]
    if unused:
        raise TokengraftError(f"token {unused[0]!r} occurs in no training text, so its row would never train; "
                              "add rows that contain it or remove it from tokens.add")


def _audit(g: ClassifierGraft) -> Any:
    """guard.audit, with the classification head named as such (guard files it under 'other')."""
    from tokengraft.core.guard import audit

    report = audit(g)
    head = sum(r.count for r in g.methods.records if r.spec is None)
    head += sum(p.numel() for r in g.methods.records if r.spec is not None
                for n, p in zip(r.names, r.params) if ".modules_to_save." in n)
    if head and report.by_role.get("other") == head:
        report.by_role["head"] = report.by_role.pop("other")
    return report


def train_classifier(recipe: Any, output_dir: str | Path, *, resume: bool = False, quiet: bool = False,
                     callbacks: list[Any] | None = None) -> Any:
    """`train.train` for ``task: classification``; returns the engine's ``TrainResult``."""
    from accelerate import PartialState

    from tokengraft.core.guard import preflight
    from tokengraft.models import load_model
    from tokengraft.tasks.prepare import prepare_data
    from tokengraft.core.graft import token_settings
    from tokengraft.training.lm import (ListDataset, _callbacks, build_optimizer, run_and_save, start_run, training_arguments)

    run, device = start_run(recipe, output_dir)
    lm, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=str(device),
                               trust_remote_code=recipe.model.trust_remote_code)
    data = prepare_data(recipe, run, tokenizer, lm)
    train_rows, eval_rows = as_rows(data.train, "train"), as_rows(data.validation, "validation")
    labels = label_set([(r.label, r.where) for r in train_rows])
    settings = token_settings(recipe.tokens, data.extra_tokens)
    methods = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in recipe.methods]
    g = build_classifier_graft(lm, tokenizer, settings, methods, labels, seed=recipe.seed, verbose=not quiet)
    del lm  # the classifier holds its own copy of the backbone
    if g.trainable_ids:
        preflight(g)
    report = _audit(g)
    cfg, d = recipe.train, recipe.data
    pad_id = int(g.hf_model.config.pad_token_id)
    train_items, dropped = encode_rows(train_rows, tokenizer, labels, d.max_length, d.on_overflow, pad_id)
    eval_items, _ = encode_rows(eval_rows, tokenizer, labels, d.max_length, "drop", pad_id)
    if not train_items:
        raise TokengraftError("no training rows survived encoding (all dropped as too long?); raise data.max_length")
    _check_tokens_read(g, train_items)
    counts = {name: sum(1 for x in train_items if x["labels"] == i) for i, name in enumerate(labels.names)}
    stats = {"rows": len(train_items), "dropped_too_long": dropped, "per_class": counts,
             "validation_rows": len(eval_items)}
    if not quiet:
        print(report.table())
        print(f"training data: {len(train_items)} rows ({dropped} dropped as too long), classes {counts}, "
              f"{len(eval_items)} validation rows")
    main_process = PartialState().is_main_process
    if main_process:
        (run / "dataset_stats.json").write_text(json.dumps({"train": stats, "audit": report.to_dict()}, indent=2))
        (run / LABELS_FILE).write_text(json.dumps(labels.to_dict(), indent=2))

    eval_steps = cfg.eval_steps if (eval_items and cfg.eval_steps) else 0
    # Token rows join the graph only in batches that contain their ids: DDP must expect unused parameters.
    args = training_arguments(recipe, run, device, quiet=quiet, eval_steps=eval_steps, prediction_loss_only=False,
                              label_names=["labels"], ddp_find_unused_parameters=True if g.rows is not None else None)
    if cfg.gradient_checkpointing:
        from tokengraft.methods.spec import unwrap_peft

        unwrap_peft(g.model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mean_length = sum(len(x["input_ids"]) for x in train_items) / len(train_items)
    tokens_per_step = [round(mean_length * cfg.batch_size * cfg.grad_accum)]
    trainer = _trainer_class()(
        model=g.model, args=args, train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=ClassificationCollator(pad_id), optimizers=(build_optimizer(g, cfg), None),
        compute_metrics=_accuracy if eval_items else None,
        callbacks=_callbacks(g, run, cfg.snapshot_steps, tokens_per_step, keep=cfg.save_total_limit)
        + list(callbacks or []),
        graft_state=g, supervised_head_only=False, base_spec=recipe.model.name, dtype=recipe.model.dtype,
    )
    return run_and_save(trainer, g, run, recipe, resume=resume, quiet=quiet,
                        extra={"task": "classification", "num_labels": labels.num_labels, "labels": labels.to_dict()})


# ----------------------------------------------------------------------------- evaluation


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
    matrix on ``RUN_DIR/data/test.jsonl``; per-kind accuracy when the rows carry a ``kind``."""
    from tokengraft.config import load_recipe
    from tokengraft.tasks import read_jsonl

    run = Path(run_dir)
    recipe = load_recipe(run / "config.yaml", validate=False)
    path = run / "data" / "test.jsonl"
    if not path.is_file():
        raise TokengraftError(f"{path} is missing: put the held-out {{\"text\", \"label\"}} rows there to evaluate")
    g = load_classifier(run, device=recipe.model.device)
    rows = as_rows(read_jsonl(path)[:limit], str(path))
    pad_id = int(g.hf_model.config.pad_token_id)
    items, dropped = encode_rows(rows, g.tokenizer, g.labels, recipe.data.max_length,
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
