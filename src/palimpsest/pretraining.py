"""Pretraining a language model from a corpus name: the one run the pillars plug into.

corpus -> deterministic split -> tokenizer -> packed blocks -> model (+ extensions) ->
Trainer -> evaluation beside a unigram baseline -> ``results.json`` + the saved model.
Each arrow is a function of :mod:`palimpsest.data`, :mod:`palimpsest.models` or
:mod:`palimpsest.training`; this module only wires them and records what happened.

Memory and forgetting are :class:`~palimpsest.extensions.TrainingExtension` s: sections of
the run's config (``memory:``, ``forgetting:``) or objects passed as ``extensions=``. Either
way the saved ``config.yaml`` records them with every seed resolved, so
``palimpsest pretrain --config OUT/config.yaml`` repeats the run exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data import (
    MAX_VOCABULARY,
    Corpus,
    default_cache_dir,
    encode_blocks,
    lm_eval_set,
    load_corpus,
    load_tokenizer,
    split_corpus,
    synthetic_language,
    train_tokenizer,
    unigram_baseline,
)
from palimpsest.errors import ConfigError
from palimpsest.extensions import TrainingExtension, extension_class
from palimpsest.hf_auto import base_model_type
from palimpsest.models import FAMILY_OBJECTIVE, build_model, count_parameters, load_pretrained, objective_of
from palimpsest.plotting import plot_curves
from palimpsest.report import Figure, Section, Table, machine_line
from palimpsest.results import Results
from palimpsest.seeds import HOLDOUT_SEED
from palimpsest.storage import (
    OutputLock,
    as_stored,
    check_output_folder,
    machine_info,
    remove_tree,
    save_model,
    write_text,
)
from palimpsest.training import TrainingConfig, evaluate_lm, train

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
    holdout_seed: int = HOLDOUT_SEED
    vocab_size: int = 4096
    tokenizer_model: str = "bpe"
    block_size: int = 128
    max_eval_blocks: int | None = 256
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        for name, least in (
            ("vocab_size", 32),
            ("block_size", 4),
            ("max_eval_blocks", 1),
            ("max_documents", 1),
        ):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ConfigError(f"data.{name} must be at least {least}, got {value}")
        if self.vocab_size > MAX_VOCABULARY:
            raise ConfigError(f"data.vocab_size must be at most {MAX_VOCABULARY:,}, got {self.vocab_size:,}")
        if self.tokenizer_model not in ("bpe", "unigram"):
            raise ConfigError(f"data.tokenizer_model: expected bpe or unigram, got {self.tokenizer_model!r}")


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
    """Everything ``palimpsest pretrain`` reads from its YAML file (flags override it).

    ``extensions`` holds the sections of the run's training extensions by name, each the
    config object of the installed extension that owns it (``{"memory": PKMConfig(...),
    "forgetting": ForgettingConfig(...)}``); in YAML they are top-level keys.
    """

    EXTENSION_SECTIONS: ClassVar[bool] = True

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    name: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)


def build_extensions(
    config: PretrainConfig, extensions: Iterable[TrainingExtension] = ()
) -> list[TrainingExtension]:
    """The run's extensions: those passed, then one per config section not passed, by section.

    A passed extension whose section the config also holds must agree with it. Afterwards
    ``config.extensions`` holds every extension's settings with its seed resolved, so the
    config written to ``config.yaml`` re-runs the same run.
    """
    chosen: dict[str, TrainingExtension] = {}
    for extension in extensions:
        name = extension.section
        if name in chosen:
            raise ConfigError(f"two '{name}' extensions passed to one run")
        given = config.extensions.get(name)
        if given is not None and to_dict(given) != to_dict(extension.config):
            differing = sorted(k for k, v in to_dict(given).items() if to_dict(extension.config).get(k) != v)
            raise ConfigError(
                f"the '{name}' extension passed differs from the config's '{name}' section "
                f"({', '.join(differing)}); give it once"
            )
        chosen[name] = extension
    for name, settings in config.extensions.items():
        if name not in chosen:
            chosen[name] = extension_class(name)(settings, run_seed=config.training.seed)
    ordered = [chosen[name] for name in sorted(chosen)]
    config.extensions = {extension.section: extension.resolved_config() for extension in ordered}
    return ordered


@dataclass
class DataInfo:
    """What a run trained and was validated on."""

    corpus: str
    language: str
    license: str | None
    train_documents: int
    validation_documents: int
    train_blocks: int
    validation_blocks: int
    block_size: int
    train_tokens: int
    vocab_size: int
    #: tokens of the extra training texts (fact statements), when there are any
    extra_tokens: int | None = None


@dataclass
class PreparedData:
    tokenizer: PreTrainedTokenizerBase
    train_blocks: Any
    eval_set: Any
    info: DataInfo


def prepare_data(
    config: DataConfig,
    *,
    objective: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    mlm_probability: float = 0.15,
    extra_train_texts: Sequence[str] = (),
) -> PreparedData:
    """corpus -> split -> tokenizer -> blocks -> eval set: the one data pipeline of every run.

    A tokenizer is trained on the training texts unless one is given. ``extra_train_texts``
    (fact statements, say) join the training split only, so validation measures language
    modelling on held-out documents, not the extra texts. A masked LM's validation set is
    masked at ``mlm_probability``, the run's own rate.
    """
    corpus = load_corpus(config.corpus, max_documents=config.max_documents)
    corpus = holdout_split(corpus, config.holdout_fraction, config.holdout_seed)[0]
    if config.synthetic:
        corpus = synthetic_language(corpus, config.synthetic, seed=seed)
    split = split_corpus(corpus, config.validation_fraction, seed=config.split_seed)
    train = split.train
    if extra_train_texts:
        train = Corpus(
            name=f"{train.name}+facts", language=train.language, texts=train.texts + tuple(extra_train_texts)
        )
    if tokenizer is None:
        tokenizer = train_tokenizer(train.texts, config.vocab_size, model=config.tokenizer_model)  # type: ignore[arg-type]
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    train_blocks = encode_blocks(train, tokenizer, config.block_size, cache_dir=cache)
    eval_blocks = encode_blocks(split.validation, tokenizer, config.block_size, cache_dir=cache)
    if config.max_eval_blocks is not None and len(eval_blocks) > config.max_eval_blocks:
        eval_blocks = eval_blocks.select(range(config.max_eval_blocks))
    eval_set = lm_eval_set(eval_blocks, tokenizer, objective, mlm_probability=mlm_probability)
    info = DataInfo(
        corpus=corpus.name,
        language=corpus.language,
        license=corpus.license,
        train_documents=len(split.train),
        validation_documents=len(split.validation),
        train_blocks=len(train_blocks),
        validation_blocks=len(eval_set),
        block_size=config.block_size,
        train_tokens=len(train_blocks) * config.block_size,
        vocab_size=len(tokenizer),
        extra_tokens=(
            sum(len(ids) for ids in tokenizer(list(extra_train_texts))["input_ids"])
            if extra_train_texts
            else None
        ),
    )
    return PreparedData(tokenizer=tokenizer, train_blocks=train_blocks, eval_set=eval_set, info=info)


def holdout_split(corpus: Corpus, fraction: float, seed: int = HOLDOUT_SEED) -> tuple[Corpus, Corpus | None]:
    """``(kept, held_out)``: a deterministic share of documents a pretraining run never sees."""
    if fraction <= 0.0:
        return corpus, None
    split = split_corpus(corpus, fraction, seed=seed)
    return split.train.subset(range(len(split.train)), corpus.name), split.validation


def run_pretrain(
    config: PretrainConfig,
    out: str | Path,
    *,
    extensions: Iterable[TrainingExtension] = (),
    callbacks: Iterable[TrainerCallback] = (),
    resume: bool = True,
    overwrite: bool = False,
) -> PretrainResults:
    """Pretrain per ``config`` into ``out`` and return (and write) its results.

    ``extensions`` (memory, forgetting, ...) join those the config's sections name (see
    :func:`build_extensions`); ``callbacks`` are the caller's own (progress display).
    Re-running the same run into the same ``out`` resumes: the saved tokenizer is reused and
    training continues from the last complete checkpoint. A folder holding a run with other
    settings is refused (naming the keys) unless ``overwrite``, which replaces that run's
    outputs; one process at a time writes to a folder (:class:`~palimpsest.storage.OutputLock`).
    Every check that needs no training (model, corpus, extensions) runs before anything is
    written.
    """
    active = build_extensions(config, extensions)
    out = check_output_folder(out)
    settings = to_dict(config)
    same_run = _previous_run(out, settings, overwrite=overwrite)
    tokenizer_dir = out / "tokenizer"
    saved_tokenizer = same_run and (tokenizer_dir / "tokenizer.json").is_file()

    # Everything that can fail on bad input (model, corpus, tokenizer) runs before anything is written.
    model: PreTrainedModel
    if config.model.pretrained:
        model = load_pretrained(config.model.pretrained)
        objective = objective_of(model.config)
        tokenizer = load_tokenizer(tokenizer_dir if saved_tokenizer else config.model.pretrained)
    else:
        objective = FAMILY_OBJECTIVE[config.model.family]
        tokenizer = load_tokenizer(tokenizer_dir) if saved_tokenizer else None
    data = prepare_data(
        config.data,
        objective=objective,
        tokenizer=tokenizer,
        seed=config.training.seed,
        mlm_probability=config.training.mlm_probability,
    )
    if not config.model.pretrained:
        model = build_model(
            config.model.family,
            config.model.size,
            data.tokenizer,
            max_positions=config.data.block_size,
            dropout=config.model.dropout,
            seed=config.training.seed,
        )
    for extension in active:
        model = extension.prepare_model(model)

    with OutputLock(out):
        if not same_run:
            _clear_run(out)
        write_text(out / "config.yaml", yaml.safe_dump(settings, sort_keys=False))
        save_model(None, data.tokenizer, tokenizer_dir)
        result = train(
            model,
            data.tokenizer,
            data.train_blocks,
            config.training,
            out,
            objective=objective,
            eval_dataset=data.eval_set,
            callbacks=callbacks,
            extensions=active,
            resume=resume and same_run,
        )
        final = evaluate_lm(model, data.eval_set, batch_size=config.training.eval_batch_size)
        baseline = unigram_baseline(data.train_blocks, data.eval_set, len(data.tokenizer))
        save_model(model, data.tokenizer, out / "model")
        for extension in active:
            extension.save(model, out / "model")
        results = _results(config, objective, model, out, data, final, baseline, result, active)
        results.write(out / "results.json")
    return results


#: What a pretraining run writes into its folder (cleared by ``overwrite``; nothing else is touched).
RUN_OUTPUTS = (
    "config.yaml", "results.json", "report.md", "report.html", "plots", "model", "tokenizer", "runs",
)  # fmt: skip


def _previous_run(out: Path, settings: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``out`` holds this very run (resume it); a run with other settings is refused
    unless ``overwrite``, naming the keys that differ."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return False
    try:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        previous = None
    if previous == as_stored(settings):
        return True
    if overwrite:
        return False
    differing = _differing_keys(previous if isinstance(previous, dict) else {}, as_stored(settings))
    raise ConfigError(
        f"{out} holds a run with other settings ({', '.join(differing[:6]) or 'unreadable config.yaml'}); "
        "choose another --out, or --overwrite to replace that run"
    )


def _differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b), key=str):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            keys += _differing_keys(left, right, f"{prefix}{key}.")
        elif left != right:
            keys.append(f"{prefix}{key}")
    return keys


def _clear_run(out: Path) -> None:
    """Remove a previous run's outputs (and only those) before a new run writes its own."""
    for name in RUN_OUTPUTS:
        remove_tree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
    for checkpoint in out.glob("checkpoint-*"):
        remove_tree(checkpoint)


def _results(config, objective, model, out, data, final, baseline, result, active) -> PretrainResults:
    return PretrainResults(
        name=config.name or f"{config.model.pretrained or config.model.family}-{objective}",
        config=config,
        model=TrainedModel(
            family=base_model_type(model.config),
            size=None if config.model.pretrained else config.model.size,
            pretrained=config.model.pretrained,
            objective=objective,
            parameters=count_parameters(model),
            path=str(out / "model"),
        ),
        data=data.info,
        metrics=PretrainMetrics(
            validation_loss=final["loss"],
            validation_perplexity=final["perplexity"],
            validation_tokens=final["tokens"],
            unigram_loss=baseline.loss,
            unigram_perplexity=baseline.perplexity,
            steps=result.steps,
            train_seconds=result.train_seconds,
            tokens_per_second=result.tokens_per_second,
            resumed_from=result.resumed_from,
        ),
        extensions={extension.section: extension.summary() for extension in active},
        curves=LossCurves(train_loss=result.curve("loss"), eval_loss=result.curve("eval_loss")),
        machine=machine_info(),
    )


# --------------------------------------------------------------------------- results


@dataclass
class TrainedModel:
    family: str
    size: str | None
    pretrained: str | None
    objective: str
    parameters: int
    path: str


@dataclass
class PretrainMetrics:
    validation_loss: float
    validation_perplexity: float
    validation_tokens: int
    unigram_loss: float
    unigram_perplexity: float
    steps: int
    train_seconds: float
    tokens_per_second: float
    resumed_from: int | None


@dataclass
class LossCurves:
    """``[(step, loss)]`` as logged by the Trainer."""

    train_loss: list[tuple[int, float]]
    eval_loss: list[tuple[int, float]]


@dataclass
class PretrainResults(Results):
    """What one pretraining run measured (``results.json`` of ``palimpsest pretrain``)."""

    KIND: ClassVar[str] = "pretrain"

    name: str
    config: PretrainConfig
    model: TrainedModel
    data: DataInfo
    metrics: PretrainMetrics
    extensions: dict[str, dict[str, Any]]
    curves: LossCurves
    machine: dict[str, Any]

    @classmethod
    def report_section(cls, runs: Sequence[PretrainResults], plots_dir: Path) -> Section:
        section = Section("Pretraining")
        section.blocks.append(
            "Each model is trained from scratch on the corpus shown and scored on a held-out "
            "validation split. Perplexity is token-level, on exactly the positions the unigram "
            "baseline is scored on (masked positions for masked LMs, next tokens for causal LMs); "
            "the unigram baseline predicts add-one-smoothed training-token frequencies."
        )
        headers = [
            "run", "objective", "corpus", "parameters", "steps", "val. ppl", "unigram ppl", "unigram/val",
            "tokens/s",
        ]  # fmt: skip
        rows = [
            [
                run.name, run.model.objective, run.data.corpus, run.model.parameters, run.metrics.steps,
                run.metrics.validation_perplexity, run.metrics.unigram_perplexity,
                run.metrics.unigram_perplexity / run.metrics.validation_perplexity,
                run.metrics.tokens_per_second,
            ]
            for run in runs
        ]  # fmt: skip
        section.blocks.append(Table(headers, rows))
        for run in runs:
            slug = "".join(c if c.isalnum() else "-" for c in run.name)
            path = plot_curves(
                {"train loss": run.curves.train_loss, "validation loss": run.curves.eval_loss},
                plots_dir / f"pretrain-{slug}.png",
                title=f"{run.name}: training curves",
                ylabel="cross-entropy (nats/token)",
                reference_lines={"unigram baseline": run.metrics.unigram_loss},
            )
            section.blocks.append(Figure(path, f"{run.name}: training and validation loss vs step"))
        if runs and runs[0].machine:
            section.blocks.append(machine_line(runs[0].machine))
        return section
