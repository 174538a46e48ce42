"""The front door: the common jobs in a call each, as ``import palimpsest as ps; ps.load(...)``.

Every function here is a thin layer over the module that does the work (named in its
docstring), for users who want the job and not the machinery; the deep modules stay for
everything else. ``import palimpsest`` reads this module only when one of its names is first
used, so importing the package stays cheap.

    model, tokenizer = ps.load("smollm2-135m")
    editor = ps.edit(model, tokenizer, [ps.request("Spain", "capital", "Madrid", "Barcelona")])
    editor.undo()                                   # bit for bit
    ps.add_memory(model, layers=[15])               # a product-key memory beside block 15's FFN
    ps.save(model, tokenizer, "runs/with-memory")   # plain transformers refuses it; ps.load reads it whole
    ps.remove_memory(model)                         # the model computes what it did before
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact, Relation
from palimpsest.editing import EditConfig, EditRequest
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.evaluation import LMEvaluation
from palimpsest.forgetting import ActiveForgettingCallback, forget_embeddings
from palimpsest.memory import PKMConfig
from palimpsest.pretraining import PretrainConfig
from palimpsest.results import Results

__all__ = [
    "ActiveForgettingCallback",
    "BatchEditConfig",
    "EditConfig",
    "EditRequest",
    "Fact",
    "PKMConfig",
    "PretrainConfig",
    "Relation",
    "add_memory",
    "edit",
    "evaluate",
    "forget_embeddings",
    "load",
    "pretrain",
    "remove_memory",
    "request",
    "save",
]

#: The editors ``edit(method=...)`` runs.
EDIT_METHODS = ("auto", "memit", "alphaedit", "constrained")


def load(
    name_or_path: str | Path, *, task: str = "lm", num_labels: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer: a built-in name (``smollm2-135m``, ``minilm-l6``), a folder that
    palimpsest or transformers saved, or a hub id — with everything palimpsest added to it (a
    memory) rebuilt and loaded (:func:`palimpsest.models.load_pretrained`)."""
    from palimpsest.data import load_tokenizer
    from palimpsest.models import load_pretrained, resolve_pretrained

    model = load_pretrained(str(name_or_path), task=task, num_labels=num_labels)  # type: ignore[arg-type]
    return model, load_tokenizer(resolve_pretrained(str(name_or_path)))


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: str | Path) -> Path:
    """Save as safetensors into ``folder``, atomically (it appears complete or not at all:
    :func:`palimpsest.storage.save_model`). A model carrying a memory is saved under model type
    ``palimpsest``: plain ``transformers`` refuses it loudly, and after ``import palimpsest`` its
    Auto classes (and :func:`load`) read it whole. An existing folder is replaced only where it
    holds a saved model (a ``config.json``); any other non-empty folder is refused."""
    from palimpsest.errors import StorageError
    from palimpsest.storage import save_model

    folder = Path(folder)
    if folder.exists() and (
        not folder.is_dir() or (any(folder.iterdir()) and not (folder / "config.json").is_file())
    ):
        # the save replaces the folder whole: only a saved model's folder may be replaced
        raise StorageError(f"{folder} exists and holds no saved model; save into a new or empty folder")
    return save_model(model, tokenizer, folder)


def add_memory(model: PreTrainedModel, config: PKMConfig | None = None, **settings: Any) -> PreTrainedModel:
    """Add product-key memories (``config``, or :class:`PKMConfig` fields as keywords, e.g.
    ``layers=[15], mode="residual"``): :func:`palimpsest.memory.add_product_key_memory`. A residual
    memory with zero values leaves the model's outputs as they were until it is trained."""
    from palimpsest.memory import add_product_key_memory

    if config is not None and settings:
        raise ConfigError("add_memory: give a PKMConfig or its fields as keywords, not both")
    return add_product_key_memory(model, config if config is not None else PKMConfig(**settings))


def remove_memory(model: PreTrainedModel) -> PreTrainedModel:
    """Take every memory out again (the model computes exactly what it did before they were added)."""
    from palimpsest.memory import memory_handle

    handle = memory_handle(model)
    if handle is None:
        raise ModelError("this model carries no palimpsest memory to remove")
    return handle.remove()


def request(subject: str, relation: str | Relation, old: str, new: str) -> EditRequest:
    """One fact to change: ``request("Spain", "capital", "Madrid", "Barcelona")``; ``relation`` a
    built-in relation's name (``capital``, ``currency``, ``continent``, ``language``, ...) or a
    :class:`Relation` with templates of your own."""
    from palimpsest.editing.datasets import RELATIONS

    if isinstance(relation, str):
        if relation not in RELATIONS:
            known = ", ".join(RELATIONS)
            raise DataError(f"unknown relation '{relation}' (known: {known}, or give a Relation)")
        relation = RELATIONS[relation]
    return EditRequest(Fact(subject, relation, old), new)


def edit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    *,
    method: str = "auto",
    keep: Sequence[Fact] = (),
    **settings: Any,
) -> BatchEditor | ConstrainedFinetune:
    """Write ``requests`` into ``model`` and return the editor (``editor.undo()`` puts every
    edited weight back bit for bit; ``editor.apply(more)`` continues the sequence, keeping the
    earlier edits). ``method="auto"`` runs MEMIT on a causal LM and the constrained editor on a
    masked LM (:func:`palimpsest.editing.run.choose_method`; README, "Many edits"); ``memit``,
    ``alphaedit`` (:class:`BatchEditConfig`) and ``constrained`` (:class:`EditConfig`) name one,
    with its config's fields as keywords. ``keep``: facts the constrained editor measures as kept."""
    from palimpsest.editing.run import choose_method
    from palimpsest.models import objective_of

    if method not in EDIT_METHODS:
        raise ConfigError(f"edit: unknown method '{method}' (known: {', '.join(EDIT_METHODS)})")
    if not requests:
        raise DataError("edit: no requests")
    chosen = choose_method(objective_of(model.config)) if method == "auto" else method
    editor: BatchEditor | ConstrainedFinetune = (
        ConstrainedFinetune(model, tokenizer, **settings)
        if chosen == "constrained"
        else BatchEditor(model, tokenizer, method=chosen, **settings)
    )
    editor.apply(requests, unmodified=keep, measure=False)
    return editor


def evaluate(name_or_path: str | Path, corpus: str = "wiki-en", **settings: Any) -> LMEvaluation:
    """Perplexity of a saved model (or a built-in one) on ``corpus``'s validation split, beside
    the unigram baseline (:func:`palimpsest.evaluation.evaluate_saved_lm`)."""
    from palimpsest.evaluation import evaluate_saved_lm

    return evaluate_saved_lm(str(name_or_path), corpus, **settings)


def pretrain(config: PretrainConfig | str | Path, out: str | Path, **options: Any) -> Results:
    """Pretrain per ``config`` (a :class:`PretrainConfig` or a YAML file, with ``memory:`` /
    ``forgetting:`` sections for the extensions) into ``out``, resumably
    (:func:`palimpsest.pretraining.run_pretrain`)."""
    from palimpsest.config import load_config
    from palimpsest.pretraining import run_pretrain

    if not isinstance(config, PretrainConfig):
        config = load_config(PretrainConfig, config)
    return run_pretrain(config, out, **options)
