"""The one training entry point: a thin layer over ``transformers.Trainer``.

Why a layer at all: the three methods need two hooks the stock Trainer does not expose as
arguments — extra optimizer parameter groups (product-key values at their own learning
rate, embeddings on their own schedule) and deterministic evaluation sets — and every
study needs the same bookkeeping (resume from the last checkpoint, curves, throughput).
Everything else (DDP/FSDP through ``accelerate launch`` or ``torchrun``, gradient
accumulation, safetensors checkpoints, TensorBoard) is the Trainer's own.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from palimpsest.data.lm import mlm_mask
from palimpsest.errors import ConfigError, StorageError
from palimpsest.extensions import TrainingExtension
from palimpsest.optim import LazyAdamW, allow_sparse_gradients, clip_grad_norm_, has_sparse_gradients
from palimpsest.seeds import check_seed
from palimpsest.storage import is_write_failure

if TYPE_CHECKING:  # datasets (and pandas) load at first use: importing palimpsest stays quick
    from datasets import Dataset

logger = logging.getLogger(__name__)

TrainingObjective = Literal["mlm", "clm", "classification"]
#: A function from the model to extra optimizer groups: ``[{"params": [...], "lr": ..., ...}]``.
#: Parameters not claimed by any group go to the default decay / no-decay groups. A group
#: with ``"constant_lr": True`` keeps its learning rate instead of following the schedule;
#: one with ``"lr_lambda": f`` follows ``lr * f(updates_done)`` instead of the run's schedule.
#: Parameters whose gradients may be sparse (memory values with ``sparse_updates``) need no
#: flag: torch's AdamW is replaced by :class:`palimpsest.optim.LazyAdamW`, which handles both.
ParamGroupsFn = Callable[[nn.Module], list[dict[str, Any]]]


@dataclass
class TrainingConfig:
    """Optimisation settings shared by every objective (defaults suit the tiny CPU models)."""

    steps: int = 1000
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.06
    schedule: str = "linear"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    #: Evaluate every N updates (``None``: never during training).
    eval_every: int | None = 100
    eval_batch_size: int = 32
    #: Checkpoint every N updates for resuming (``None``: never; a killed run starts over).
    save_every: int | None = 200
    save_total_limit: int = 2
    log_every: int = 10
    seed: int = 0
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check_seed(self.seed, "training.seed")
        positive = ("steps", "batch_size", "gradient_accumulation", "eval_every", "save_every", "log_every")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"training.{name} must be positive, got {getattr(self, name)}")
        for name in ("learning_rate", "adam_epsilon", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"training.{name} must be a positive number, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"training.weight_decay must be a number >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"training.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.eval_batch_size <= 0 or self.save_total_limit <= 0:
            raise ConfigError("training.eval_batch_size and training.save_total_limit must be positive")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"training.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"training.mlm_probability must be in (0, 1), got {self.mlm_probability}")


class LMCollator:
    """Stacks packed blocks into a batch; ``labels`` and ``attention_mask`` pass through when
    examples carry them.

    Examples padded to one length (facts: the longest of the whole set) lose the trailing columns
    that are padding in every row of the batch: those positions attend to nothing a real token
    reads and carry no label, so the batch's outputs and loss are the same, at the cost of its own
    longest row instead of the set's.

    Masking is not done here: the Trainer fetches a batch *before* it restores the RNG
    state of a resumed run, so masks drawn in the collator would differ after a resume.
    :class:`PalimpsestTrainer` masks in ``compute_loss`` instead.
    """

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)}
        for key in ("labels", "attention_mask"):  # padded examples (facts) carry both
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.long)
        if "attention_mask" in batch:
            real = batch["attention_mask"].any(dim=0).nonzero()
            width = int(real.max()) + 1 if len(real) else 1
            batch = {key: tensor[:, :width] for key, tensor in batch.items()}
        return batch


class PalimpsestTrainer(Trainer):
    """``Trainer`` with LM targets made at loss time and caller-supplied optimizer groups.

    Batches without ``labels`` get them in :meth:`compute_loss`: masked positions for a
    masked LM (global RNG, restored exactly on resume), the inputs for a causal LM.
    ``param_groups`` is a :data:`ParamGroupsFn`.
    """

    def __init__(
        self,
        *args: Any,
        objective: TrainingObjective = "clm",
        mlm_probability: float = 0.15,
        param_groups: ParamGroupsFn | None = None,
        **kwargs: Any,
    ):
        self._param_groups_fn = param_groups
        self._objective = objective
        self._mlm_probability = mlm_probability
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs and self._objective in ("mlm", "clm"):
            inputs = dict(inputs)
            if self._objective == "mlm":
                tokenizer = self.processing_class
                inputs["input_ids"], inputs["labels"] = mlm_mask(
                    inputs["input_ids"],
                    special_ids=tokenizer.all_special_ids,
                    mask_token_id=tokenizer.mask_token_id,
                    vocab_size=len(tokenizer),
                    probability=self._mlm_probability,
                )
            else:
                inputs["labels"] = inputs["input_ids"].clone()
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        target = self.model if model is None else model
        extra = [dict(group) for group in self._param_groups_fn(target)] if self._param_groups_fn else []
        claimed = {id(p) for group in extra for p in group["params"]}
        decay_names = set(self.get_decay_parameter_names(target))
        rest = [(n, p) for n, p in target.named_parameters() if p.requires_grad and id(p) not in claimed]
        groups = [group for group in extra if group["params"]]
        groups.append(
            {"params": [p for n, p in rest if n in decay_names], "weight_decay": self.args.weight_decay}
        )
        groups.append({"params": [p for n, p in rest if n not in decay_names], "weight_decay": 0.0})
        groups = [group for group in groups if group["params"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
        optimizer_kwargs.pop("params", None)
        if optimizer_cls is torch.optim.AdamW:
            optimizer_cls = LazyAdamW  # the same AdamW, plus lazy updates for sparse gradients
            if self.args.world_size == 1:  # ranks could choose differently; DDP wants one layout
                allow_sparse_gradients(target, True)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model: nn.Module):
        # torch's clip_grad_norm_ (through accelerate) fails on sparse gradients
        if not has_sparse_gradients(model.parameters()):
            return super()._clip_grad_norm(model)
        self._refuse_scaled_sparse_gradients()
        return clip_grad_norm_(model.parameters(), self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None):
        if grad_norm is None and has_sparse_gradients(model.parameters()):
            self._refuse_scaled_sparse_gradients()
            grad_norm = clip_grad_norm_(model.parameters(), float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _refuse_scaled_sparse_gradients(self) -> None:
        if getattr(self.accelerator, "scaler", None) is not None:
            raise ConfigError(
                "sparse memory-value updates cannot be combined with fp16 loss scaling; "
                "use bf16 or PKMConfig(sparse_updates=False)"
            )

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        groups = scheduler.optimizer.param_groups
        wanted = any(g.get("constant_lr") or g.get("lr_lambda") is not None for g in groups)
        if wanted and lambdas is None:
            raise ConfigError(
                f"per-group schedules need a LambdaLR schedule; '{self.args.lr_scheduler_type}' is not one"
            )
        for index, group in enumerate(groups):
            if group.get("lr_lambda") is not None:
                lambdas[index] = group["lr_lambda"]
                group["lr"] = group["initial_lr"] * group["lr_lambda"](0)
            elif group.get("constant_lr"):
                lambdas[index] = _constant_one
                group["lr"] = group["initial_lr"]
        return scheduler


def _constant_one(_step: int) -> float:
    return 1.0


@dataclass
class TrainResult:
    """What a training run produced; ``history`` is the Trainer's log history."""

    output_dir: Path
    steps: int
    train_seconds: float
    tokens_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None

    def curve(self, key: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of one logged quantity, e.g. ``"loss"`` or ``"eval_loss"``."""
        return [(int(entry["step"]), float(entry[key])) for entry in self.history if key in entry]


def make_training_arguments(
    config: TrainingConfig, output_dir: Path, *, has_eval: bool, **overrides: Any
) -> TrainingArguments:
    """``TrainingArguments`` for a palimpsest run (CPU when no accelerator is present)."""
    arguments: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.eval_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.schedule,
        "warmup_steps": round(config.warmup_ratio * config.steps),
        "weight_decay": config.weight_decay,
        "adam_beta1": config.adam_beta1,
        "adam_beta2": config.adam_beta2,
        "adam_epsilon": config.adam_epsilon,
        "max_grad_norm": config.max_grad_norm,
        "logging_steps": config.log_every,
        "eval_strategy": "steps" if has_eval and config.eval_every is not None else "no",
        "eval_steps": config.eval_every,
        "save_strategy": "no" if config.save_every is None else "steps",
        "save_steps": config.save_every or 500,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "data_seed": config.seed,
        "report_to": ["tensorboard"] if config.tensorboard else "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "use_cpu": not torch.cuda.is_available(),
        "ddp_find_unused_parameters": False,
        # transformers 5 scales the *evaluation* loss by the world size when this is on
        # (eval_loss doubled under 2-process DDP); per-device means averaged by DDP are exact
        # for our fixed-length blocks anyway.
        "average_tokens_across_devices": False,
    }
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def train_only(model: nn.Module, parameters: Iterable[nn.Parameter]) -> list[str]:
    """Freeze every parameter of ``model`` except ``parameters`` (by identity, so a tied weight
    stays trainable under each of its names); returns the names left trainable."""
    keep = {id(parameter) for parameter in parameters}
    names = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(id(parameter) in keep)
        if id(parameter) in keep:
            names.append(name)
    return names


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None.

    The Trainer writes a checkpoint's ``trainer_state.json`` last, after the weights, the
    optimizer, the scheduler and the RNG states; a process killed while writing leaves a
    folder without it (or with a torn one). Such a folder is skipped, with a warning, and
    training resumes from the checkpoint before it.
    """
    folders = []
    for folder in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if folder.is_dir() and step.isdigit():
            folders.append((int(step), folder))
    for _step, folder in sorted(folders, reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(
                "skipping %s: it was not completely written (no readable trainer_state.json)", folder
            )
            continue
        return str(folder)
    return None


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    config: TrainingConfig,
    output_dir: str | Path,
    *,
    objective: TrainingObjective,
    eval_dataset: Dataset | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    param_groups: ParamGroupsFn | None = None,
    extensions: Sequence[TrainingExtension] = (),
    resume: bool = True,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    training_arguments: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with the Trainer; resume from the last checkpoint in ``output_dir``.

    Checkpoints (safetensors, optimizer, scheduler, RNG states) go to
    ``output_dir/checkpoint-N``. A run killed at any point and started again with the same
    arguments continues from its last checkpoint and ends with the same weights as an
    uninterrupted run. ``training_arguments`` passes extra ``TrainingArguments`` through.
    ``extensions`` (already applied to the model by ``prepare_model``) add their optimizer
    groups after ``param_groups``' and their callbacks before ``callbacks``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if len(train_dataset) == 0:
        raise ConfigError("the training set is empty")
    args = make_training_arguments(
        config, output_dir, has_eval=eval_dataset is not None, **(training_arguments or {})
    )
    if objective == "classification":
        collator: Callable[..., Any] = DataCollatorWithPadding(tokenizer)
    else:
        collator = LMCollator()
    trainer = PalimpsestTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[*(c for extension in extensions for c in extension.callbacks()), *callbacks],
        objective=objective,
        mlm_probability=config.mlm_probability,
        param_groups=_with_extension_groups(param_groups, extensions),
        compute_metrics=compute_metrics,
    )
    # With tqdm off the Trainer prints every log dict to stdout; the library does not print
    # (the log history keeps every value, and callers add their own progress display).
    trainer.remove_callback(PrinterCallback)
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except (OSError, RuntimeError, SafetensorError) as error:
        if not is_write_failure(error):
            raise
        raise StorageError(
            f"cannot write a checkpoint in {output_dir}: {str(error).splitlines()[0]}; the last complete "
            "checkpoint is kept (free some space and run the same command again to resume)"
        ) from None
    seconds = time.perf_counter() - started
    steps_run = trainer.state.global_step - (int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0)
    tokens_per_step = _tokens_per_example(train_dataset) * config.batch_size * config.gradient_accumulation
    tokens_per_step *= max(args.world_size, 1)
    logger.info("trained %d steps in %.1fs (%s)", trainer.state.global_step, seconds, output.metrics)
    return TrainResult(
        output_dir=output_dir,
        steps=trainer.state.global_step,
        train_seconds=seconds,
        tokens_per_second=steps_run * tokens_per_step / seconds if seconds > 0 else math.nan,
        history=list(trainer.state.log_history),
        resumed_from=checkpoint,
    )


def _with_extension_groups(
    param_groups: ParamGroupsFn | None, extensions: Sequence[TrainingExtension]
) -> ParamGroupsFn | None:
    if not extensions:
        return param_groups

    def groups(model: nn.Module) -> list[dict[str, Any]]:
        own = param_groups(model) if param_groups is not None else []
        return [*own, *(group for extension in extensions for group in extension.param_groups(model))]

    return groups


def _tokens_per_example(dataset: Dataset) -> int:
    return len(dataset[0]["input_ids"])


@torch.no_grad()
def evaluate_lm(model: PreTrainedModel, eval_dataset: Dataset, *, batch_size: int = 32) -> dict[str, float]:
    """Token-level cross-entropy and perplexity on a fixed evaluation set.

    Averaged over predicted tokens (not over batches), so it compares exactly with the
    unigram baseline on the same positions. Causal models shift labels themselves; the
    first token of each block is therefore not scored, as in the baseline.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    causal = getattr(model.config, "is_encoder_decoder", False) is False and _is_causal(model)
    for start in range(0, len(eval_dataset), batch_size):
        rows = eval_dataset[start : start + batch_size]
        input_ids = torch.tensor(rows["input_ids"], device=device)
        labels = torch.tensor(rows["labels"], device=device)
        logits = model(input_ids=input_ids).logits.float()
        if causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += loss.item()
        count += int((labels != -100).sum())
    model.train(was_training)
    if count == 0:
        raise ConfigError("the evaluation set has no labelled positions")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def _is_causal(model: PreTrainedModel) -> bool:
    from palimpsest.models import objective_of

    return objective_of(model.config) == "clm"


@torch.no_grad()
def evaluate_classification(
    model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 32
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a sequence classifier."""
    was_training = model.training
    model.eval()
    collator = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    correct, total, loss_sum = 0, 0, 0.0
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        output = model(**batch)
        loss_sum += output.loss.item() * len(rows)
        correct += int((output.logits.argmax(-1) == batch["labels"]).sum())
        total += len(rows)
    model.train(was_training)
    return {"accuracy": correct / max(total, 1), "loss": loss_sum / max(total, 1), "examples": total}
