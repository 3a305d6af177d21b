"""The training engine's public parts; the recipes (lm.py, classifier.py) are built from them.

``transformers.Trainer`` does the loop (accelerate underneath, so
``accelerate launch`` gives data parallelism). What every recipe shares lives here:

- run setup (`start_run`: directory, seed, the quantization extra, device; `quant_spec`);
- ``TrainingArguments`` from the recipe (`training_arguments`) and the optimiser with
  its own learning rate for token rows (`build_optimizer`);
- `GraftTrainer` (`trainer_class`), a thin Trainer subclass that takes the recipe's
  loss as a function, saves our run-directory artifacts as its checkpoints, restores
  them on resume, and stops on a non-finite loss before the optimiser applies it;
- the callbacks (`engine_callbacks`): checkpoint completion marker + rotation, the
  non-finite gradient guard, throughput, row snapshots;
- `run_and_save`: resume, train, check that the ranks agree, write the run directory.

The Trainer's own optimiser/scheduler/RNG files are read back with
``torch.load(weights_only=True)`` (the restricted loader: tensors and plain
types only), which is what makes resume bit-identical on CPU.

transformers and accelerate are imported where the Trainer is built, not at module
import: importing the Trainer takes seconds, and ``tokengraft.load`` should not pay it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tokengraft.config import Recipe, TrainConfig
from tokengraft.core.graft import Graft
from tokengraft.errors import TokengraftError
from tokengraft.methods.spec import unwrap_peft
from tokengraft.models import pick_device
from tokengraft.quantization import QuantSpec, check_optimizer_device, paged_adamw_8bit, require_bitsandbytes
from tokengraft.rundir import (CONFIG_FILE, DATASET_STATS_FILE, GRAFT_FILE, LOG_HISTORY_FILE, SNAPSHOTS_DIR,
                               is_classifier_meta, load_classifier, load_graft, read_graft_meta, save_graft, write_json)
from tokengraft.timing import note, phase
from tokengraft.training.checkpoints import (check_same_shape, checkpoint_dir, mark_complete, newest_good_checkpoint,
                                             required_files, restore_trained_tensors, resume_checkpoint,
                                             rotate_checkpoints, trained_tensors_problem, trainer_state)
from tokengraft.training.sharding import (check_engine, full_trained_tensors, is_dtensor, partition_zero3,
                                          training_engine_arguments, uses_deepspeed)

LossFn = Callable[[Any, dict[str, torch.Tensor], int | None], tuple[torch.Tensor, torch.Tensor]]
"""``loss_fn(model, inputs, num_items) -> (loss, logits)``: a recipe's loss, normalised by ``num_items``
(the supervised count over the whole accumulated, all-rank batch) when given."""


class ListDataset(Dataset):
    """Encoded items as the map-style dataset the Trainer samples from."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


# ----------------------------------------------------------------------------- run setup


def start_run(recipe: Recipe, output_dir: str | Path) -> tuple[Path, torch.device]:
    """What every training recipe does first: the run directory, the seed, the quantization check, the device."""
    run = Path(output_dir)
    run.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    if recipe.model.quantization != "none":  # before any data is generated: a missing extra is one line
        require_bitsandbytes(f"model.quantization: {recipe.model.quantization}")
    device = pick_device(recipe.model.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        # Under a launcher each process owns the GPU of its local rank; plain "cuda" would put
        # every process's copy on GPU 0 before the Trainer moves it (not tested here: CPU only).
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    check_optimizer_device(recipe.train.optimizer, device)
    check_engine(recipe, device)
    return run, device


def quant_spec(recipe: Recipe, device: torch.device) -> QuantSpec | None:
    """How the recipe's base is quantized on ``device`` (None: full precision); ``auto`` compute dtype resolved."""
    return QuantSpec.from_model_config(recipe.model, device)


def set_seed(seed: int) -> None:
    """Seed every generator the run draws from before the model is built (init, data order, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def method_configs(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's ``methods`` entries as plain dicts (what graft and the run directory record)."""
    return [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in recipe.methods]


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs still pass gradients)."""
    hf = unwrap_peft(model)
    if hasattr(hf, "activation_checkpointing_enable"):  # the name since transformers 5.x; the old one warns
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf.config.use_cache = False


def tokens_per_step(items: list[dict[str, Any]], train_cfg: TrainConfig) -> list[int]:
    """Mean tokens per optimiser step (for the throughput log line), from the encoded training items."""
    mean_length = sum(len(x["input_ids"]) for x in items) / len(items)
    return [round(mean_length * train_cfg.batch_size * train_cfg.grad_accum)]


def is_main_process(args: Any) -> bool:
    """Whether this process writes the run directory: global rank 0 (under ``accelerate launch`` every rank runs).

    Asked of the ``TrainingArguments`` because they set up the distributed state: before
    them, on CPU, accelerate reports every rank as the main process.
    """
    return args.process_index == 0


def write_dataset_stats(args: Any, run: Path, train_stats: dict[str, Any], audit: dict[str, Any]) -> None:
    """``dataset_stats.json``: what the data held and what trains (global rank 0 only)."""
    if is_main_process(args):
        write_json(run / DATASET_STATS_FILE, {"train": train_stats, "audit": audit})


# ----------------------------------------------------------------------------- arguments and optimiser


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


def training_arguments(recipe: Recipe, run: Path, device: torch.device, *, quiet: bool, eval_steps: int,
                       **extra: Any) -> Any:
    """The recipe's ``train`` section as ``TrainingArguments`` (``extra``: what a recipe adds, e.g. label names)."""
    from transformers import TrainingArguments

    cfg = recipe.train
    return TrainingArguments(
        output_dir=str(run), seed=recipe.seed, data_seed=recipe.seed,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", num_train_epochs=float(cfg.epochs), max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps or None,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        # Rotation is ours (rotate_checkpoints): it counts only complete checkpoints.
        save_total_limit=None, report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=quiet,
        use_cpu=device.type == "cpu", save_only_model=False,
        **_precision(cfg.precision, device), **training_engine_arguments(recipe), **extra,
    )


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
    if train_cfg.optimizer == "paged_adamw_8bit":
        return paged_adamw_8bit(groups)
    return torch.optim.AdamW(groups)


# ----------------------------------------------------------------------------- the non-finite guard


def non_finite_error(what: str, value: float | str, step: int, output_dir: str | Path, *,
                     when: str = "training stopped before that step's update") -> TokengraftError:
    """The error that stops a run whose loss, gradients or weights stopped being finite.

    It names the newest checkpoint that verifies (manifest and finite tensors), so the
    checkpoint it points the user to really is good.
    """
    good, _ = newest_good_checkpoint(output_dir)
    kept = f"the last good checkpoint is {good}" if good else f"no good checkpoint was written yet in {output_dir}"
    return TokengraftError(
        f"the {what} became {value} at step {step}; {when} and {kept} "
        "(lower train.lr / train.token_lr, or use precision fp32)"
    )


def check_loss(loss: torch.Tensor, step: int, output_dir: str | Path, num_processes: int) -> None:
    """Stop on a non-finite loss before the optimiser can apply it (single process).

    With several processes a rank must not stop alone (the others would wait in the
    all-reduce forever): the NaN spreads to every rank's gradients, and the gradient
    guard (`engine_callbacks`) stops all of them at the same step, still before the update.
    """
    if not torch.isfinite(loss) and num_processes == 1:
        raise non_finite_error("loss", loss.item(), step, output_dir)


def check_gradients(model: Any, step: int, output_dir: str | Path) -> None:
    """Refuse an update whose gradients are not finite (a finite loss can still overflow its gradients).

    Each rank checks the gradients it holds (an FSDP2 rank holds shards of them), and the
    ranks agree on the verdict (one all-reduce), so they all stop at the same step or none does.
    """
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    local = [x.to_local() if is_dtensor(x) else x for x in grads]
    finite = torch.stack([torch.isfinite(x).all() for x in local]).all() if local else torch.tensor(True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        flag = finite.to(device=device, dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = flag.bool()
    if not bool(finite):
        raise non_finite_error("gradient", "non-finite", step, output_dir)


# ----------------------------------------------------------------------------- trainer


@functools.cache
def trainer_class() -> type:
    """`GraftTrainer`: ``transformers.Trainer`` with the recipe's loss, run-directory checkpoints and the guard.

    Built on first use (importing the Trainer is slow); one class per process.
    Its extra keyword arguments: ``graft_state`` (the `Graft` being trained),
    ``loss_fn`` (a `LossFn`), ``base_spec`` and ``dtype`` (recorded in every save).
    """
    from transformers import Trainer

    class GraftTrainer(Trainer):
        """Trainer whose loss is the recipe's, and whose checkpoints are run-directory artifacts."""

        def __init__(self, *, model: Any, args: Any, graft_state: Graft, loss_fn: LossFn, base_spec: str, dtype: str,
                     **kwargs: Any):
            ds_config = getattr(args, "hf_deepspeed_config", None)
            if ds_config is not None and ds_config.is_zero3():
                partition_zero3(model, args)
            super().__init__(model=model, args=args, **kwargs)
            # The loss divides by num_items_in_batch (the supervised count over the whole accumulated,
            # all-rank batch); this tells the Trainer so for every model family, so it neither divides
            # again by grad_accum nor skips the x world-size that undoes DDP's mean.
            self.model_accepts_loss_kwargs = True
            self.graft_state = graft_state
            self.loss_fn = loss_fn
            self.base_spec = base_spec
            self.dtype_name = dtype
            self.graft_optimizer = self.optimizer  # the one built by build_optimizer (token rows on their own lr)

        def create_optimizer(self, model: Any = None) -> Any:
            """Hand back tokengraft's optimiser when the Trainer asks for one.

            DeepSpeed's init drops the optimiser given to the Trainer and asks for a new one
            (the Trainer's default would put every parameter on one learning rate); DeepSpeed
            then wraps ours (no optimizer section in its config, so it builds none itself).
            """
            if self.optimizer is None:
                self.optimizer = self.graft_optimizer
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            count = int(num_items_in_batch) if num_items_in_batch is not None else None
            loss, logits = self.loss_fn(model, inputs, count)
            if count is not None and self.args.average_tokens_across_devices:
                # `count` covers every rank's tokens, and DDP averages gradients over ranks: scale back
                # up so the update is the mean over all supervised tokens (what Trainer.compute_loss does).
                loss = loss * self.accelerator.num_processes
            check_loss(loss, self.state.global_step + 1, self.args.output_dir, self.accelerator.num_processes)
            return (loss, {"logits": logits}) if return_outputs else loss

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            """Every save writes the run-directory artifacts, under every engine.

            The Trainer's own version gathers the whole model's state dict first (under
            ZeRO-3 a 16-bit copy of the base, or an error without
            ``stage3_gather_16bit_weights_on_model_save``); here every rank gathers only the
            trained tensors (a collective under ZeRO-3 / FSDP2) and rank 0 writes them.
            """
            with full_trained_tensors(self.graft_state):
                self._save(output_dir)

        # The three Trainer hooks below are how a Trainer subclass chooses its checkpoint format.
        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            if not self.args.should_save:
                return
            save_graft(self.graft_state, output_dir or self.args.output_dir, base_spec=self.base_spec,
                       dtype=self.dtype_name)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            restore_trained_tensors(self.graft_state, resume_from_checkpoint)

    return GraftTrainer


# ----------------------------------------------------------------------------- callbacks


def engine_callbacks(g: Graft, run_dir: Path, snapshot_steps: int, step_tokens: list[int],
                     keep: int | None = None) -> list[Any]:
    """The callbacks every recipe trains with: completion marker + rotation, gradient guard, throughput, snapshots."""
    from accelerate import PartialState
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """Mark a checkpoint complete after every process has written its part, then rotate.

        Every rank writes into the checkpoint (rank r its ``rng_state_r.pth``), so the
        marker waits at a barrier. The marker is a manifest of every file (sizes and
        sha256), written only when every required file is there and every trained
        tensor is finite; a checkpoint of NaN weights is deleted and training stops.
        Rotation runs here, after the marker, and counts
        complete checkpoints only: the Trainer's own rotation runs before the marker
        exists and could delete the last complete checkpoint while the new one is not
        yet marked, so it is switched off (``save_total_limit=None`` on the Trainer).
        """

        def on_save(self, args, state, control, **kwargs):
            PartialState().wait_for_everyone()
            path = checkpoint_dir(args.output_dir, state.global_step)
            bad = trained_tensors_problem(g)  # every rank holds the same tensors: every rank stops together
            if bad is not None:
                if args.should_save:
                    shutil.rmtree(path, ignore_errors=True)
                raise non_finite_error(f"trained weights ({bad})", "non-finite", state.global_step, args.output_dir,
                                       when=f"{path.name} was not kept, training stopped")
            if args.should_save:
                if path.is_dir():
                    mark_complete(path, state.global_step,
                                  required_files(g, args.world_size, deepspeed=uses_deepspeed(args)))
                rotate_checkpoints(args.output_dir, keep)

    class NonFiniteGuard(TrainerCallback):
        """Refuse an update whose gradients are not finite.

        A loss can be finite while its gradients overflow; applying them would write
        NaN into the rows, and the next checkpoint would save them. Checked after
        clipping and the all-reduce, so every rank sees the same verdict.
        """

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            check_gradients(g.model, state.global_step + 1, args.output_dir)

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            # DeepSpeed steps inside backward, before the hook above, and keeps the gradients in its own
            # buffers; it checks them itself and skips a non-finite update (the verdict is all-reduced).
            # Without fp16 loss scaling (whose early skips are normal) a skipped step is that verdict.
            if getattr(optimizer, "step_was_skipped", False) and not args.fp16:
                raise non_finite_error("gradient", "non-finite", state.global_step, args.output_dir)

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
            mean_tokens = sum(step_tokens) / max(1, len(step_tokens))
            logs["tokens_per_s"] = round(steps * mean_tokens / elapsed, 1)

    callbacks = [CheckpointMarker(), NonFiniteGuard(), Throughput()]
    if snapshot_steps and g.rows is not None:
        from tokengraft.training.snapshots import RowSnapshots  # imports transformers' TrainerCallback

        callbacks.append(RowSnapshots(g, run_dir / SNAPSHOTS_DIR, snapshot_steps))
    return callbacks


# ----------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    run_dir: Path
    graft: Graft
    log_history: list[dict[str, Any]]
    train_seconds: float
    steps: int
    resumed_from: Path | None = None  # the checkpoint a resume continued from
    already_finished: bool = False  # --resume found the run finished: nothing was trained or written


def asks_for_more_steps(recipe: Recipe, steps: int) -> bool:
    """Whether the recipe wants more optimiser steps than ``steps`` (a raised ``train.max_steps``)."""
    return 0 < recipe.train.max_steps and recipe.train.max_steps > steps


def run_and_save(trainer: Any, g: Graft, run: Path, recipe: Recipe, *, resume: bool, quiet: bool,
                 extra: dict[str, Any]) -> TrainResult:
    """Resume from the newest good checkpoint if asked, train, and write the run directory (rank 0).

    ``extra`` goes into ``graft.json`` beside what every run records (task, seed, time, steps, world size).
    A finished run (its ``graft.json`` records its steps) resumed with a recipe that asks for
    no more steps trains nothing and writes nothing; the result says so.
    """
    from accelerate import PartialState

    main_process = is_main_process(trainer.args)
    checkpoint = None
    done_at: dict[str, Any] | None = None  # trainer state of a checkpoint with nothing left to train
    if resume:
        finished = read_graft_meta(run) if (run / GRAFT_FILE).is_file() else None
        if finished is not None and "steps" in finished and not asks_for_more_steps(recipe, int(finished["steps"])):
            check_same_shape(g, finished, run)
            # The result describes the run as it is on disk: loaded as tokengraft.load would (any backend).
            loader = load_classifier if is_classifier_meta(finished) else load_graft
            saved = loader(run, device=str(next(g.model.parameters()).device), dtype=recipe.model.dtype)
            history_file = run / LOG_HISTORY_FILE
            history = json.loads(history_file.read_text()) if history_file.is_file() else []
            return TrainResult(run_dir=run, graft=saved, log_history=history, train_seconds=0.0,
                               steps=int(finished["steps"]), already_finished=True)
        checkpoint = resume_checkpoint(run, g, main_process)
        if not quiet:
            print(f"tokengraft: resuming from {checkpoint}")
        state = trainer_state(checkpoint)
        if state["global_step"] >= state["max_steps"] and not asks_for_more_steps(recipe, state["global_step"]):
            done_at = state  # killed after the last checkpoint, before the run directory was written
    g.model.train()
    with phase("training") as trained:
        if done_at is None:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            steps, history = trainer.state.global_step, trainer.state.log_history
        else:
            restore_trained_tensors(g, checkpoint)
            steps, history = int(done_at["global_step"]), list(done_at.get("log_history", []))
        # The Trainer's periodic validation loss runs inside train(); say how much of the phase it was.
        note(steps=steps, validation_loss_seconds=round(sum(h.get("eval_runtime", 0.0) for h in history), 1))
    seconds = trained.seconds or 0.0
    g.model.eval()
    bad = trained_tensors_problem(g)  # every rank: a collective under ZeRO-3 / FSDP2
    if bad is not None:
        raise non_finite_error(f"trained weights ({bad})", "non-finite", steps, run,
                               when="the run directory was not written")
    # Every rank enters: under ZeRO-3 / FSDP2 this gathers the trained tensors (only those) for the check and the save.
    with full_trained_tensors(g):
        world_size = check_ranks_agree(g)
        if main_process:
            with phase("save the run directory"):
                # graft.json last (save_graft moves it last too): its presence means the run directory is whole.
                recipe.save(run / CONFIG_FILE)
                write_json(run / LOG_HISTORY_FILE, history)
                _plot_losses(history, run / "loss.png")
                save_graft(g, run, base_spec=recipe.model.name, dtype=recipe.model.dtype,
                           extra={**extra, "seed": recipe.seed, "train_seconds": round(seconds, 1),
                                  "steps": steps, "world_size": world_size, "engine": engine_name(trainer)})
    PartialState().wait_for_everyone()  # no rank returns before the run directory is complete
    return TrainResult(run_dir=run, graft=g, log_history=history, train_seconds=seconds, steps=steps,
                       resumed_from=checkpoint)


def engine_name(trainer: Any) -> str:
    """How the processes shared the run, as ``graft.json`` records it: ddp, deepspeed-zero<N>, fsdp or single."""
    if trainer.is_deepspeed_enabled:
        return f"deepspeed-zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    if trainer.is_fsdp_enabled:
        return "fsdp"
    return "ddp" if trainer.args.world_size > 1 else "single"


def check_ranks_agree(g: Graft) -> int:
    """Under data parallelism, make sure every rank ends with the same trained tensors; returns the world size.

    DDP keeps replicas equal only if every update went through its gradient
    all-reduce; a desync would otherwise go unnoticed, since only rank 0 saves.
    What is compared is what gets saved (rows and method tensors), read inside
    `full_trained_tensors` so that sharded engines compare whole tensors.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    world = torch.distributed.get_world_size()
    trained = list(g.token_rows().values()) + (list(g.methods.tensors().values()) if g.methods is not None else [])
    mine = torch.stack([t.double().sum() for t in trained] or [torch.zeros((), dtype=torch.float64)])
    mine = mine.to(next((p.device for p in g.model.parameters()), torch.device("cpu")))
    every = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    if any(not torch.equal(every[0], other) for other in every[1:]):
        raise TokengraftError(f"the {world} data-parallel processes ended with different trained weights "
                              "(their gradients were not synchronised); the run directory was not written")
    return world


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
