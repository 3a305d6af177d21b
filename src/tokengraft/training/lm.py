"""The training engine: a recipe in, a run directory out.

``transformers.Trainer`` does the loop (accelerate underneath, so
``accelerate launch`` gives data parallelism); ``GraftTrainer`` is a thin
subclass that changes three things:

- the loss runs the LM head only at supervised positions (labels != -100), so
  prompt positions never produce vocab-sized logits;
- model checkpoints are our run-directory artifacts (rows + method weights as
  safetensors), not a copy of the frozen base; a checkpoint counts only once
  its completion marker is written, so a kill during a save never leaves one
  that looks complete;
- a non-finite loss stops the run before the optimiser can apply it.

The Trainer's own optimiser/scheduler/RNG files are read back with
``torch.load(weights_only=True)`` (the restricted loader: tensors and plain
types only), which is what makes resume bit-identical on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tokengraft.constants import IGNORE_INDEX
from tokengraft.errors import TokengraftError
from tokengraft.core.graft import Graft, graft, token_settings
from tokengraft.methods.spec import unwrap_peft

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"


class ListDataset(Dataset):
    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def start_run(recipe: Any, output_dir: str | Path) -> tuple[Path, torch.device]:
    """What every training command does first: the run directory, the seed, the quantization check, the device."""
    from tokengraft.models import pick_device

    run = Path(output_dir)
    run.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    if recipe.model.quantization != "none":
        _check_quantization(recipe.model.quantization)
    return run, pick_device(recipe.model.device)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------- trainer


def _make_trainer_class():
    from transformers import Trainer

    class GraftTrainer(Trainer):
        """Trainer with a supervised-positions-only head and run-directory checkpoints."""

        def __init__(self, *args: Any, graft_state: Graft, supervised_head_only: bool, base_spec: str,
                     dtype: str, objective: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # compute_loss divides by num_items_in_batch (the supervised-token count over the whole
            # accumulated, all-rank batch); this tells the Trainer so for every model family, so it
            # neither divides again by grad_accum nor skips the x world-size that undoes DDP's mean.
            self.model_accepts_loss_kwargs = True
            self.graft_state = graft_state
            self.supervised_head_only = supervised_head_only and not _uses_prefix(graft_state)
            self.base_spec = base_spec
            self.dtype_name = dtype
            self.objective = objective

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            select = supervised_logits if self.supervised_head_only else full_logits
            logits, targets = select(model, inputs["input_ids"], inputs.get("attention_mask"), labels)
            count = int(num_items_in_batch) if num_items_in_batch is not None else None
            if self.objective is not None and model.training:
                loss = self.objective(logits, targets, count)
            else:
                loss = causal_lm_loss(logits, targets, count)
            if count is not None and self.args.average_tokens_across_devices:
                # `count` covers every rank's tokens, and DDP averages gradients over ranks: scale back
                # up so the update is the mean over all supervised tokens (what Trainer.compute_loss does).
                loss = loss * self.accelerator.num_processes
            if not torch.isfinite(loss) and self.accelerator.num_processes == 1:
                # With several processes a rank must not stop alone (the others would wait in the
                # all-reduce forever): the NaN spreads to every rank's gradients, and the gradient
                # guard stops all of them at the same step, still before the update.
                raise non_finite_error("loss", loss.item(), self.state.global_step + 1, self.args.output_dir)
            return (loss, {"logits": logits}) if return_outputs else loss

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            from tokengraft.rundir import save_graft

            if not self.args.should_save:
                return
            save_graft(self.graft_state, output_dir or self.args.output_dir, base_spec=self.base_spec,
                       dtype=self.dtype_name)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            restore_trained_tensors(self.graft_state, resume_from_checkpoint)

    return GraftTrainer


def non_finite_error(what: str, value: float | str, step: int, output_dir: str | Path) -> TokengraftError:
    done = complete_checkpoints(output_dir)
    kept = f"the last good checkpoint is {done[-1]}" if done else f"no checkpoint was written yet in {output_dir}"
    return TokengraftError(
        f"the {what} became {value} at step {step}; training stopped before that step's update and {kept} "
        "(lower train.lr / train.token_lr, or use precision fp32)"
    )


def _uses_prefix(g: Graft) -> bool:
    return any(c.get("type") == "prefix" for c in g.method_configs)


def restore_trained_tensors(g: Graft, checkpoint: str | Path) -> None:
    """Copy a checkpoint's trained rows and method weights into the live model, in place."""
    from tokengraft.rundir import ROWS_FILE, _load_tensors

    rows = _load_tensors(Path(checkpoint) / ROWS_FILE)
    with torch.no_grad():
        if g.rows is not None:
            g.rows.input_rows.copy_(rows["input"].to(g.rows.input_rows))
            if g.rows.output_rows is not None and "output" in rows:
                g.rows.output_rows.copy_(rows["output"].to(g.rows.output_rows))
        else:
            raise TokengraftError("resume is supported for the rows backend; restart the run for peft/full backends")
    if g.methods is not None:
        from tokengraft.methods.state import WEIGHTS_FILE

        tensors = _load_tensors(Path(checkpoint) / WEIGHTS_FILE)
        with torch.no_grad():
            for record in g.methods.records:
                for name, parameter in zip(record.names, record.params):
                    if name not in tensors:
                        raise TokengraftError(f"checkpoint {checkpoint} lacks method weight {name!r}")
                    parameter.copy_(tensors[name].to(parameter))


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints with the completion marker, oldest first."""
    run = Path(output_dir)
    found = []
    for path in run.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def discard_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete step checkpoints without the completion marker (a kill mid-save); other folders are left alone."""
    run = Path(output_dir)
    removed = []
    for path in run.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and step.isdigit() and not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- callbacks


def rotate_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``keep``; incomplete ones never count."""
    done = complete_checkpoints(output_dir)
    if keep is None or len(done) <= keep:
        return []
    removed = done[:len(done) - keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _callbacks(g: Graft, run_dir: Path, snapshot_steps: int, tokens_per_step: list[int], keep: int | None = None):
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Mark a checkpoint complete after every process has written its part, then rotate.

        Every rank writes into the checkpoint (rank r its ``rng_state_r.pth``), so the
        marker waits at a barrier. Rotation runs here, after the marker, and counts
        complete checkpoints only: the Trainer's own rotation runs before the marker
        exists and could delete the last complete checkpoint while the new one is not
        yet marked, so it is switched off (``save_total_limit=None`` on the Trainer).
        """

        def on_save(self, args, state, control, **kwargs):
            PartialState().wait_for_everyone()
            if args.should_save:
                path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
                if path.is_dir():
                    (path / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step}))
                rotate_checkpoints(args.output_dir, keep)

    class NonFiniteGuard(TrainerCallback):
        """Refuse an update whose gradients are not finite.

        A loss can be finite while its gradients overflow; applying them would write
        NaN into the rows, and the next checkpoint would save them. Checked after
        clipping and the all-reduce, so every rank sees the same verdict.
        """

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads = [p.grad for p in g.model.parameters() if p.requires_grad and p.grad is not None]
            if grads and not bool(torch.stack([torch.isfinite(x).all() for x in grads]).all()):
                raise non_finite_error("gradient", "non-finite", state.global_step + 1, args.output_dir)

    class Throughput(TrainerCallback):
        """Tokens per second in the progress bar's log lines."""

        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.step0 = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "loss" not in logs:
                return
            elapsed = max(1e-9, time.perf_counter() - self.start)
            steps = state.global_step - self.step0
            mean_tokens = sum(tokens_per_step) / max(1, len(tokens_per_step))
            logs["tokens_per_s"] = round(steps * mean_tokens / elapsed, 1)

    callbacks = [CheckpointMarker(), NonFiniteGuard(), Throughput()]
    if snapshot_steps and g.rows is not None:
        from tokengraft.training.snapshots import RowSnapshots

        callbacks.append(RowSnapshots(g, run_dir / "snapshots", snapshot_steps))
    return callbacks


# ----------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    run_dir: Path
    graft: Graft
    log_history: list[dict[str, Any]]
    train_seconds: float
    steps: int


def _precision(recipe_precision: str, device: torch.device) -> dict[str, bool]:
    if recipe_precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return {"bf16": True}
        return {}
    if recipe_precision == "fp32":
        return {}
    if device.type != "cuda":
        raise TokengraftError(f"train.precision {recipe_precision} needs a CUDA GPU; on CPU use fp32 or auto")
    return {recipe_precision: True}


def build_optimizer(g: Graft, train_cfg: Any) -> torch.optim.Optimizer:
    """Token rows get their own learning rate; everything else trainable uses ``train.lr``."""
    token_params = {id(p) for p in g.token_parameters()}
    rows = [p for p in g.model.parameters() if p.requires_grad and id(p) in token_params]
    rest = [p for p in g.model.parameters() if p.requires_grad and id(p) not in token_params]
    groups = [{"params": rows, "lr": train_cfg.token_lr, "weight_decay": 0.0}]
    if rest:
        groups.append({"params": rest, "lr": train_cfg.lr, "weight_decay": train_cfg.weight_decay})
    groups = [group for group in groups if group["params"]]
    if train_cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(groups)


def train(recipe: Any, output_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          callbacks: list[Any] | None = None) -> TrainResult:
    """Run a recipe end to end and leave a complete run directory at ``output_dir``.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (they see the
    model, state and control like any Trainer callback).
    """
    if recipe.task == "classification":  # a classifier head instead of the LM head: classify.py
        from tokengraft.training.classifier import train_classifier

        return train_classifier(recipe, output_dir, resume=resume, quiet=quiet, callbacks=callbacks)
    from accelerate import PartialState

    from tokengraft.data import Collator, check_tokens_used, encode_examples
    from tokengraft.core.guard import audit, preflight
    from tokengraft.models import load_model
    from tokengraft.tasks.prepare import prepare_data

    run, device = start_run(recipe, output_dir)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        # Under a launcher each process owns the GPU of its local rank; plain "cuda" would put
        # every process's copy on GPU 0 before the Trainer moves it (not tested here: CPU only).
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=str(device),
                                  trust_remote_code=recipe.model.trust_remote_code)
    data = prepare_data(recipe, run, tokenizer, model)
    settings = token_settings(recipe.tokens, data.extra_tokens)
    methods = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in recipe.methods]
    g = graft(model, tokenizer, settings, methods, seed=recipe.seed, verbose=not quiet)
    preflight(g)
    report = audit(g)
    train_items, stats = encode_examples(data.train, tokenizer, recipe.data.max_length, system=recipe.data.system,
                                         on_overflow=recipe.data.on_overflow, new_tokens=[t for t in settings.add if t in g.report.added])
    check_tokens_used(stats, g.report.added)
    eval_items, _ = encode_examples(data.validation, tokenizer, recipe.data.max_length, system=recipe.data.system,
                                    on_overflow="drop", new_tokens=[]) if data.validation else ([], None)
    if not train_items:
        raise TokengraftError("no training examples survived encoding (all dropped as too long?); raise data.max_length")
    if not quiet:
        print(report.table())
        print("training data: " + stats.table().replace("\n", "\n  "))
    main_process = PartialState().is_main_process  # under `accelerate launch` only rank 0 writes the run directory
    if main_process:
        (run / "dataset_stats.json").write_text(json.dumps({"train": stats.to_dict(), "audit": report.to_dict()}, indent=2))

    cfg = recipe.train
    if cfg.gradient_checkpointing:
        hf = unwrap_peft(g.model)
        if hasattr(hf, "activation_checkpointing_enable"):  # the name since transformers 5.x; the old one warns
            hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unwrap_peft(g.model).config.use_cache = False
    eval_steps = cfg.eval_steps if (eval_items and cfg.eval_steps) else 0
    # Untied input rows join the graph only in batches that contain one of their ids; DDP must
    # then be told to expect unused parameters (the Trainer turns that off under gradient
    # checkpointing, and the first such batch would stop the run with a reduction error).
    sparse_inputs = g.rows is not None and g.rows.output_rows is not None
    args = training_arguments(recipe, run, device, quiet=quiet, eval_steps=eval_steps,
                              prediction_loss_only=True, ddp_find_unused_parameters=True if sparse_inputs else None)
    mean_length = sum(len(x["input_ids"]) for x in train_items) / len(train_items)
    tokens_per_step = [round(mean_length * cfg.batch_size * cfg.grad_accum)]
    trainer_cls = _make_trainer_class()
    objective = None
    if cfg.objective == "idk":
        from tokengraft.training.objectives import IdkObjective

        objective = IdkObjective.for_graft(g)
    trainer = trainer_cls(
        model=g.model, args=args, train_dataset=ListDataset(train_items),
        eval_dataset=ListDataset(eval_items) if eval_items else None,
        data_collator=Collator(tokenizer), optimizers=(build_optimizer(g, cfg), None),
        callbacks=_callbacks(g, run, cfg.snapshot_steps, tokens_per_step, keep=cfg.save_total_limit)
        + list(callbacks or []),
        graft_state=g, supervised_head_only=cfg.supervised_head_only, base_spec=recipe.model.name,
        dtype=recipe.model.dtype, objective=objective,
    )
    return run_and_save(trainer, g, run, recipe, resume=resume, quiet=quiet, extra={"task": recipe.task})


def run_and_save(trainer: Any, g: Any, run: Path, recipe: Any, *, resume: bool, quiet: bool,
                 extra: dict[str, Any]) -> TrainResult:
    """Resume from the latest complete checkpoint if asked, train, and write the run directory (rank 0).

    Shared by language-model and classifier training so both resume, check ranks and save alike.
    """
    from accelerate import PartialState

    from tokengraft.rundir import save_graft

    main_process = PartialState().is_main_process
    checkpoint = None
    if resume:
        if main_process:
            discard_incomplete_checkpoints(run)
        PartialState().wait_for_everyone()
        done = complete_checkpoints(run)
        if not done:
            raise TokengraftError(f"--resume: {run} has no complete checkpoint to resume from; start without --resume")
        checkpoint = str(done[-1])
        if not quiet:
            print(f"tokengraft: resuming from {checkpoint}")
    g.model.train()
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    g.model.eval()
    world_size = check_ranks_agree(g)
    history = trainer.state.log_history
    if main_process:
        recipe.save(run / "config.yaml")
        save_graft(g, run, base_spec=recipe.model.name, dtype=recipe.model.dtype,
                   extra={**extra, "seed": recipe.seed, "train_seconds": round(seconds, 1),
                          "steps": trainer.state.global_step, "world_size": world_size})
        (run / "log_history.json").write_text(json.dumps(history, indent=2))
        _plot_losses(history, run / "loss.png")
    PartialState().wait_for_everyone()  # no rank returns before the run directory is complete
    return TrainResult(run_dir=run, graft=g, log_history=history, train_seconds=seconds,
                       steps=trainer.state.global_step)


def check_ranks_agree(g: Graft) -> int:
    """Under data parallelism, make sure every rank ends with the same trained tensors; returns the world size.

    DDP keeps replicas equal only if every update went through its gradient
    all-reduce; a desync would otherwise go unnoticed, since only rank 0 saves.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    world = torch.distributed.get_world_size()
    trained = [p for p in g.model.parameters() if p.requires_grad]
    mine = torch.stack([p.detach().double().sum() for p in trained] or [torch.zeros((), dtype=torch.float64)])
    mine = mine.to(trained[0].device if trained else "cpu")
    every = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    if any(not torch.equal(every[0], other) for other in every[1:]):
        raise TokengraftError(f"the {world} data-parallel processes ended with different trained weights "
                              "(their gradients were not synchronised); the run directory was not written")
    return world


def training_arguments(recipe: Any, run: Path, device: torch.device, *, quiet: bool, eval_steps: int,
                       **extra: Any) -> Any:
    """The recipe's ``train`` section as ``TrainingArguments`` (shared by LM and classifier training)."""
    from transformers import TrainingArguments

    cfg = recipe.train
    return TrainingArguments(
        output_dir=str(run), seed=recipe.seed, data_seed=recipe.seed,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=float(cfg.epochs), max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps or None,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        # Rotation is ours (rotate_checkpoints): it counts only complete checkpoints.
        save_total_limit=None, report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=quiet,
        use_cpu=device.type == "cpu", save_only_model=False,
        **_precision(cfg.precision, device), **extra,
    )


def _check_quantization(kind: str) -> None:
    if not torch.cuda.is_available():
        raise TokengraftError(f"model.quantization: {kind} needs a CUDA GPU and bitsandbytes; on CPU set model.quantization: none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TokengraftError(f"model.quantization: {kind} needs bitsandbytes: pip install bitsandbytes") from None
    raise TokengraftError("quantized training is not wired into tokengraft yet; set model.quantization: none")


def _plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    """Training and evaluation loss against step, as a PNG beside the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and math.isfinite(h["loss"])]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if not train and not evals:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
