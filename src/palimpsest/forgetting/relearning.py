"""The relearning pipeline (Artetxe et al. 2020), the protocol active forgetting serves.

1. **Language adaptation** — a new tokenizer for the new language, the token embeddings
   re-drawn (N(0, initializer_range), fixed seed: for the standard and the forgetting
   model alike), the body frozen, and only the embeddings (a tied head's weight is the
   same tensor; an untied decoder head is re-drawn and trained with them) trained with the
   model's own LM objective (masked or next-token) on a token budget of text; the head's
   per-token bias stays frozen, as in the paper's code.
2. **Task adaptation** — the body (+ a fresh task head) fine-tuned on the English task,
   the token embeddings frozen.
3. **Assembly** — the body and head from step 2 with the embeddings and tokenizer from
   step 1, saved as one model that ``from_pretrained`` loads.
4. **Evaluation** — the assembled model on the task in the new language (zero-shot: it
   never saw a labelled example of that language).

Every step is a function here and a ``palimpsest adapt``/``assemble``/``evaluate``
command. Each saves a complete HF model folder (safetensors + tokenizer).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)

from palimpsest.data import (
    MAX_VOCABULARY,
    SHARED_TOPICS,
    Corpus,
    CorpusSplit,
    boundary_ids,
    encode_blocks,
    encode_classification,
    lm_eval_set,
    load_corpus,
    load_tokenizer,
    shared_topic_corpus,
    split_corpus,
    train_tokenizer,
)
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.forgetting.reset import embedding_parameters, find_token_embeddings, forget_embeddings
from palimpsest.models import load_config, load_pretrained, objective_of, trainable_flags_kept
from palimpsest.report import Figure, Section, Table
from palimpsest.results import Results
from palimpsest.seeds import check_seed
from palimpsest.storage import save_model
from palimpsest.training import TrainingConfig, evaluate_classification, evaluate_lm, train, train_only

logger = logging.getLogger(__name__)


@dataclass
class LanguageAdaptation:
    """Settings of step 1. ``tokens`` is the budget of new-language training tokens.

    ``keep_best``: the embeddings of the evaluation with the lowest validation loss are kept,
    not the last ones — on a small budget the embeddings overfit it within a few hundred
    updates (README, "The plasticity study": its cpu scale), and the paper keeps its best checkpoint too.

    ``init_std``: the spread of the freshly drawn embeddings; ``None`` takes the model's
    ``initializer_range``, which for a trained checkpoint can be far from the scale its body was
    trained to read (README, "The plasticity study": SmolLM2-135M's)."""

    tokens: int = 100_000
    vocab_size: int = 2048
    tokenizer_model: str = "bpe"
    block_size: int = 128
    max_eval_blocks: int = 64
    seed: int = 0
    keep_best: bool = True
    init_std: float | None = None
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(steps=300, learning_rate=2e-3, eval_every=25, save_every=None)
    )

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name, least in (("tokens", 1), ("vocab_size", 32), ("block_size", 4), ("max_eval_blocks", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.vocab_size > MAX_VOCABULARY:
            raise ConfigError(f"vocab_size must be at most {MAX_VOCABULARY:,}, got {self.vocab_size:,}")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"init_std must be positive, got {self.init_std}")


@dataclass
class TaskAdaptation:
    """Settings of step 2: English sequence classification with frozen embeddings."""

    max_length: int = 128
    validation_fraction: float = 0.1
    seed: int = 0
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            steps=300, learning_rate=5e-4, batch_size=16, eval_every=100, save_every=None, warmup_ratio=0.1
        )
    )

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.max_length < 4:
            raise ConfigError(f"max_length must be at least 4 tokens, got {self.max_length}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


def budget_texts(corpus: Corpus, tokens: int) -> Corpus:
    """The leading documents of ``corpus`` holding at least ``tokens`` whitespace words.

    Every tokenizer makes at least one token per word, so this text always yields the
    budget (which :func:`encode_blocks` then cuts exactly); the new tokenizer is trained on
    this text alone, as a low-resource language would allow.
    """
    words, keep = 0, 0
    while keep < len(corpus.texts) and words < tokens:
        words += len(corpus.texts[keep].split())
        keep += 1
    return corpus.subset(range(keep))


def _set_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    config = model.config
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id, config.eos_token_id = boundary_ids(tokenizer)
    config.vocab_size = len(tokenizer)
    embedding = find_token_embeddings(model)
    if embedding.padding_idx is not None:
        embedding.padding_idx = tokenizer.pad_token_id


def swap_vocabulary(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, seed: int, std: float | None = None
) -> None:
    """Give ``model`` the vocabulary of ``tokenizer`` with freshly drawn embeddings.

    An untied output head (many decoders) is re-drawn too: its rows belong to the old
    vocabulary, so kept they would score the new tokens with the old tokens' weights."""
    model.resize_token_embeddings(len(tokenizer))
    _set_special_ids(model, tokenizer)
    forget_embeddings(model, seed=seed, std=std, reset_output_head=True)


def freeze_all_but_embeddings(model: PreTrainedModel) -> list[str]:
    """Only the token embeddings and an untied output head (a tied head's weight is the same
    tensor) stay trainable; the head's bias is frozen as in the paper. Returns the trainable
    parameters' names."""
    return train_only(model, embedding_parameters(model, include_output_head=True))


class KeepBestWeights(TrainerCallback):
    """Remembers the trainable tensors at the evaluation with the lowest loss; :meth:`restore`
    puts them back. Only the trained tensors are copied (the embeddings: a few MB), not a
    checkpoint of the whole model."""

    def __init__(self, model: PreTrainedModel, start_loss: float) -> None:
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.best_loss, self.best_step = start_loss, 0
        self.best = [p.detach().clone() for p in self.parameters]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and loss < self.best_loss:
            self.best_loss, self.best_step = loss, state.global_step
            for kept, parameter in zip(self.best, self.parameters, strict=True):
                kept.copy_(parameter.detach())

    @torch.no_grad()
    def restore(self) -> None:
        for kept, parameter in zip(self.best, self.parameters, strict=True):
            parameter.copy_(kept)


def adapt_language(
    model: PreTrainedModel | str | Path,
    language: CorpusSplit,
    settings: LanguageAdaptation,
    out: str | Path,
    *,
    callbacks: Iterable[TrainerCallback] = (),
    resume: bool = True,
) -> dict[str, Any]:
    """Step 1: learn the new language's embeddings under a frozen body; returns results.

    The result holds the relearning curve ``[(step, validation loss)]`` starting at step
    0 (the freshly drawn embeddings) and the final validation loss and perplexity — of the
    best evaluation's embeddings with ``keep_best`` (its step in ``best_step``), which are the
    ones saved.
    """
    out = Path(out)
    if not isinstance(model, PreTrainedModel):
        model = load_pretrained(str(model))
    objective = objective_of(model.config)
    text = budget_texts(language.train, settings.tokens)
    tokenizer = train_tokenizer(text.texts, settings.vocab_size, model=settings.tokenizer_model)  # type: ignore[arg-type]
    train_blocks = encode_blocks(text, tokenizer, settings.block_size, max_tokens=settings.tokens)
    eval_blocks = encode_blocks(language.validation, tokenizer, settings.block_size)
    eval_blocks = eval_blocks.select(range(min(settings.max_eval_blocks, len(eval_blocks))))
    eval_set = lm_eval_set(
        eval_blocks, tokenizer, objective, mlm_probability=settings.training.mlm_probability
    )
    swap_vocabulary(model, tokenizer, seed=settings.seed, std=settings.init_std)
    with trainable_flags_kept(model):
        trainable = freeze_all_but_embeddings(model)
        start = evaluate_lm(model, eval_set)
        training = TrainingConfig(**{**settings.training.__dict__, "seed": settings.seed})
        best = KeepBestWeights(model, start["loss"]) if settings.keep_best else None
        result = train(
            model,
            tokenizer,
            train_blocks,
            training,
            out / "trainer",
            objective=objective,
            eval_dataset=eval_set,
            callbacks=[*callbacks, *([best] if best else [])],
            resume=resume,
        )
        if best is not None:
            best.restore()
    final = evaluate_lm(model, eval_set)
    save_model(model, tokenizer, out / "model")
    return {
        "kind": "adapt-language",
        "language": language.train.name.split("/")[0],
        "tokens": len(train_blocks) * settings.block_size,
        "token_budget": settings.tokens,
        "vocab_size": len(tokenizer),
        "trainable": trainable,
        "curve": [(0, start["loss"]), *result.curve("eval_loss")],
        "final_loss": final["loss"],
        "final_perplexity": final["perplexity"],
        "best_step": best.best_step if best is not None else training.steps,
        "train_seconds": result.train_seconds,
        "model_path": str(out / "model"),
    }


def topic_task(corpus: Corpus, validation_fraction: float = 0.1, seed: int = 0) -> CorpusSplit:
    """The shared-topic classification task of a wiki corpus, split for training."""
    return split_corpus(shared_topic_corpus(corpus), validation_fraction, seed=seed)


def adapt_task(
    model_path: str | Path,
    task: CorpusSplit,
    settings: TaskAdaptation,
    out: str | Path,
    *,
    label_names: Sequence[str] = SHARED_TOPICS,
    callbacks: Iterable[TrainerCallback] = (),
    resume: bool = True,
) -> dict[str, Any]:
    """Step 2: fine-tune body + a new classification head on the (English) task."""
    out = Path(out)
    model_path = Path(model_path)
    model = load_pretrained(str(model_path), task="classification", num_labels=len(label_names))
    tokenizer = load_tokenizer(model_path)
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    train_set = encode_classification(task.train, tokenizer, label_names, max_length=settings.max_length)
    valid_set = encode_classification(task.validation, tokenizer, label_names, max_length=settings.max_length)
    training = TrainingConfig(**{**settings.training.__dict__, "seed": settings.seed})
    with trainable_flags_kept(model):
        find_token_embeddings(model).weight.requires_grad_(False)
        result = train(
            model,
            tokenizer,
            train_set,
            training,
            out / "trainer",
            objective="classification",
            callbacks=callbacks,
            resume=resume,
        )
    metrics = evaluate_classification(model, valid_set, tokenizer)
    save_model(model, tokenizer, out / "model")
    return {
        "kind": "adapt-task",
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "examples": metrics["examples"],
        "majority_baseline": majority_share(valid_set["labels"]),
        "train_seconds": result.train_seconds,
        "model_path": str(out / "model"),
    }


def majority_share(labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent label."""
    return Counter(labels).most_common(1)[0][1] / len(labels) if labels else 0.0


@torch.no_grad()
def assemble(task_model: str | Path, language_model: str | Path, out: str | Path) -> Path:
    """Step 3: the task model's body and head with the language model's embeddings.

    The language model's body must be the body the task model started from (it was
    frozen); its token embeddings and tokenizer replace the task model's.
    """
    from palimpsest.evaluation import is_classifier

    if not is_classifier(task_model):  # loading it as one would add a random head, silently
        raise ModelError(
            f"the task model '{task_model}' is not a sequence classifier (make one with `adapt task`)"
        )
    if is_classifier(language_model):
        raise ModelError(f"the language model '{language_model}' is a classifier, not a language model")
    task = load_pretrained(str(task_model), task="classification")
    language = load_pretrained(str(language_model))
    tokenizer = load_tokenizer(language_model)
    source = find_token_embeddings(language).weight
    if source.shape[1] != find_token_embeddings(task).weight.shape[1]:
        raise ModelError(
            f"cannot assemble: embedding width {source.shape[1]} of '{language_model}' differs from "
            f"{find_token_embeddings(task).weight.shape[1]} of '{task_model}'"
        )
    task.resize_token_embeddings(len(tokenizer))
    _set_special_ids(task, tokenizer)
    find_token_embeddings(task).weight.copy_(source)
    return save_model(task, tokenizer, out)


def evaluate_classifier(model_path: str | Path, corpus: Corpus, *, max_length: int = 128) -> dict[str, Any]:
    """Step 4: accuracy of a saved classifier on a labelled corpus (labels named as the model's)."""
    model = load_pretrained(str(model_path), task="classification")
    tokenizer = load_tokenizer(model_path)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    dataset = encode_classification(corpus, tokenizer, labels, max_length=max_length)
    metrics = evaluate_classification(model, dataset, tokenizer)
    return {**metrics, "majority_baseline": majority_share(dataset["labels"])}


def evaluate_topics(model_path: str | Path, corpus: Corpus, *, max_length: int = 128) -> dict[str, Any]:
    """Shared-topic accuracy of a topic classifier on a wiki corpus of any of the languages."""
    config = load_config(str(model_path))  # the labels only; no need to load weights twice
    labels = {str(config.id2label[i]) for i in range(config.num_labels)}
    if labels != set(SHARED_TOPICS):
        raise DataError(f"the model at '{model_path}' predicts {sorted(labels)}, not the shared topics")
    return evaluate_classifier(model_path, shared_topic_corpus(corpus), max_length=max_length)


def evaluate_saved_classifier(
    model_dir: str | Path, corpus_name: str, *, max_length: int = 128
) -> TaskEvaluation:
    """Shared-topic accuracy of a saved classifier on every labelled document of a corpus."""
    metrics = evaluate_topics(model_dir, load_corpus(corpus_name), max_length=max_length)
    return TaskEvaluation(model=str(model_dir), corpus=corpus_name, metrics=ClassifierMetrics(**metrics))


@dataclass
class ClassifierMetrics:
    accuracy: float
    loss: float
    examples: int
    majority_baseline: float


@dataclass
class TaskEvaluation(Results):
    """``palimpsest evaluate`` of a topic classifier: accuracy beside the majority class."""

    KIND: ClassVar[str] = "evaluate-task"

    model: str
    corpus: str
    metrics: ClassifierMetrics

    @classmethod
    def report_section(cls, runs: Sequence[TaskEvaluation], plots_dir: Path) -> Section:
        rows = [
            [r.model, r.corpus, r.metrics.accuracy, r.metrics.majority_baseline, r.metrics.examples]
            for r in runs
        ]
        return Section(
            "Topic classification", [Table(["model", "corpus", "accuracy", "majority", "documents"], rows)]
        )


@dataclass
class AdaptLanguageResults(Results):
    """``palimpsest adapt language``: the new language's relearning curve and final loss."""

    KIND: ClassVar[str] = "adapt-language"

    language: str
    tokens: int
    token_budget: int
    vocab_size: int
    trainable: list[str]
    curve: list[tuple[int, float]]
    final_loss: float
    final_perplexity: float
    best_step: int
    train_seconds: float
    model_path: str

    @classmethod
    def report_section(cls, runs: Sequence[AdaptLanguageResults], plots_dir: Path) -> Section:
        from palimpsest.plotting import plot_curves

        rows = [
            [r.language, r.tokens, r.vocab_size, r.curve[0][1], r.final_loss, r.final_perplexity, r.best_step]
            for r in runs
        ]
        headers = [
            "language",
            "tokens",
            "vocabulary",
            "loss at the draw",
            "final loss",
            "perplexity",
            "best step",
        ]
        path = plot_curves(
            {f"{r.language} ({i})": r.curve for i, r in enumerate(runs)},
            plots_dir / "adapt-language.png",
            title="Language adaptation: validation loss",
            ylabel="cross-entropy (nats/token)",
        )
        return Section(
            "Language adaptation (embeddings only, body frozen)",
            [Table(headers, rows), Figure(path, "validation loss of the new language vs update")],
        )


@dataclass
class AdaptTaskResults(Results):
    """``palimpsest adapt task``: accuracy of the body + head on the task's held-out split."""

    KIND: ClassVar[str] = "adapt-task"

    accuracy: float
    loss: float
    examples: int
    majority_baseline: float
    train_seconds: float
    model_path: str

    @classmethod
    def report_section(cls, runs: Sequence[AdaptTaskResults], plots_dir: Path) -> Section:
        rows = [[r.model_path, r.accuracy, r.majority_baseline, r.examples, r.train_seconds] for r in runs]
        return Section(
            "Task adaptation (body + head, embeddings frozen)",
            [Table(["model", "accuracy", "majority", "documents", "seconds"], rows)],
        )
