"""The plasticity study: does pretraining with active forgetting make relearning easier?

Protocol (Chen et al. 2023 at small scale, see PAPERS.md section 1):

1. Pretrain the same model twice on the same English text, data order and seed:
   *standard*, and *forgetting* (token embeddings reset every K updates, per-episode
   learning rate). A share of the English documents is held out of pretraining: the
   synthetic languages are derived from it, so they are text the bodies never saw.
2. Task adaptation, once per model: shared-topic classification on English wiki text,
   embeddings frozen.
3. For each new language, token budget and seed: language adaptation (new tokenizer,
   embeddings re-drawn with that seed for *both* models, body frozen) — the relearning
   curve — then assembly with the task body and zero-shot topic accuracy in that
   language.

Seeds vary the language-adaptation run (embedding draw, data order, masking); each
variant is pretrained once per study, so the spread says nothing about pretraining noise.

Reported: relearning curves (mean ± std over seeds); the gap between them at every
evaluation, at the first one after the draw and where the standard model's becomes the
lower; steps the forgetting model needs to reach the standard model's final loss; the best
(kept) losses; zero-shot accuracy; and the paper's relative gain (mean over languages of
per-language relative accuracy gains).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn import functional
from transformers import TrainerCallback

from palimpsest.claims import Claim, Outcome, outcome_of
from palimpsest.config import from_dict, to_dict
from palimpsest.data import (
    SHARED_TOPICS,
    Corpus,
    CorpusSplit,
    change_script,
    load_corpus,
    load_tokenizer,
    shared_topic_corpus,
    split_corpus,
    synthetic_language,
)
from palimpsest.errors import ConfigError, DataError
from palimpsest.experiments.common import consistent_across_seeds, mean_std
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.forgetting.callback import ForgettingConfig
from palimpsest.forgetting.relearning import (
    LanguageAdaptation,
    TaskAdaptation,
    adapt_language,
    adapt_task,
    assemble,
    evaluate_classifier,
)
from palimpsest.forgetting.reset import find_token_embeddings
from palimpsest.models import FAMILY_OBJECTIVE, load_pretrained
from palimpsest.plotting import plot_bars, plot_curves
from palimpsest.pretraining import PretrainConfig, PretrainResults, holdout_split, run_pretrain
from palimpsest.report import Figure, Section, Table, pm
from palimpsest.results import Results
from palimpsest.seeds import FORGETTING_SEED_OFFSET
from palimpsest.storage import machine_info, remove_tree
from palimpsest.training import TrainingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """The labelled task in the source language (task adaptation trains on it).

    ``topics`` maps raw wiki topic labels onto the shared set; otherwise labels are used as
    they are (as strings, e.g. XNLI's "0", "1", "2"). When ``corpus`` is the pretraining
    corpus, the held-out documents are removed from it as from pretraining.
    """

    corpus: str = "wiki-en"
    labels: tuple[str, ...] = SHARED_TOPICS
    topics: bool = True
    split: str = "train"
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str | None = None
    max_documents: int | None = None


@dataclass(frozen=True)
class NewLanguage:
    """A language to relearn: unlabelled text, and the task in that language.

    ``text`` is a corpus name, or ``"heldout"`` for the source documents held out of
    pretraining; ``recipe`` turns it into a synthetic language. ``task`` names labelled
    data in the language (read with the :class:`TaskSpec` fields); ``None`` uses the
    text's own labels, on the documents not used for adaptation.
    """

    text: str
    recipe: str | None = None
    task: str | None = None
    task_split: str = "test"
    text_split: str = "train"
    max_documents: int | None = None


#: New languages every scale knows.
LANGUAGES: dict[str, NewLanguage] = {
    "wiki-fr": NewLanguage("wiki-fr"),
    "wiki-es": NewLanguage("wiki-es"),
    "fake-en": NewLanguage("heldout", "permute"),
    "fake-en-distant": NewLanguage("heldout", "permute+scramble+script:georgian"),
    "en-cyrillic": NewLanguage("heldout", "script:cyrillic"),
    # The control: held-out English itself, relearned from scratch (a new tokenizer and new
    # embeddings under the frozen body). If even this does not transfer, the relearning protocol
    # fails at this scale, whatever the language.
    "en-relearn": NewLanguage("heldout", "identity"),
}

#: The language whose zero-shot result says whether transfer can exist at all at a scale.
CONTROL_LANGUAGE = "en-relearn"

#: The paper's languages of XNLI (Chen et al. 2023, table in PAPERS.md).
PAPER_LANGUAGES = ("vi", "sw", "es", "bg", "de", "fr", "el", "ru", "zh", "ur", "hi", "tr", "ar", "th")


def _pretraining(
    *, steps: int = 600, reset_every: int = 200, eval_every: int = 100, **sections: dict[str, Any]
) -> PretrainConfig:
    """The pretraining run both variants share (the forgetting variant adds its section).

    Evaluated every ``eval_every`` updates but at least twice per episode, and checkpointed at
    every episode end (the paper keeps end-of-episode checkpoints)."""
    data = {"holdout_fraction": 0.25, "vocab_size": 2048, **sections.get("data", {})}
    training = {
        "steps": steps, "batch_size": 16, "learning_rate": 2e-3, "mlm_probability": 0.3,
        "eval_every": max(1, min(reset_every // 2, eval_every)), "save_every": reset_every, "seed": 0,
        **sections.get("training", {}),
    }  # fmt: skip
    model = {"family": "roberta", "size": "tiny", "dropout": 0.0, **sections.get("model", {})}
    return from_dict(PretrainConfig, {"data": data, "model": model, "training": training})


def _adaptation(
    *, steps: int = 60, eval_every: int = 10, block_size: int = 128, **settings: Any
) -> LanguageAdaptation:
    """Step 1 per language, budget and seed: embeddings only, at pretraining's masking rate."""
    training = TrainingConfig(
        steps=steps, batch_size=settings.pop("batch_size", 16),
        learning_rate=settings.pop("learning_rate", 2e-3), eval_every=eval_every, save_every=None,
        mlm_probability=settings.pop("mlm_probability", 0.3), warmup_ratio=0.0,
    )  # fmt: skip
    settings.setdefault("max_eval_blocks", 48)
    return LanguageAdaptation(block_size=block_size, training=training, **settings)


def _task_adaptation(*, steps: int = 150, max_length: int = 128, **training: Any) -> TaskAdaptation:
    """Step 2, once per variant: the English task, embeddings frozen, scored at the end."""
    return TaskAdaptation(
        max_length=max_length,
        training=TrainingConfig(
            steps=steps, batch_size=training.pop("batch_size", 16),
            learning_rate=training.pop("learning_rate", 5e-4), eval_every=max(1, steps), save_every=None,
            warmup_ratio=0.1,
        ),
    )  # fmt: skip


@dataclass(frozen=True)
class PlasticityScale:
    """One run of the study: the library's config of each step, and the study's grid.

    ``pretrain`` is the run both variants make (``forgetting`` is added to the second);
    ``adaptation`` (step 1; its ``tokens`` and ``seed`` come from the grid) and
    ``task_adaptation`` (step 2) are the relearning pipeline's own settings. The steps must
    agree on what they share: blocks of one size, adaptation masked at pretraining's rate.
    """

    pretrain: PretrainConfig = field(default_factory=_pretraining)
    forgetting: ForgettingConfig = field(default_factory=lambda: ForgettingConfig(reset_every=200))
    adaptation: LanguageAdaptation = field(default_factory=_adaptation)
    task_adaptation: TaskAdaptation = field(default_factory=_task_adaptation)
    languages: tuple[str, ...] = ("wiki-fr", "fake-en-distant")
    budgets: tuple[int, ...] = (50_000,)
    seeds: tuple[int, ...] = (0, 1, 2)
    language_eval_fraction: float = 0.2
    keep_models: bool = False
    task: TaskSpec = field(default_factory=TaskSpec)
    #: Languages beyond :data:`LANGUAGES` (or overriding them), by name.
    language_specs: dict[str, NewLanguage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        block = self.pretrain.data.block_size
        shared = {
            "adaptation.block_size": (self.adaptation.block_size, block),
            "task_adaptation.max_length": (self.task_adaptation.max_length, block),
            "adaptation.training.mlm_probability": (
                self.adaptation.training.mlm_probability, self.pretrain.training.mlm_probability,
            ),
        }  # fmt: skip
        for name, (value, expected) in shared.items():
            if value != expected:
                raise ConfigError(f"{name} is {value}, but pretraining's is {expected}: the steps must agree")
        if self.pretrain.training.steps % self.forgetting.reset_every:
            raise ConfigError(
                "pretrain.training.steps must be a multiple of forgetting.reset_every, "
                "so training ends at an episode end"
            )
        for language in self.languages:
            self.language(language)  # an unknown one is refused here, before anything runs

    def with_family(self, family: str) -> PlasticityScale:
        """The same study with a body of another model family: ``gpt2`` or ``llama`` make it the
        decoder study (Aggarwal et al. 2025): next-token loss in pretraining and relearning, the
        topic read by the family's sequence-classification head (last token)."""
        model = replace(self.pretrain.model, family=family)
        return replace(self, pretrain=replace(self.pretrain, model=model))

    def language(self, name: str) -> NewLanguage:
        known = {**LANGUAGES, **self.language_specs}
        if name not in known:
            raise ConfigError(f"unknown language '{name}' (known: {', '.join(known)})")
        return known[name]


SCALES: dict[str, PlasticityScale] = {
    "smoke": PlasticityScale(
        pretrain=_pretraining(
            steps=8,
            reset_every=4,
            data={"max_documents": 400, "vocab_size": 400, "block_size": 32, "max_eval_blocks": 16},
            model={"size": "micro"},
            training={"batch_size": 8},
        ),
        forgetting=ForgettingConfig(reset_every=4),
        adaptation=_adaptation(
            steps=4, eval_every=2, block_size=32, batch_size=8, vocab_size=300, max_eval_blocks=8
        ),
        task_adaptation=_task_adaptation(steps=4, max_length=32, batch_size=8),
        budgets=(3000,),
        language_specs={"wiki-fr": NewLanguage("wiki-fr", max_documents=600)},
    ),
    # The demo must fit 10 minutes on 2 cores with every study in it: 300 pretraining updates
    # with a reset every 100, one language, two seeds of adaptation. `palimpsest demo` runs it on the GPT-2
    # body, which learns far below the unigram level in that time (a RoBERTa does not); resetting
    # more often kept the forgetting body at the unigram level (README, "The plasticity study").
    "demo": PlasticityScale(
        pretrain=_pretraining(steps=300, reset_every=100),
        forgetting=ForgettingConfig(reset_every=100),
        adaptation=_adaptation(steps=40),
        task_adaptation=_task_adaptation(steps=60),
        languages=("wiki-fr",),
        seeds=(0, 1),
    ),
    "cpu": PlasticityScale(
        pretrain=_pretraining(steps=10_000, reset_every=1000, training={"learning_rate": 1e-3}),
        forgetting=ForgettingConfig(reset_every=1000),
        # 600 updates, the best evaluation kept: a 20k budget overfits early, and longer runs on
        # 200k did not make zero-shot transfer appear (README, "The plasticity study").
        adaptation=_adaptation(steps=600, eval_every=50),
        task_adaptation=_task_adaptation(steps=600),
        languages=("wiki-fr", "fake-en-distant", CONTROL_LANGUAGE),
        budgets=(20_000, 200_000),
    ),
    # The paper's setting (PAPERS.md section 1) for GPUs and a network: RoBERTa-base,
    # English CC100, K=1000, XNLI (trained on English, zero-shot in 14 languages), 5M-token
    # adaptation budget. Run it under `accelerate launch`; per-device batch 32 x 64
    # accumulation = 2048 sequences of 512 tokens per update, as in the paper. The corpus is
    # streamed and capped by max_documents (the whole CC100 does not fit in memory here).
    "full": PlasticityScale(
        pretrain=_pretraining(
            steps=125_000,
            reset_every=1000,
            eval_every=1000,
            data={
                "corpus": "hf:statmt/cc100:en",
                "max_documents": 5_000_000,
                "holdout_fraction": 0.0,
                "vocab_size": 50_000,
                "tokenizer_model": "unigram",
                "block_size": 512,
                "max_eval_blocks": 1024,
            },
            model={"size": "base"},
            training={
                "batch_size": 32,
                "gradient_accumulation": 64,
                "learning_rate": 7e-4,
                "mlm_probability": 0.15,
            },
        ),
        forgetting=ForgettingConfig(reset_every=1000),
        adaptation=_adaptation(
            steps=10_000,
            eval_every=500,
            block_size=512,
            batch_size=32,
            learning_rate=7e-4,
            mlm_probability=0.15,
            vocab_size=50_000,
            max_eval_blocks=256,
        ),
        task_adaptation=_task_adaptation(steps=20_000, max_length=512, batch_size=32, learning_rate=2e-5),
        languages=PAPER_LANGUAGES,
        budgets=(5_000_000,),
        task=TaskSpec(
            corpus="hf:facebook/xnli:en",
            labels=("0", "1", "2"),
            topics=False,
            text_field="premise",
            pair_field="hypothesis",
            label_field="label",
        ),
        language_specs={
            lang: NewLanguage(
                text=f"hf:statmt/cc100:{lang}", task=f"hf:facebook/xnli:{lang}", max_documents=2_000_000
            )
            for lang in PAPER_LANGUAGES
        },
    ),
}


def _pretrain_config(scale: PlasticityScale, variant: str) -> PretrainConfig:
    """One variant's run: named, and with the forgetting section for the forgetting variant
    (one pretraining per variant, seed 0: the resets draw from 0 + FORGETTING_SEED_OFFSET)."""
    sections = (
        {"forgetting": replace(scale.forgetting, seed=FORGETTING_SEED_OFFSET)}
        if variant == "forgetting"
        else {}
    )
    return replace(scale.pretrain, name=f"plasticity-{variant}", extensions=sections)


def language_split(name: str, scale: PlasticityScale) -> CorpusSplit:
    """Training text and evaluation documents of a new language (deterministic)."""
    spec = scale.language(name)
    if spec.text == "heldout":
        data = scale.pretrain.data
        english = load_corpus(data.corpus, max_documents=data.max_documents)
        _, held_out = holdout_split(english, data.holdout_fraction)
        if held_out is None:
            raise ConfigError(
                f"language '{name}' is derived from held-out text: holdout_fraction must be > 0"
            )
        corpus = synthetic_language(held_out, spec.recipe or "permute", seed=0)
    else:
        corpus = load_corpus(spec.text, max_documents=spec.max_documents, hf_split=spec.text_split)
        if spec.recipe:
            corpus = synthetic_language(corpus, spec.recipe, seed=0)
    return split_corpus(corpus.with_texts(corpus.texts, name=name), scale.language_eval_fraction, seed=0)


def _task_corpus(name: str, task: TaskSpec, split: str, max_documents: int | None) -> Corpus:
    corpus = load_corpus(
        name,
        max_documents=max_documents,
        hf_split=split,
        hf_text_field=task.text_field,
        hf_pair_field=task.pair_field,
        hf_label_field=task.label_field,
    )
    return shared_topic_corpus(corpus) if task.topics else corpus


def source_task(scale: PlasticityScale) -> CorpusSplit:
    """The labelled source-language task, split for training and validation."""
    task, data = scale.task, scale.pretrain.data
    if task.corpus == data.corpus:
        corpus = holdout_split(
            load_corpus(data.corpus, max_documents=data.max_documents), data.holdout_fraction
        )[0]
        corpus = shared_topic_corpus(corpus) if task.topics else corpus
    else:
        corpus = _task_corpus(task.corpus, task, task.split, task.max_documents)
    return split_corpus(corpus, 0.1, seed=0)


def language_task(name: str, split: CorpusSplit, scale: PlasticityScale) -> Corpus:
    """Labelled data of the task in a new language, for zero-shot evaluation."""
    spec = scale.language(name)
    if spec.task is None:
        if split.validation.labels is None:
            raise ConfigError(f"language '{name}' has no labels and no task data")
        return shared_topic_corpus(split.validation) if scale.task.topics else split.validation
    return _task_corpus(spec.task, scale.task, spec.task_split, None)


def run_plasticity(
    out: str | Path,
    scale: str | PlasticityScale | tuple[str, PlasticityScale] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> PlasticityResults:
    """Run (or resume: every unit is stored as it finishes) the study into ``out``."""
    return PlasticityStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class PlasticityStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: both pretraining runs,
    both English task adaptations, then one language-adaptation unit per (language, budget,
    seed, variant).

    Each unit's key holds the content of the units it builds on (not only their paths), so
    changing an earlier step's settings redoes every later unit that used its output."""

    name = "plasticity"
    title = "plasticity study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, settings = run.out, run.settings
        pretrain: dict[str, PretrainDigest] = {}
        pretrain_keys: dict[str, Any] = {}
        for variant in VARIANTS:
            config = _pretrain_config(settings, variant)
            pretrain_keys[variant] = to_dict(config)
            train = partial(
                _pretrain_unit, config, out / f"pretrain-{variant}", run.callbacks_for(f"pretrain {variant}")
            )
            pretrain[variant] = yield Unit(
                f"pretrain-{variant}/unit.json", pretrain_keys[variant], train, kind=PretrainDigest
            )

        english_task = source_task(settings)
        task_settings = settings.task_adaptation
        task: dict[str, dict[str, Any]] = {}
        task_keys: dict[str, Any] = {}
        for variant in VARIANTS:
            unit_dir = f"task-{variant}"
            key = {
                "model": pretrain[variant].path, "pretrain": pretrain_keys[variant],
                "task": to_dict(task_settings), "spec": asdict(settings.task),
            }  # fmt: skip
            task_keys[variant] = key
            adapt = partial(
                _task_unit, pretrain[variant].path, english_task, task_settings, out / unit_dir,
                settings.task.labels, run.callbacks_for(f"task {variant}"),
            )  # fmt: skip
            task[variant] = yield Unit(f"{unit_dir}/result.json", key, adapt, workdir=f"{unit_dir}/trainer")

        runs: list[dict[str, Any]] = []
        for language in settings.languages:
            split = language_split(language, settings)
            evaluation = language_task(language, split, settings)
            new_language = settings.language(language)
            for budget, seed, variant in product(settings.budgets, settings.seeds, VARIANTS):
                unit_dir = f"adapt-{variant}-{language}-{budget}-s{seed}"
                adaptation = replace(settings.adaptation, tokens=budget, seed=seed)
                key = {
                    "model": pretrain[variant].path, "task_model": task[variant]["model_path"],
                    "task": task_keys[variant], "adaptation": _adaptation_key(adaptation),
                    "language": asdict(new_language),
                    "max_length": settings.pretrain.data.block_size, "keep_models": settings.keep_models,
                }  # fmt: skip
                relearn = partial(
                    _language_unit, settings, new_language, adaptation, pretrain[variant].path,
                    task[variant]["model_path"], split, evaluation, out / unit_dir,
                    run.callbacks_for(f"{variant} {language} {budget} s{seed}"),
                )  # fmt: skip
                result = yield Unit(f"{unit_dir}/result.json", key, relearn, workdir=f"{unit_dir}/trainer")
                result.update({"variant": variant, "language": language, "budget": budget, "seed": seed})
                runs.append(result)

        return PlasticityResults(
            scale=run.scale_name,
            settings=settings,
            pretrain=pretrain,
            task=task,
            runs=runs,
            summary=summarise(runs, task, settings),
            machine=machine_info(),
        )


def _pretrain_unit(
    config: PretrainConfig, run_dir: Path, callbacks: Iterable[TrainerCallback]
) -> PretrainDigest:
    # the unit is recomputed because its settings changed: a previous run in run_dir is replaced
    return PretrainDigest.of(run_pretrain(config, run_dir, callbacks=callbacks, overwrite=True))


def _task_unit(
    model_path: str,
    task: CorpusSplit,
    settings: TaskAdaptation,
    unit_dir: Path,
    labels: Sequence[str],
    callbacks: Iterable[TrainerCallback],
) -> dict[str, Any]:
    """Train the task body and head once per variant (English, embeddings frozen)."""
    result = adapt_task(model_path, task, settings, unit_dir, label_names=labels, callbacks=callbacks)
    remove_tree(unit_dir / "trainer")
    return result


def _adaptation_key(adaptation: LanguageAdaptation) -> dict[str, Any]:
    """The adaptation's settings as a unit key; ``init_std`` only when set, so units stored
    before that option existed are still found."""
    key = to_dict(adaptation)
    if key.get("init_std") is None:
        key.pop("init_std", None)
    return key


def embedding_alignment(
    source: str | Path, relearned: str | Path, rename: Callable[[str], str], *, seed: int = 0
) -> dict[str, float]:
    """How far relearned embeddings recover the source model's, for a language whose text is the
    source's own (``rename`` the identity) or its renaming letter by letter (a script bijection):
    a token of the source vocabulary and the token of the new one that spells its renamed text
    stand for the same sub-word.

    Over the tokens both vocabularies share that way (alphabetic, non-special): ``cosine`` of
    matched rows, ``chance_cosine`` of mismatched ones (each against the next pair's), and
    ``retrieval``: the share of held-out pairs whose source row is the nearest (cosine) to the
    relearned row under a least-squares linear map fitted on the other half of the pairs (a
    rotation or rescaling of the same geometry would score near 1)."""
    tables, pieces = [], []
    for path in (source, relearned):
        tokenizer = load_tokenizer(path)
        tables.append(find_token_embeddings(load_pretrained(str(path))).weight.detach().float())
        specials = set(tokenizer.all_special_ids)
        # each token as the text it stands for (byte-level and other markers decoded), so the
        # renaming applies to text, as the language's recipe did
        pieces.append(
            {
                i: tokenizer.convert_tokens_to_string([token])
                for token, i in tokenizer.get_vocab().items()
                if i not in specials
            }
        )
    by_text = {text: i for i, text in pieces[1].items()}
    pairs = [
        (i, by_text[rename(text)])
        for i, text in pieces[0].items()
        if "\ufffd" not in text and any(c.isalpha() for c in text) and rename(text) in by_text
    ]
    if len(pairs) < 8:
        return {"pairs": len(pairs), "cosine": math.nan, "chance_cosine": math.nan, "retrieval": math.nan}
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    first = tables[0][[pairs[i][0] for i in order]]
    second = tables[1][[pairs[i][1] for i in order]]
    cosine = functional.cosine_similarity(first, second)
    chance = functional.cosine_similarity(first, second.roll(1, 0))
    half = len(pairs) // 2
    mapping = torch.linalg.lstsq(second[:half], first[:half]).solution
    mapped = functional.normalize(second[half:] @ mapping, dim=1)
    nearest = (mapped @ functional.normalize(first[half:], dim=1).T).argmax(dim=1)
    retrieval = (nearest == torch.arange(len(nearest))).float().mean()
    return {
        "pairs": len(pairs),
        "cosine": float(cosine.mean()),
        "chance_cosine": float(chance.mean()),
        "retrieval": float(retrieval),
    }


def _renaming_of(recipe: str | None) -> Callable[[str], str] | None:
    """How a recipe respells the source's text when it only renames letters (``identity``, or a
    single ``script:NAME``), so tokens of the two vocabularies can be paired; else None."""
    if recipe == "identity":
        return lambda text: text
    if recipe and recipe.startswith("script:") and "+" not in recipe:
        script = recipe.partition(":")[2]
        return lambda text: change_script([text], script)[0]
    return None


def _language_unit(
    settings: PlasticityScale,
    language_spec: NewLanguage,
    adaptation: LanguageAdaptation,
    pretrained_path: str,
    task_model_path: str,
    split: CorpusSplit,
    evaluation: Corpus,
    unit_dir: Path,
    callbacks: Iterable[TrainerCallback],
) -> dict[str, Any]:
    """Relearn the language's embeddings, assemble with the task body, score zero-shot."""
    result = adapt_language(pretrained_path, split, adaptation, unit_dir, callbacks=callbacks)
    rename = _renaming_of(language_spec.recipe)
    if rename is not None:
        result["embedding_alignment"] = embedding_alignment(pretrained_path, result["model_path"], rename)
    assembled = assemble(task_model_path, result["model_path"], unit_dir / "assembled")
    zero_shot = evaluate_classifier(assembled, evaluation, max_length=settings.pretrain.data.block_size)
    result["zero_shot_accuracy"] = zero_shot["accuracy"]
    result["zero_shot_majority"] = zero_shot["majority_baseline"]
    result["zero_shot_examples"] = zero_shot["examples"]
    remove_tree(unit_dir / "trainer")
    if not settings.keep_models:
        remove_tree(unit_dir / "model")
        remove_tree(unit_dir / "assembled")
        result["model_path"] = None
    return result


def first_step_at_or_below(curve: list[list[float]], threshold: float) -> int | None:
    """The first evaluated step whose loss is at most ``threshold`` (None: never)."""
    for step, loss in curve:
        if loss <= threshold + 1e-9:
            return int(step)
    return None


def summarise(
    runs: list[dict[str, Any]], task: dict[str, dict[str, Any]], settings: PlasticityScale
) -> PlasticitySummary:
    """Per (language, budget): curves and figures as mean ± std over seeds, plus verdicts."""
    cells: list[PlasticityCell] = []
    for language in settings.languages:
        for budget in settings.budgets:
            by_variant = {
                v: sorted(
                    (
                        r
                        for r in runs
                        if r["language"] == language and r["budget"] == budget and r["variant"] == v
                    ),
                    key=lambda r: r["seed"],
                )
                for v in VARIANTS
            }
            standard, forgetting = by_variant["standard"], by_variant["forgetting"]
            steps = [int(s) for s, _ in standard[0]["curve"]] if standard else []
            # The first evaluation after the fresh draw (step 0): "converges faster" shows in the
            # first updates; the whole gap curve is kept beside it (``gap_mean``), so a later
            # crossover is reported too.
            early_index = min(1, len(steps) - 1)
            variants = {}
            for variant, group in by_variant.items():
                matrix = [[loss for _, loss in r["curve"]] for r in group]
                columns = list(zip(*matrix, strict=True))
                variants[variant] = VariantSummary(
                    curve_mean=[statistics.fmean(col) for col in columns],
                    curve_std=[statistics.stdev(col) if len(col) > 1 else 0.0 for col in columns],
                    final_loss=mean_std([r["final_loss"] for r in group]),
                    zero_shot_accuracy=mean_std([r["zero_shot_accuracy"] for r in group]),
                    majority_baseline=group[0]["zero_shot_majority"] if group else math.nan,
                    embedding_alignment=_mean_alignment(group),
                )
            # Paired over seeds: the same seed draws the same initial embeddings for both.
            pairs = list(zip(standard, forgetting, strict=True))
            gaps_by_step = [
                [s["curve"][index][1] - f["curve"][index][1] for s, f in pairs] for index in range(len(steps))
            ]
            early_gaps = gaps_by_step[early_index] if gaps_by_step else []
            gap_mean = [statistics.fmean(gaps) for gaps in gaps_by_step]
            # the first evaluation after the draw from which the standard model's mean loss is lower
            crossover = next((steps[i] for i in range(1, len(steps)) if gap_mean[i] <= 0), None)
            final_gaps = [s["final_loss"] - f["final_loss"] for s, f in pairs]
            # Threshold: the standard model's last point of its own curve (the same metric).
            to_threshold = [first_step_at_or_below(f["curve"], s["curve"][-1][1]) for s, f in pairs]
            standard_steps = [first_step_at_or_below(s["curve"], s["curve"][-1][1]) for s in standard]
            acc_s = variants["standard"].zero_shot_accuracy[0]
            acc_f = variants["forgetting"].zero_shot_accuracy[0]
            cells.append(
                PlasticityCell(
                    language=language,
                    budget=budget,
                    steps=steps,
                    standard=variants["standard"],
                    forgetting=variants["forgetting"],
                    early_step=steps[early_index] if steps else None,
                    early_gap=mean_std(early_gaps),
                    early_gap_positive_seeds=sum(gap > 0 for gap in early_gaps),
                    final_gap=mean_std(final_gaps),
                    final_gap_positive_seeds=sum(gap > 0 for gap in final_gaps),
                    gap_mean=gap_mean,
                    gap_std=[statistics.stdev(g) if len(g) > 1 else 0.0 for g in gaps_by_step],
                    crossover_step=crossover,
                    steps_to_standard_final={"forgetting": to_threshold, "standard": standard_steps},
                    relative_gain=(acc_f - acc_s) / acc_s if acc_s and not math.isnan(acc_s) else math.nan,
                )
            )
    gains_by_budget = {
        budget: mean_std([c.relative_gain for c in cells if c.budget == budget])
        for budget in settings.budgets
    }
    faster = sum(_ahead_early(c, len(settings.seeds)) for c in cells)
    return PlasticitySummary(
        cells=cells,
        relative_gain_by_budget={str(b): g for b, g in gains_by_budget.items()},
        english_task_accuracy={v: task[v]["accuracy"] for v in task},
        cells_forgetting_lower_early_all_seeds=faster,
        verdict=_verdict(cells, gains_by_budget, settings, task),
        english_task_majority={v: task[v]["majority_baseline"] for v in task},
    )


def _ahead_early(cell: PlasticityCell, seeds: int) -> bool:
    """Forgetting relearned faster at the first evaluation (:func:`consistent_across_seeds`)."""
    return consistent_across_seeds(*cell.early_gap, cell.early_gap_positive_seeds, seeds)


def _mean_alignment(group: list[dict[str, Any]]) -> dict[str, float] | None:
    measured = [r["embedding_alignment"] for r in group if r.get("embedding_alignment")]
    if not measured:
        return None
    return {key: statistics.fmean(m[key] for m in measured) for key in measured[0]}


#: The English task body must beat the majority class by this much before zero-shot transfer
#: from it can be judged (the issue "studies to the end": >= 20 points).
BODY_MARGIN = 0.20


def _reversal(cells: list[PlasticityCell], seeds: int) -> str:
    """Whether the paper's reversal shows at the largest budget: the standard model keeping the
    lower loss in every seed of every language there, where forgetting led at a smaller one."""
    budgets = sorted({c.budget for c in cells})
    if len(budgets) < 2:
        return ""
    largest = [c for c in cells if c.budget == budgets[-1]]
    smaller = [c for c in cells if c.budget < budgets[-1]]
    if all(c.final_gap_positive_seeds == 0 for c in largest) and any(
        c.final_gap_positive_seeds == seeds for c in smaller
    ):
        return f": the reversal appears — at {budgets[-1]:,} tokens the standard model keeps the lower loss"
    if all(c.final_gap_positive_seeds == seeds for c in largest):
        return (
            f": the reversal did NOT appear up to {budgets[-1]:,} tokens, where forgetting still keeps "
            "the lower loss"
        )
    return f": at {budgets[-1]:,} tokens the languages disagree, so the reversal is partial at most"


def _verdict(
    cells: list[PlasticityCell],
    gains: dict[int, tuple[float, float]],
    settings: PlasticityScale,
    task: dict[str, dict[str, Any]],
) -> str:
    seeds = len(settings.seeds)
    body = [f"{v} {100 * task[v]['accuracy']:.1f}%" for v in VARIANTS if v in task]
    majority = max(task[v]["majority_baseline"] for v in task) if task else math.nan
    margin = min(task[v]["accuracy"] for v in task) - majority if task else math.nan
    body_sentence = (
        f"English task body (held-out English): {', '.join(body)} against {100 * majority:.1f}% for the "
        f"majority class ({100 * margin:+.1f} points): "
        + (
            "the body carries the task, so transfer can be judged."
            if margin >= BODY_MARGIN
            else f"less than {100 * BODY_MARGIN:.0f} points over the majority, too weak a body to judge "
            "transfer from (a longer pretraining or a larger body would be the next step)."
        )
    )
    early = [
        f"{c.language}@{c.budget:,}: "
        + (f"{c.gap_mean[0]:+.3f} at the draw, " if c.gap_mean else "")
        + f"{c.early_gap[0]:+.3f} ± {c.early_gap[1]:.3f} nats at step "
        f"{c.early_step} ({c.early_gap_positive_seeds}/{seeds} seeds favour forgetting"
        + (f"; standard first lower at step {c.crossover_step}" if c.crossover_step is not None else "")
        + f"; best kept {c.final_gap[0]:+.3f} ± {c.final_gap[1]:.3f}, {c.final_gap_positive_seeds}/{seeds})"
        for c in cells
    ]
    consistent = [c for c in cells if _ahead_early(c, seeds)]
    overtaken = [c for c in consistent if c.final_gap_positive_seeds == 0 and c.final_gap[0] < 0]
    parts = [
        body_sentence,
        "Relearning (standard minus forgetting validation loss, positive favours forgetting; at the first "
        "evaluation after the fresh draw, where the standard model's mean is first the lower, and for the "
        "best embeddings each run kept):" + "".join(f"\n- {line}" for line in early),
    ]
    if not consistent:
        parts.append(
            "The early-relearning advantage of forgetting did NOT appear in any language/budget cell."
        )
    else:
        parts.append(
            f"Forgetting relearned faster at the start in all seeds in {len(consistent)} of {len(cells)} "
            "language/budget cells"
            + (
                f"; in {len(overtaken)} of them the standard model caught up and ended lower in every "
                "seed: forgetting converged faster, to a worse loss."
                if overtaken
                else "."
            )
        )
    best_forgetting = [f"{c.language}@{c.budget:,}" for c in cells if c.final_gap_positive_seeds == seeds]
    best_standard = [f"{c.language}@{c.budget:,}" for c in cells if c.final_gap_positive_seeds == 0]
    parts.append(
        "Best kept loss lower with forgetting in every seed: "
        + (", ".join(best_forgetting) or "no cell")
        + "; with the standard model in every seed: "
        + (", ".join(best_standard) or "no cell")
        + " (the paper: forgetting's advantage lives in the low-data band and reverses with plenty of data)"
        + _reversal(cells, seeds)
        + "."
    )
    for budget, (mean, std) in gains.items():
        parts.append(
            f"Zero-shot topic accuracy, relative gain of forgetting over standard (paper's definition, "
            f"mean over languages) at {budget:,} tokens: {100 * mean:+.1f}% "
            f"(± {100 * std:.1f} across languages)."
        )
    useless = [
        c.language + f"@{c.budget:,}"
        for c in cells
        if max(c.standard.zero_shot_accuracy[0], c.forgetting.zero_shot_accuracy[0])
        <= c.standard.majority_baseline + 0.02
    ]
    if useless:
        parts.append(
            "Caution: in " + ", ".join(useless) + " neither assembled model beats the majority-class "
            "baseline, so the zero-shot task does not work at this scale there and its relative gain "
            "is not evidence either way."
        )
    control = [c for c in cells if c.language == CONTROL_LANGUAGE]
    if control and all(f"{CONTROL_LANGUAGE}@{c.budget:,}" in useless for c in control):
        alignment = [
            f"{c.budget:,} tokens, {v}: cosine {a['cosine']:.2f} (unrelated pairs {a['chance_cosine']:.2f}), "
            f"linear-map retrieval {100 * a['retrieval']:.1f}%"
            for c in control
            for v, a in (
                ("standard", c.standard.embedding_alignment),
                ("forgetting", c.forgetting.embedding_alignment),
            )
            if a
        ]
        parts.append(
            f"Even the control ({CONTROL_LANGUAGE}: held-out English itself, relearned with a new "
            "vocabulary and new embeddings) does not transfer: the embeddings relearned under the "
            "frozen body do not land where the task-tuned body reads them"
            + (
                " — relearned against the original embeddings of the same sub-words: " + "; ".join(alignment)
                if alignment
                else ""
            )
            + ". The protocol needs a body that pins the embedding geometry down — the paper's is "
            "RoBERTa-base after 125k updates of 1M tokens each; this scale's is far smaller — so no transfer "
            "gain can be judged here."
        )
    # paragraphs and a list: the report renders them (markdown as is, HTML by ``report._html_text``)
    return "\n\n".join(parts)


#: A pretrained body must model its language at least this much better than the unigram
#: distribution (nats/token) before relearning on it says anything: a body at the unigram level
#: has nothing for new embeddings to fit.
BODY_LOSS_MARGIN = 0.5
#: Where the committed runs show each claim at a scale that can judge it.
EVIDENCE = "results/plasticity-cpu-gpt2/"


def plasticity_claims(study: PlasticityResults) -> list[Claim]:
    """Chen et al.'s claims as this run measured them (see :mod:`palimpsest.claims`)."""
    summary, seeds = study.summary, len(study.settings.seeds)
    cells = summary.cells
    weak = [
        f"{v} {digest.validation_loss:.2f} vs unigram {digest.unigram_loss:.2f}"
        for v, digest in study.pretrain.items()
        if digest.validation_loss > digest.unigram_loss - BODY_LOSS_MARGIN
    ]
    if weak:
        faster_measured = f"bodies at the unigram level (val. loss {'; '.join(weak)} nats)"
        faster_outcome, faster_evidence = Outcome.NOT_MEASURABLE, EVIDENCE
    else:
        ahead = [_ahead_early(c, seeds) for c in cells]
        gaps = [c.early_gap[0] for c in cells]
        faster_measured = (
            f"{min(gaps, default=math.nan):+.2f} to {max(gaps, default=math.nan):+.2f} nats lower at step "
            f"{cells[0].early_step if cells else '-'}; ahead in every seed in {sum(ahead)}/{len(cells)} "
            "language cells"
        )
        faster_outcome = outcome_of(ahead)
        faster_evidence = "" if all(ahead) and ahead else EVIDENCE
    task = summary.english_task_accuracy
    majority = max((summary.english_task_majority or {}).values(), default=math.nan)
    body_margin = min(task.values(), default=math.nan) - majority
    working = [
        c
        for c in cells
        if max(c.standard.zero_shot_accuracy[0], c.forgetting.zero_shot_accuracy[0])
        > c.standard.majority_baseline + 0.02
    ]
    gains = "; ".join(
        f"{100 * gain[0]:+.0f}% at {int(budget):,} tokens"
        for budget, gain in summary.relative_gain_by_budget.items()
    )
    if weak or not body_margin >= BODY_MARGIN:
        transfer_measured = (
            f"English task body {100 * min(task.values(), default=math.nan):.0f}% vs majority "
            f"{100 * majority:.0f}%: too weak a body to judge transfer"
        )
        transfer_outcome = Outcome.NOT_MEASURABLE
    elif not working:
        transfer_measured = f"no assembled model beats the majority class ({gains}: not evidence)"
        transfer_outcome = Outcome.NOT_MEASURABLE
    else:
        transfer_measured = f"relative gain {gains} (cells above majority: {len(working)}/{len(cells)})"
        transfer_outcome = outcome_of(c.relative_gain > 0 for c in working)
    budgets = sorted({c.budget for c in cells})
    if len(budgets) < 2 or weak:
        reversal_measured = "one token budget only" if len(budgets) < 2 else "bodies at the unigram level"
        reversal_outcome, reversal_evidence = Outcome.NOT_MEASURABLE, EVIDENCE
    else:
        behind = [c.final_gap_positive_seeds == 0 for c in cells if c.budget == budgets[-1]]
        reversal_measured = (
            f"at {budgets[-1]:,} tokens the standard model keeps the lower loss in "
            f"{sum(behind)}/{len(behind)} languages (every seed)"
        )
        reversal_outcome, reversal_evidence = outcome_of(behind), ""
    return [
        Claim(
            "forget", "pretraining with forgetting relearns a new language faster",
            "adaptation loss converges faster (Chen et al. 2023)",
            faster_measured, faster_outcome, faster_evidence,
        ),
        Claim(
            "forget", "zero-shot transfer to the new language improves",
            "+21.2% relative XNLI accuracy, mean of 14 languages at 5M tokens",
            transfer_measured, transfer_outcome, EVIDENCE,
        ),
        Claim(
            "forget", "the advantage reverses with plenty of data",
            "Thai: ahead at 5M tokens (57.4 vs 33.5), behind at 5B (61.0 vs 67.6)",
            reversal_measured, reversal_outcome, reversal_evidence,
        ),
    ]  # fmt: skip


# --------------------------------------------------------------------------- results

VARIANTS = ("standard", "forgetting")


@dataclass
class PretrainDigest:
    """What the study keeps of one variant's pretraining run."""

    path: str
    validation_loss: float
    unigram_loss: float
    steps: int
    eval_curve: list[tuple[int, float]]
    reset_every: int | None

    def full_results(self) -> PretrainResults:
        """The whole pretraining run's results (curves, settings, model), read from beside its model."""
        written = Path(self.path).parent / "results.json"
        try:
            return PretrainResults.from_json(json.loads(written.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise DataError(f"{written}: the pretraining run's results cannot be read ({error})") from None

    @classmethod
    def of(cls, run: PretrainResults) -> PretrainDigest:
        forgetting = run.config.extensions.get("forgetting")
        return cls(
            path=run.model.path,
            validation_loss=run.metrics.validation_loss,
            unigram_loss=run.metrics.unigram_loss,
            steps=run.metrics.steps,
            eval_curve=run.curves.eval_loss,
            reset_every=forgetting.reset_every if forgetting is not None else None,
        )


@dataclass
class VariantSummary:
    """One variant in one (language, budget) cell, over seeds."""

    curve_mean: list[float]
    curve_std: list[float]
    final_loss: tuple[float, float]
    zero_shot_accuracy: tuple[float, float]
    majority_baseline: float
    #: For a script-bijection language: the relearned embeddings against the English ones, mean
    #: over seeds (:func:`embedding_alignment`: cosine, chance cosine, linear-map retrieval).
    embedding_alignment: dict[str, float] | None = None


@dataclass
class PlasticityCell:
    """Standard beside forgetting for one language and token budget."""

    language: str
    budget: int
    steps: list[int]
    standard: VariantSummary
    forgetting: VariantSummary
    early_step: int | None
    early_gap: tuple[float, float]
    early_gap_positive_seeds: int
    final_gap: tuple[float, float]
    steps_to_standard_final: dict[str, list[int | None]]
    relative_gain: float
    #: seeds whose best (kept) loss is lower with forgetting
    final_gap_positive_seeds: int = 0
    #: standard minus forgetting validation loss at every evaluation (mean, std over seeds)
    gap_mean: list[float] = field(default_factory=list)
    gap_std: list[float] = field(default_factory=list)
    #: the first evaluation after the draw at which the standard model's mean loss is the lower
    crossover_step: int | None = None


@dataclass
class PlasticitySummary:
    cells: list[PlasticityCell]
    relative_gain_by_budget: dict[str, tuple[float, float]]
    english_task_accuracy: dict[str, float]
    cells_forgetting_lower_early_all_seeds: int
    verdict: str
    #: The majority class's share of the English task's held-out documents, per variant.
    english_task_majority: dict[str, float] | None = None


@dataclass
class PlasticityResults(Results):
    """The study's results.json: settings, each unit's record and the summary."""

    KIND: ClassVar[str] = "plasticity"

    scale: str
    settings: PlasticityScale
    pretrain: dict[str, PretrainDigest]
    #: task adaptation per variant (:func:`~palimpsest.forgetting.relearning.adapt_task`'s record)
    task: dict[str, dict[str, Any]]
    #: one record per language-adaptation unit (:func:`~palimpsest.forgetting.relearning.adapt_language`'s
    #: plus zero-shot accuracy, variant, language, budget and seed)
    runs: list[dict[str, Any]]
    summary: PlasticitySummary
    #: where the study's results were assembled (:func:`~palimpsest.storage.machine_info`);
    #: None in results written before it was recorded
    machine: dict[str, Any] | None = None

    def headline(self) -> str:
        return self.summary.verdict

    def claims(self) -> list[Claim]:
        return plasticity_claims(self)

    @classmethod
    def report_section(cls, studies: Sequence[PlasticityResults], plots_dir: Path) -> Section:
        section = Section("Forget: active forgetting and relearning (Chen et al. 2023)")
        for study in studies:
            section.blocks += _study_blocks(study, plots_dir)
        return section


def _objective_words(family: str) -> str:
    return "next-token loss" if FAMILY_OBJECTIVE.get(family) == "clm" else "masked-LM loss"


def _study_blocks(study: PlasticityResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, summary, pretrain = study.settings, study.summary, study.settings.pretrain
    family = pretrain.model.family  # plots of an encoder and a decoder study side by side in one report
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': a {pretrain.model.size} {pretrain.model.family} pretrained "
        f"{pretrain.training.steps} steps ({_objective_words(pretrain.model.family)}) on "
        f"{pretrain.data.corpus} twice — standard, and "
        f"with the token embeddings reset every {settings.forgetting.reset_every} updates. Then, per new "
        f"language, token budget and seed ({len(settings.seeds)} seeds), only the embeddings are relearned "
        f"for {settings.adaptation.training.steps} steps (body frozen), and the assembled model classifies "
        "topics zero-shot (task head trained on English with embeddings frozen). Spread is over "
        "language-adaptation seeds; "
        "each variant is pretrained once."
    ]
    blocks.append(
        Table(
            [
                "pretraining",
                "English val. loss",
                "unigram loss",
                "English topic acc. (task step)",
                "majority",
            ],
            [
                [
                    v,
                    study.pretrain[v].validation_loss,
                    study.pretrain[v].unigram_loss,
                    summary.english_task_accuracy[v],
                    (summary.english_task_majority or {}).get(v, "-"),
                ]
                for v in VARIANTS
            ],
        )
    )
    rows = []
    for cell in summary.cells:
        s, f = cell.standard, cell.forgetting
        thresholds = cell.steps_to_standard_final
        rows.append(
            [
                cell.language,
                cell.budget,
                f"{pm(cell.early_gap)} (step {cell.early_step}, {cell.early_gap_positive_seeds}/"
                f"{len(settings.seeds)} seeds)",
                "–" if cell.crossover_step is None else cell.crossover_step,
                pm(s.final_loss),
                pm(f.final_loss),
                "/".join("–" if x is None else str(x) for x in thresholds["forgetting"])
                + " vs "
                + "/".join("–" if x is None else str(x) for x in thresholds["standard"]),
                pm(s.zero_shot_accuracy, 100, 1),
                pm(f.zero_shot_accuracy, 100, 1),
                100 * s.majority_baseline,
                f"{100 * cell.relative_gain:+.1f}%",
            ]
        )
    blocks.append(
        Table(
            [
                "language",
                "tokens",
                "gap at first eval (std − forget, nats)",
                "std first lower at step",
                "best loss std",
                "best loss forget",
                "steps to std final: forget vs std (per seed)",
                "zero-shot acc. std %",
                "zero-shot acc. forget %",
                "majority %",
                "rel. gain",
            ],
            rows,
        )
    )
    blocks.append(summary.verdict)
    for cell in summary.cells:
        curves, bands = {}, {}
        for variant in VARIANTS:
            mean, std = getattr(cell, variant).curve_mean, getattr(cell, variant).curve_std
            curves[variant] = list(zip(cell.steps, mean, strict=True))
            bands[variant] = (
                [(x, m - d) for x, m, d in zip(cell.steps, mean, std, strict=True)],
                [(x, m + d) for x, m, d in zip(cell.steps, mean, std, strict=True)],
            )
        path = plot_curves(
            curves,
            plots_dir / f"relearning-{family}-{cell.language}-{cell.budget}.png",
            title=f"Relearning {cell.language} ({cell.budget:,} tokens): embeddings only",
            ylabel="validation loss (nats/token)",
            bands=bands,
        )
        blocks.append(Figure(path, f"{cell.language}, {cell.budget:,} tokens: mean ± std over seeds"))
    if any(cell.gap_mean for cell in summary.cells):
        gap_curves = {
            f"{c.language} {c.budget:,}": list(zip(c.steps, c.gap_mean, strict=True)) for c in summary.cells
        }
        gap_bands = {
            f"{c.language} {c.budget:,}": (
                [(x, m - d) for x, m, d in zip(c.steps, c.gap_mean, c.gap_std, strict=True)],
                [(x, m + d) for x, m, d in zip(c.steps, c.gap_mean, c.gap_std, strict=True)],
            )
            for c in summary.cells
        }
        path = plot_curves(
            gap_curves,
            plots_dir / f"relearning-gap-{family}.png",
            title="Standard minus forgetting validation loss while relearning",
            ylabel="loss gap (nats/token; > 0 favours forgetting)",
            bands=gap_bands,
            reference_lines={"no difference": 0.0},
        )
        blocks.append(Figure(path, "The relearning gap per language and budget: mean ± std over seeds"))
    groups = {
        f"{c.language}\n{c.budget:,}": {
            "standard": tuple(c.standard.zero_shot_accuracy),
            "forgetting": tuple(c.forgetting.zero_shot_accuracy),
        }
        for c in summary.cells
    }
    majority = statistics.fmean(c.standard.majority_baseline for c in summary.cells)
    path = plot_bars(
        groups,
        plots_dir / f"plasticity-zero-shot-{family}.png",
        title="Zero-shot topic accuracy after relearning",
        ylabel="accuracy",
        reference_lines={"majority class (mean)": majority},
    )
    blocks.append(Figure(path, "Zero-shot topic accuracy (mean ± std over seeds)"))
    return blocks
