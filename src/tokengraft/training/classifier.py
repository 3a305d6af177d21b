"""The classification recipe (``task: classification``): a classifier head on the causal LM, trained by the engine.

Built from the same engine parts as the LM recipe (run setup, arguments,
optimiser groups, `GraftTrainer`, callbacks, `run_and_save`); what classification
changes is here:

- the model is ``AutoModelForSequenceClassification`` built from the loaded LM
  (`methods.classification.build_classifier`): same backbone tensors, a fresh seeded
  head. The recipe's methods apply to the classifier, and the head always trains, so
  ``methods: []`` is reference 002's linear probe (head only);
- tokens are optional. With none, nothing is grafted (there is no vocabulary change
  to make). With some, only their INPUT rows train: a classifier reads tokens but
  never writes them (it has no LM head);
- rows are ``{"text", "label"}`` (data.py's classification rows); the loss is cross-entropy
  on the head's logits at the last non-pad token; evaluation during training reports
  ``eval_accuracy`` beside ``eval_loss``.

Run directories are ordinary tokengraft run directories (``graft.json`` records
``task: classification``, ``num_labels`` and the label names, also in ``labels.json``);
the head's weights are saved with the method weights. `rundir.load_classifier`
rebuilds the classifier, and `evaluation.classification` scores the test split.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from tokengraft.config import Recipe
from tokengraft.core.arch import describe
from tokengraft.core.graft import TokenSettings, attach_row_graft, resolve_existing_ids, token_settings
from tokengraft.core.guard import Audit, audit, preflight
from tokengraft.core.vocab import AddReport, add_tokens
from tokengraft.data import ClassificationCollator, as_labelled_rows, encode_labelled_rows
from tokengraft.errors import TokengraftError
from tokengraft.methods import apply_methods
from tokengraft.methods.classification import build_classifier
from tokengraft.models import fingerprint, load_model
from tokengraft.rundir import CLASSIFICATION_TASK, ClassifierGraft, data_dir, name_labels, write_labels
from tokengraft.tasks.classify_data import LabelSet, label_set
from tokengraft.training.engine import (ListDataset, TrainResult, build_optimizer, enable_gradient_checkpointing,
                                        engine_callbacks, is_main_process, method_configs, run_and_save, start_run,
                                        tokens_per_step, trainer_class, training_arguments, write_dataset_stats)
from tokengraft.training.prepare import prepare_data
from tokengraft.training.sharding import load_device

# ----------------------------------------------------------------------------- building


def build_classifier_graft(lm: Any, tokenizer: Any, settings: TokenSettings, configs: list[dict],
                           labels: LabelSet, *, seed: int = 0, verbose: bool = True) -> ClassifierGraft:
    """Classifier from ``lm``, optional input-side token rows, methods applied; the head always trains.

    The LM itself is not modified (the classifier holds copies of its tensors).
    """
    if settings.backend != "rows":
        raise TokengraftError("task classification trains token rows with tokens.backend: rows only")
    if settings.sides == "output":
        raise TokengraftError("task classification has no LM head to train token OUTPUT rows; set tokens.sides: input")
    settings.sides = "input"  # a classifier only reads its tokens
    base_fingerprint = fingerprint(lm)
    clf = build_classifier(lm, labels.num_labels, tokenizer, seed=seed)
    name_labels(clf, labels)
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
    # apply_methods always (graft() freezes everything for methods: []): it is what makes the head trainable.
    model, state = apply_methods(clf, describe(clf, tokenizer), [dict(c) for c in configs])
    g = ClassifierGraft(model=model, tokenizer=tokenizer, settings=settings, report=report,
                        trainable_ids=trainable_ids, methods=state, method_configs=[dict(c) for c in configs],
                        base_fingerprint=base_fingerprint, labels=labels)
    if trainable_ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rows.py warns that input-only rows are never written: intended here
            g.rows = attach_row_graft(model, report, existing, settings)
    return g


# ----------------------------------------------------------------------------- the loss and checks


def classification_loss(model: Any, inputs: dict[str, torch.Tensor], num_items: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's `LossFn`: cross-entropy on the head's class logits ``[B, C]`` against ``labels`` ``[B]``."""
    labels = inputs["labels"]  # [B]
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits  # [B, C]
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
    return loss / (num_items if num_items else max(1, labels.numel())), logits


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


def classifier_audit(g: ClassifierGraft) -> Audit:
    """guard.audit, with the classification head named as such (guard files it under 'other')."""
    report = audit(g)
    head = sum(r.count for r in g.methods.records if r.spec is None)
    head += sum(p.numel() for r in g.methods.records if r.spec is not None
                for n, p in zip(r.names, r.params) if ".modules_to_save." in n)
    if head and report.by_role.get("other") == head:
        report.by_role["head"] = report.by_role.pop("other")
    return report


# ----------------------------------------------------------------------------- the recipe


def train_classifier(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, quiet: bool = False,
                     callbacks: list[Any] | None = None) -> TrainResult:
    """Run a ``task: classification`` recipe end to end and leave a complete run directory at ``output_dir``."""
    run, device = start_run(recipe, output_dir)
    lm, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=str(load_device(recipe, device)),
                               trust_remote_code=recipe.model.trust_remote_code)
    data = prepare_data(recipe, data_dir(run), tokenizer, lm)
    train_rows, eval_rows = as_labelled_rows(data.train, "train"), as_labelled_rows(data.validation, "validation")
    labels = label_set([(r.label, r.where) for r in train_rows])
    settings = token_settings(recipe.tokens, data.extra_tokens)
    g = build_classifier_graft(lm, tokenizer, settings, method_configs(recipe), labels, seed=recipe.seed,
                               verbose=not quiet)
    del lm  # the classifier holds its own copy of the backbone
    if g.trainable_ids:
        preflight(g)
    report = classifier_audit(g)
    cfg, d = recipe.train, recipe.data
    pad_id = int(g.hf_model.config.pad_token_id)
    train_items, dropped = encode_labelled_rows(train_rows, tokenizer, labels, d.max_length, d.on_overflow, pad_id)
    eval_items, _ = encode_labelled_rows(eval_rows, tokenizer, labels, d.max_length, "drop", pad_id)
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

    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(g.model)
    eval_steps = cfg.eval_steps if (eval_items and cfg.eval_steps) else 0
    args = training_arguments(recipe, run, device, quiet=quiet, eval_steps=eval_steps, prediction_loss_only=False,
                              label_names=["labels"])
    write_dataset_stats(args, run, stats, report.to_dict())
    if is_main_process(args):
        write_labels(run, labels)
    trainer = trainer_class()(
        model=g.model, args=args, train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=ClassificationCollator(pad_id), optimizers=(build_optimizer(g, cfg), None),
        compute_metrics=_accuracy if eval_items else None,
        callbacks=engine_callbacks(g, run, cfg.snapshot_steps, tokens_per_step(train_items, cfg),
                                   keep=cfg.save_total_limit) + list(callbacks or []),
        graft_state=g, loss_fn=classification_loss, base_spec=recipe.model.name, dtype=recipe.model.dtype,
    )
    return run_and_save(trainer, g, run, recipe, resume=resume, quiet=quiet,
                        extra={"task": CLASSIFICATION_TASK, "num_labels": labels.num_labels, "labels": labels.to_dict()})
