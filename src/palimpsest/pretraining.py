"""Pretraining a language model from a corpus name: the spine every study builds on.

corpus -> deterministic split -> tokenizer -> packed blocks -> model -> Trainer ->
evaluation beside a unigram baseline -> ``results.json`` + the saved model. Each arrow is
a function of :mod:`palimpsest.data`, :mod:`palimpsest.models` or
:mod:`palimpsest.training`; this module only wires them and records what happened.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data import (
    Corpus,
    causal_eval_set,
    default_cache_dir,
    encode_blocks,
    fixed_mlm_eval_set,
    load_corpus,
    load_tokenizer,
    split_corpus,
    synthetic_language,
    train_tokenizer,
    unigram_baseline,
)
from palimpsest.errors import ConfigError
from palimpsest.models import FAMILY_OBJECTIVE, build_model, count_parameters, load_pretrained, objective_of
from palimpsest.storage import save_model, write_json, write_text
from palimpsest.training import ParamGroupsFn, TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Which text, how it is split and tokenized."""

    corpus: str = "wiki-en"
    synthetic: str | None = None
    max_documents: int | None = None
    validation_fraction: float = 0.05
    split_seed: int = 0
    #: Documents set aside from training *and* validation (e.g. to derive a synthetic
    #: language from text the model never saw); see :func:`holdout_split`.
    holdout_fraction: float = 0.0
    holdout_seed: int = 99
    vocab_size: int = 4096
    tokenizer_model: str = "bpe"
    block_size: int = 128
    max_eval_blocks: int | None = 256
    cache_dir: str | None = None


@dataclass
class ModelConfig:
    """A tiny model built from a config, or ``pretrained`` (folder, built-in name or hub id)."""

    family: str = "roberta"
    size: str = "tiny"
    pretrained: str | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pretrained is None and self.family not in FAMILY_OBJECTIVE:
            raise ConfigError(
                f"model.family: unknown family '{self.family}' (known: {', '.join(FAMILY_OBJECTIVE)})"
            )


@dataclass
class PretrainConfig:
    """Everything ``palimpsest pretrain`` reads from its YAML file (flags override it)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    name: str | None = None


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


@dataclass
class PreparedData:
    tokenizer: PreTrainedTokenizerBase
    train_blocks: Any
    eval_set: Any
    info: dict[str, Any]


def prepare_data(
    config: DataConfig, *, objective: str, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0
) -> PreparedData:
    """Load, split and tokenize the corpus; train a tokenizer unless one is given."""
    corpus = load_corpus(config.corpus, max_documents=config.max_documents)
    corpus = holdout_split(corpus, config.holdout_fraction, config.holdout_seed)[0]
    if config.synthetic:
        corpus = synthetic_language(corpus, config.synthetic, seed=seed)
    split = split_corpus(corpus, config.validation_fraction, seed=config.split_seed)
    if tokenizer is None:
        tokenizer = train_tokenizer(split.train.texts, config.vocab_size, model=config.tokenizer_model)  # type: ignore[arg-type]
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    train_blocks = encode_blocks(split.train, tokenizer, config.block_size, cache_dir=cache)
    eval_blocks = encode_blocks(split.validation, tokenizer, config.block_size, cache_dir=cache)
    if config.max_eval_blocks is not None and len(eval_blocks) > config.max_eval_blocks:
        eval_blocks = eval_blocks.select(range(config.max_eval_blocks))
    eval_set = (
        fixed_mlm_eval_set(eval_blocks, tokenizer) if objective == "mlm" else causal_eval_set(eval_blocks)
    )
    info = {
        "corpus": corpus.name,
        "language": corpus.language,
        "license": corpus.license,
        "train_documents": len(split.train),
        "validation_documents": len(split.validation),
        "train_blocks": len(train_blocks),
        "validation_blocks": len(eval_set),
        "block_size": config.block_size,
        "train_tokens": len(train_blocks) * config.block_size,
        "vocab_size": len(tokenizer),
    }
    return PreparedData(tokenizer=tokenizer, train_blocks=train_blocks, eval_set=eval_set, info=info)


def holdout_split(corpus: Corpus, fraction: float, seed: int = 99) -> tuple[Corpus, Corpus | None]:
    """``(kept, held_out)``: a deterministic share of documents a pretraining run never sees."""
    if fraction <= 0.0:
        return corpus, None
    split = split_corpus(corpus, fraction, seed=seed)
    return split.train.subset(range(len(split.train)), corpus.name), split.validation


def run_pretrain(
    config: PretrainConfig,
    out: str | Path,
    *,
    callbacks: Iterable[TrainerCallback] = (),
    param_groups: ParamGroupsFn | None = None,
    resume: bool = True,
    model_hook: Any = None,
) -> dict[str, Any]:
    """Pretrain per ``config`` into ``out`` and return (and write) its results dict.

    ``model_hook(model) -> model`` lets a caller change the model before training (add a
    memory layer, for instance). Re-running with the same ``out`` resumes: the saved
    tokenizer is reused and training continues from the last checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    tokenizer_dir = out / "tokenizer"

    model: PreTrainedModel
    if config.model.pretrained:
        model = load_pretrained(config.model.pretrained)
        objective = objective_of(model.config)
        tokenizer = load_tokenizer(config.model.pretrained if not tokenizer_dir.exists() else tokenizer_dir)
    else:
        objective = FAMILY_OBJECTIVE[config.model.family]
        tokenizer = load_tokenizer(tokenizer_dir) if (tokenizer_dir / "tokenizer.json").is_file() else None
    data = prepare_data(config.data, objective=objective, tokenizer=tokenizer, seed=config.training.seed)
    save_model(None, data.tokenizer, tokenizer_dir)
    if not config.model.pretrained:
        model = build_model(
            config.model.family,
            config.model.size,
            data.tokenizer,
            max_positions=config.data.block_size,
            dropout=config.model.dropout,
            seed=config.training.seed,
        )
    if model_hook is not None:
        model = model_hook(model)

    result = train(
        model,
        data.tokenizer,
        data.train_blocks,
        config.training,
        out,
        objective=objective,
        eval_dataset=data.eval_set,
        callbacks=callbacks,
        param_groups=param_groups,
        resume=resume,
    )
    final = evaluate_lm(model, data.eval_set, batch_size=config.training.eval_batch_size)
    baseline = unigram_baseline(data.train_blocks, data.eval_set, len(data.tokenizer))
    save_model(model, data.tokenizer, out / "model")

    results = {
        "kind": "pretrain",
        "name": config.name or f"{config.model.pretrained or config.model.family}-{objective}",
        "config": to_dict(config),
        "model": {
            "family": model.config.model_type,
            "size": None if config.model.pretrained else config.model.size,
            "pretrained": config.model.pretrained,
            "objective": objective,
            "parameters": count_parameters(model),
            "path": str(out / "model"),
        },
        "data": data.info,
        "metrics": {
            "validation_loss": final["loss"],
            "validation_perplexity": final["perplexity"],
            "validation_tokens": final["tokens"],
            "unigram_loss": baseline.loss,
            "unigram_perplexity": baseline.perplexity,
            "steps": result.steps,
            "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second,
            "resumed_from": result.resumed_from,
        },
        "curves": {
            "train_loss": result.curve("loss"),
            "eval_loss": result.curve("eval_loss"),
        },
        "machine": machine_info(),
    }
    write_json(out / "results.json", results)
    return results
