"""The plasticity study's settings: the new languages, the task, the scales from smoke to real."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from palimpsest.config import from_dict
from palimpsest.data import (
    SHARED_TOPICS,
)
from palimpsest.errors import ConfigError
from palimpsest.forgetting.callback import ForgettingConfig
from palimpsest.forgetting.relearning import (
    LanguageAdaptation,
    TaskAdaptation,
)
from palimpsest.pretraining import PretrainConfig
from palimpsest.training import TrainingConfig


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


VARIANTS = ("standard", "forgetting")
