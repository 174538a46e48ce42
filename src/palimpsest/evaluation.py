"""Evaluate a saved language model on a corpus, beside the unigram baseline.

(Topic classifiers from the relearning pipeline are scored by
:func:`palimpsest.forgetting.relearning.evaluate_saved_classifier`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from palimpsest.data import (
    default_cache_dir,
    encode_blocks,
    lm_eval_set,
    load_corpus,
    load_tokenizer,
    split_corpus,
    unigram_baseline,
)
from palimpsest.errors import ConfigError, ModelError
from palimpsest.models import fit_block_size, load_pretrained, objective_of, resolve_pretrained
from palimpsest.report import Section, Table
from palimpsest.results import Results
from palimpsest.training import evaluate_lm


@dataclass
class EvaluateConfig:
    """What ``palimpsest evaluate`` scores on: the validation split a pretraining run held out."""

    corpus: str = "wiki-en"
    block_size: int = 128
    max_blocks: int = 256
    validation_fraction: float = 0.05
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("block_size", "max_blocks"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")


def evaluate_saved_lm(
    model_dir: str | Path, settings: EvaluateConfig | str = "wiki-en", **overrides: Any
) -> LMEvaluation:
    """Perplexity on the validation split of a corpus (the same split as pretraining).

    ``model_dir`` is a saved folder or a built-in name (``smollm2-135m``); ``settings`` an
    :class:`EvaluateConfig` or a corpus name, with any of its fields as keywords.
    """
    from dataclasses import replace

    if isinstance(settings, str):
        settings = EvaluateConfig(corpus=settings)
    settings = replace(settings, **overrides)
    corpus_name, block_size, max_blocks = settings.corpus, settings.block_size, settings.max_blocks
    validation_fraction, split_seed = settings.validation_fraction, settings.split_seed
    name = str(model_dir)
    model_dir = Path(resolve_pretrained(name))
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"no saved model at '{model_dir}' (expected a folder with config.json)")
    split = split_corpus(load_corpus(corpus_name), validation_fraction, seed=split_seed)
    model = load_pretrained(str(model_dir))
    tokenizer = load_tokenizer(model_dir)
    objective = objective_of(model.config)
    block_size = fit_block_size(model, block_size)
    cache = default_cache_dir()
    train_blocks = encode_blocks(split.train, tokenizer, block_size, cache_dir=cache)
    eval_blocks = encode_blocks(split.validation, tokenizer, block_size, cache_dir=cache)
    eval_blocks = eval_blocks.select(range(min(max_blocks, len(eval_blocks))))
    eval_set = lm_eval_set(eval_blocks, tokenizer, objective)
    metrics = evaluate_lm(model, eval_set)
    baseline = unigram_baseline(train_blocks, eval_set, len(tokenizer))
    return LMEvaluation(
        model=name,
        corpus=corpus_name,
        objective=objective,
        metrics=LMMetrics(
            loss=metrics["loss"],
            perplexity=metrics["perplexity"],
            tokens=metrics["tokens"],
            unigram_loss=baseline.loss,
            unigram_perplexity=baseline.perplexity,
        ),
    )


@dataclass
class LMMetrics:
    loss: float
    perplexity: float
    tokens: int
    unigram_loss: float
    unigram_perplexity: float


@dataclass
class LMEvaluation(Results):
    """``palimpsest evaluate`` of a language model: perplexity beside the unigram baseline."""

    KIND: ClassVar[str] = "evaluate"

    model: str
    corpus: str
    objective: str
    metrics: LMMetrics

    @classmethod
    def report_section(cls, runs: Sequence[LMEvaluation], plots_dir: Path) -> Section:
        rows = [
            [r.model, r.corpus, r.metrics.perplexity, r.metrics.unigram_perplexity, r.metrics.tokens]
            for r in runs
        ]
        return Section("Evaluation", [Table(["model", "corpus", "ppl", "unigram ppl", "tokens"], rows)])


def is_classifier(model_dir: str | Path) -> bool:
    """Whether a saved model folder holds a sequence classifier (by its architecture)."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config_file = Path(resolve_pretrained(str(model_dir))) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"no saved model at '{model_dir}' (expected a folder with config.json)")
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{config_file} is not valid JSON") from None
    if not isinstance(document, dict):
        raise ModelError(f"{config_file} is not a model config (a JSON object)")
    architectures = document.get("architectures") or ()
    if not isinstance(architectures, list) or not all(isinstance(name, str) for name in architectures):
        raise ModelError(f"{config_file}: 'architectures' must be a list of names, got {architectures!r}")
    architectures = set(architectures)
    return bool(architectures & set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()))
