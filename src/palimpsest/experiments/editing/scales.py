"""The editing study's settings: the editors compared, the fact sets, the scales."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from palimpsest.editing.config import PLAIN_FINETUNING, EditConfig
from palimpsest.errors import ConfigError
from palimpsest.pretraining import DataConfig
from palimpsest.training import TrainingConfig

METHODS = ("ft", "ft+support", "linf", "l2")


def _data(**fields: Any) -> DataConfig:
    return DataConfig(
        **{"max_documents": 2000, "vocab_size": 2048, "block_size": 64, "max_eval_blocks": 64, **fields}
    )


def _training(**fields: Any) -> TrainingConfig:
    """Pretraining (evaluated 4 times, checkpointed halfway; see :func:`_family_training`)."""
    return TrainingConfig(
        **{"steps": 800, "batch_size": 16, "learning_rate": 3e-3, "mlm_probability": 0.2, **fields}
    )


def _edit(**fields: Any) -> EditConfig:
    """What every method shares: the paper's plain constrained fine-tuning at one lr and step count
    (each method sets its layers, modules and bound)."""
    return EditConfig(**{"learning_rate": 1e-3, "steps": 100, **PLAIN_FINETUNING, **fields})


@dataclass(frozen=True)
class EditingScale:
    """One run of the study: the library's configs of the data, pretraining and edits, and the
    study's own grid (families, facts, edit counts, methods, layer choices, bounds, seeds)."""

    families: tuple[str, ...] = ("gpt2", "roberta")
    size: str = "mini"
    data: DataConfig = field(default_factory=_data)
    training: TrainingConfig = field(default_factory=_training)
    #: Masked LMs learn facts far more slowly than causal ones (README, "The editing study").
    masked_pretrain_steps: int | None = None
    edit: EditConfig = field(default_factory=_edit)
    fact_sets: tuple[str, ...] = ("country-capital", "country-continent")
    #: Keep the facts of this many subjects (a seeded draw, the same for every fact set).
    max_subjects: int | None = None
    fact_repeats: int = 6
    edits: tuple[int, ...] = (32,)
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = METHODS
    #: Layer choices of the constrained methods; "single" adds every block alone.
    layer_choices: tuple[str, ...] = ("first", "last", "first+last", "all", "single")
    linf_deltas: tuple[float, ...] = (5e-3,)
    l2_deltas: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")


FULL_FACT_SETS = (
    "country-capital", "country-continent", "country-currency", "country-language",
    "element-symbol", "atomic-number",
)  # fmt: skip


SCALES: dict[str, EditingScale] = {
    "smoke": EditingScale(
        families=("gpt2", "bert"),
        size="micro",
        data=_data(max_documents=200, vocab_size=600, block_size=32, max_eval_blocks=8),
        training=_training(steps=10, batch_size=8),
        edit=_edit(steps=3),
        fact_sets=("country-continent",),
        fact_repeats=2,
        edits=(4,),
        seeds=(0,),
        layer_choices=("first+last", "single"),
    ),
    # A causal model only: a masked LM needs several times more updates to learn the facts.
    "demo": EditingScale(
        families=("gpt2",),
        data=_data(max_documents=100),
        training=_training(steps=800, learning_rate=5e-3),
        max_subjects=60,
        fact_repeats=16,
        layer_choices=("first+last", "single"),
        linf_deltas=(5e-3, 2e-2),
        l2_deltas=(1.0,),
    ),
    # Both families and all three edit-set sizes: four relations of every country (~990 facts,
    # so that 512 edits leave facts to score); pretraining long enough that both models recall
    # nearly every fact (README, "The editing study").
    "cpu": EditingScale(
        data=_data(max_documents=300, max_eval_blocks=128),
        training=_training(steps=5000, learning_rate=3e-3, mlm_probability=0.3),
        masked_pretrain_steps=25_000,
        fact_sets=("country-capital", "country-continent", "country-currency", "country-language"),
        fact_repeats=12,
        edits=(32, 128, 512),
        seeds=(0, 1, 2),
        linf_deltas=(5e-3, 2e-2, 5e-2),
        l2_deltas=(0.3, 1.0),
    ),
    # For a GPU: 8-block models (so "first and last" are 2 of 8 blocks, not 2 of 4), every
    # built-in country and element relation (~1,230 facts), all of the shipped wiki text, five
    # seeds. Not run on the 2-core development machine; the pretraining lengths scale the
    # cpu scale's by the model size.
    "full": EditingScale(
        size="small",
        data=_data(max_documents=None, vocab_size=8192, block_size=128, max_eval_blocks=512),
        training=_training(steps=20_000, batch_size=32, learning_rate=1e-3, mlm_probability=0.3),
        masked_pretrain_steps=100_000,
        edit=_edit(steps=200),
        fact_sets=FULL_FACT_SETS,
        fact_repeats=12,
        edits=(32, 128, 512),
        seeds=(0, 1, 2, 3, 4),
        linf_deltas=(2e-3, 5e-3, 2e-2, 5e-2),
        l2_deltas=(0.3, 1.0, 3.0),
    ),
}
