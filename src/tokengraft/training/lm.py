"""The language-model recipe: graft tokens onto a causal LM and train them, a recipe in, a run directory out.

Built from the engine's parts (engine.py); what is particular to a causal LM is here:

- the loss runs the LM head only at supervised positions (labels != -100), so
  prompt positions never produce vocab-sized logits (`supervised_logits`; the
  ordinary all-positions path is `full_logits`);
- the optional IDK objective (objectives.py) replaces cross-entropy while training;
- prompt/completion rows are encoded by data.py, whose statistics refuse a new
  token that the training data never uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokengraft.config import Recipe
from tokengraft.constants import IGNORE_INDEX
from tokengraft.core.distill import fit_output_rows
from tokengraft.core.graft import Graft, graft, token_settings
from tokengraft.core.guard import audit, preflight
from tokengraft.data import Collator, Example, check_tokens_used, encode_examples
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import load_model
from tokengraft.quantization import quantized_modules, trainer_accepts
from tokengraft.rundir import data_dir
from tokengraft.tasks import get_task
from tokengraft.timing import phase
from tokengraft.training.engine import (ListDataset, LossFn, TrainResult, build_optimizer, enable_gradient_checkpointing,
                                        engine_callbacks, method_configs, quant_spec, run_and_save, start_run,
                                        tokens_per_step, trainer_class, training_arguments, write_dataset_stats)
from tokengraft.training.objectives import IdkObjective, UntokenedKL
from tokengraft.training.prepare import prepare_data
from tokengraft.training.sharding import load_device

# ----------------------------------------------------------------------------- the loss


def _unwrap(model: Any) -> Any:
    """The transformers model under DDP/DeepSpeed wrappers (accelerate) and PEFT."""
    from accelerate.utils import extract_model_from_parallel

    return unwrap_peft(extract_model_from_parallel(model))


def supervised_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets at supervised positions only: ``[n_supervised, vocab]``, ``[n_supervised]``.

    Position t predicts token t+1, so hidden state t is kept when label t+1 is
    supervised. A forward pre-hook on the head hands it those rows alone, so the
    head (with any token-row overlay) never produces vocab-sized logits for prompt
    positions. The call still goes through ``model(...)``, whatever wraps it: under
    DistributedDataParallel only a forward through the wrapper arms the gradient
    all-reduce (calling the inner body directly would leave ranks silently unsynced).
    """
    head = _unwrap(model).get_output_embeddings()
    if head is None:
        raise TokengraftError("the model has no output head; set train.supervised_head_only: false")
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # [B, T-1]

    def select_rows(module: Any, args: tuple) -> tuple:
        hidden = args[0]  # [B, T, H]
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != tuple(input_ids.shape):
            raise TokengraftError(f"the head of {type(_unwrap(model)).__name__} received hidden states of shape "
                                  f"{tuple(hidden.shape)}, not [batch, sequence, hidden]; "
                                  "set train.supervised_head_only: false")
        return (hidden[:, :-1][keep],) + tuple(args[1:])  # [n, H]

    handle = head.register_forward_pre_hook(select_rows)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [n, V]
    finally:
        handle.remove()
    return logits, targets[keep]


def full_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordinary path: logits at every position, then the supervised ones selected."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
    if logits.shape[1] != input_ids.shape[1]:  # prefix tuning prepends virtual tokens
        logits = logits[:, -input_ids.shape[1]:]
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return logits[:, :-1][keep], targets[keep]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, num_items: int | None = None) -> torch.Tensor:
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    return loss / (num_items if num_items else max(1, targets.numel()))


@dataclass
class LMLoss:
    """The recipe's `LossFn`: next-token loss at supervised positions; while training, the objective (if any)
    replaces cross-entropy and the untokened KL term (if any) is added."""

    supervised_head_only: bool
    objective: IdkObjective | None = None
    kl: UntokenedKL | None = None

    def __call__(self, model: Any, inputs: dict[str, torch.Tensor], num_items: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        select = supervised_logits if self.supervised_head_only else full_logits
        logits, targets = select(model, inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"])
        if not model.training:
            return causal_lm_loss(logits, targets, num_items), logits
        loss = self.objective(logits, targets, num_items) if self.objective is not None else \
            causal_lm_loss(logits, targets, num_items)
        if self.kl is not None:
            loss = loss + self.untokened_kl(model, select, inputs, logits, num_items)
        return loss, logits

    def untokened_kl(self, model: Any, select: Any, inputs: dict[str, torch.Tensor], logits: torch.Tensor,
                     num_items: int | None) -> torch.Tensor:
        """The KL term on the batch's rows without a grafted token; the base logits come from the same rows run
        again with the LoRA switched off (no gradient)."""
        assert self.kl is not None
        input_ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs.get("attention_mask")
        plain = self.kl.plain_rows(input_ids)  # [B]
        keep = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]: the positions `logits` holds, row-major
        at = plain[keep.nonzero()[:, 0]]  # [n]: which of them belong to plain rows
        if not bool(at.any()):
            return logits.new_zeros(())
        with torch.no_grad(), lora_switched_off(model):
            reference, _ = select(model, input_ids[plain], mask[plain] if mask is not None else None, labels[plain])
        return self.kl(logits[at], reference, num_items, int(logits.shape[0]))  # divided like the cross-entropy


@contextmanager
def lora_switched_off(model: Any) -> Iterator[None]:
    """The model computing its base function under LoRA (token rows stay): PEFT's ``disable_adapter``."""
    from accelerate.utils import extract_model_from_parallel

    peft_model = extract_model_from_parallel(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise TokengraftError("train.kl_untokened needs a LoRA method: the base distribution is the model with "
                              "its LoRA switched off")
    with peft_model.disable_adapter():
        yield


def example_text(row: Any) -> str:
    """The running text of a training row (a generated dict or a loaded `Example`): plain text, or prompt
    then completion; what the rows are fitted on."""
    if isinstance(row, Example):
        return row.completion if row.kind == "text" else f"{row.prompt}\n{row.completion}"
    if "text" in row:
        return str(row["text"])
    return f"{row.get('prompt', '')}\n{row.get('completion') or ''}"


def uses_prefix(g: Graft) -> bool:
    """Prefix tuning prepends virtual tokens, which the supervised-only head cannot line up with the labels."""
    return any(c.get("type") == "prefix" for c in g.method_configs)


def lm_loss(g: Graft, recipe: Recipe) -> LossFn:
    objective = IdkObjective.for_graft(g) if recipe.train.objective == "idk" else None
    kl = None
    if recipe.train.kl_untokened > 0:
        answer_ids = [g.report.ids[t] for t in get_task(recipe.task).answer_tokens if t in g.report.ids]
        kl = UntokenedKL(recipe.train.kl_untokened, torch.tensor(sorted(g.trainable_ids), dtype=torch.long),
                         torch.tensor(answer_ids, dtype=torch.long))
    return LMLoss(recipe.train.supervised_head_only and not uses_prefix(g), objective, kl)


def check_plain_rows(items: list[dict[str, Any]], g: Graft) -> None:
    """``train.kl_untokened`` needs training rows without any grafted token (else the term is always 0)."""
    grafted = set(g.trainable_ids)
    if not any(grafted.isdisjoint(item["input_ids"]) for item in items):
        raise TokengraftError("train.kl_untokened: every training row holds a grafted token, so the KL term would "
                              "never apply; add rows without them (task style: data.generate_options.n_plain; "
                              "task pass: answerable questions, not all turned into <PASS> by data.know_check)")


# ----------------------------------------------------------------------------- the recipe


def train_lm(recipe: Recipe, output_dir: str | Path, *, resume: bool = False, quiet: bool = False,
             callbacks: list[Any] | None = None) -> TrainResult:
    """Run a causal-LM recipe end to end and leave a complete run directory at ``output_dir``.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (they see the
    model, state and control like any Trainer callback).
    """
    run, device = start_run(recipe, output_dir)
    quant = quant_spec(recipe, device)
    with phase("load the base model"):
        model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=str(load_device(recipe, device)),
                                      trust_remote_code=recipe.model.trust_remote_code, quantization=quant)
    if quant is not None and not quiet:
        print(f"tokengraft: base loaded {quant.describe()} with bitsandbytes "
              f"({len(quantized_modules(model))} linear layers quantized; embedding, head and norms in {recipe.model.dtype})")
    with phase("data"):
        data = prepare_data(recipe, data_dir(run), tokenizer, model)
    with phase("graft, guard and encode"):
        settings = token_settings(recipe.tokens, data.extra_tokens)
        g = graft(model, tokenizer, settings, method_configs(recipe), seed=recipe.seed, verbose=not quiet)
        if recipe.tokens.distill_output:
            distilled = fit_output_rows(g, [example_text(r) for r in data.train], seed=recipe.seed)
            if not quiet:
                print(f"tokengraft: {distilled.summary()}")
        preflight(g)
        report = audit(g)
        train_items, stats = encode_examples(data.train, tokenizer, recipe.data.max_length, system=recipe.data.system,
                                             on_overflow=recipe.data.on_overflow,
                                             new_tokens=[t for t in settings.add if t in g.report.added])
        check_tokens_used(stats, g.report.added)
        eval_items, _ = encode_examples(data.validation, tokenizer, recipe.data.max_length, system=recipe.data.system,
                                        on_overflow="drop", new_tokens=[]) if data.validation else ([], None)
    if not train_items:
        raise TokengraftError("no training examples survived encoding (all dropped as too long?); raise data.max_length")
    if recipe.train.kl_untokened > 0:
        check_plain_rows(train_items, g)
    if not quiet:
        print(report.table())
        print("training data: " + stats.table().replace("\n", "\n  "))

    cfg = recipe.train
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(g.model)
    eval_steps = cfg.eval_steps if (eval_items and cfg.eval_steps) else 0
    args = training_arguments(recipe, run, device, quiet=quiet, eval_steps=eval_steps, prediction_loss_only=True)
    write_dataset_stats(args, run, stats.to_dict(), report.to_dict())
    loss_fn = lm_loss(g, recipe)
    with trainer_accepts(g.model):  # a quantized base whose trainable parts are token rows / hook adapters
        trainer = trainer_class()(
            model=g.model, args=args, train_dataset=ListDataset(train_items),
            eval_dataset=ListDataset(eval_items) if eval_items else None,
            data_collator=Collator(tokenizer), optimizers=(build_optimizer(g, cfg), None),
            callbacks=engine_callbacks(g, run, cfg.snapshot_steps, tokens_per_step(train_items, cfg),
                                       keep=cfg.save_total_limit) + list(callbacks or []),
            graft_state=g, loss_fn=loss_fn, base_spec=recipe.model.name, dtype=recipe.model.dtype,
        )
    return run_and_save(trainer, g, run, recipe, resume=resume, quiet=quiet, extra={"task": recipe.task})
