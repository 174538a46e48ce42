"""Teaching facts to a gated memory, and taking them out again.

A gated memory (``PKMConfig(gate_hidden=...)``, :mod:`palimpsest.memory.gate`) reads nothing until
its gate is fitted. Teaching facts therefore has two parts:

1. **Fit the gate** on the memory's inputs: *open* at the last token of each taught fact's subject
   (where MEMIT writes a fact: the token whose input names the subject), in the prompt as users
   write it and after passages of unrelated text; *closed* everywhere else — the other tokens of
   those prompts, the same prompts with other subjects (the facts' neighbours: the hard negatives,
   weighted up) and ordinary text. A fitted scorer, not a radius around one key per fact, because
   on SmolLM2 a neighbour's input lies as close to such a key as the taught prompt after text does
   (``results/gated-memory-probe-real/``); where the gate has room for keys, a codebook of every
   taught phrasing's input then keeps it closed for subjects it was not fitted on (the scorer
   alone opens for most of those).
2. **Train the values through it** (:func:`palimpsest.memory.learning.learn_facts`): only tokens
   the gate opens read the memory, so only the slots they select move, and every other input
   reads exact zeros — the model is the base model there.

The gate is fitted on every fact the memory holds (:class:`~palimpsest.memory.taught.TaughtFacts`),
so a later round refits it on the old facts and the new, and :func:`forget_facts` refits it
without the facts taken out (and with them as closed inputs), zeroing the slots only they read;
once no fact is left the gate is closed again and the model computes exactly the base model.

The neighbours are the facts' relations with other subjects: the facts a user asked to keep
(``memory learn``'s file) and subjects of palimpsest's built-in fact tables (cities, countries,
elements), never a subject the memory was taught (its own prompts under another relation share
the subject's input, so they cannot be told apart there).
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from palimpsest.data.facts import Fact, Relation
from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory.gate import GateFit, fit_gate
from palimpsest.memory.inject import memories, memory_handle
from palimpsest.memory.layer import ProductKeyMemory
from palimpsest.memory.taught import TaughtFact, TaughtFacts
from palimpsest.recall import (
    PLAIN,
    PromptContext,
    after_text,
    build_probe,
    greedy_generate,
    pad_id,
    text_passages,
)
from palimpsest.report import Section, Table
from palimpsest.results import Results

if TYPE_CHECKING:
    from palimpsest.memory.learning import MemoryLearning

logger = logging.getLogger(__name__)


@dataclass
class GateTraining:
    """How a memory's gate is fitted when facts are taught to it or taken out of it."""

    #: Passages of ordinary text (the background's train split) each taught prompt is also seen
    #: after, as an open input and as a training example: a question asked mid-conversation.
    passages: int = 2
    #: Other subjects per taught fact, stated in its relation's first template: closed inputs.
    neighbours: int = 4
    #: The weight of a neighbour's tokens against one token of ordinary text.
    neighbour_weight: float = 5.0
    #: The share of the fit's loss the open inputs carry, however many closed ones there are: half,
    #: so that the scorer does not buy closed neighbours with taught inputs it leaves closed (a fact
    #: whose own prompt the gate closes is never learned). Subjects it was not fitted on are kept
    #: closed by the codebook, not by this weight. Chosen by measuring on SmolLM2-135M: a smaller
    #: share left taught cities' own prompts closed (``results/knowledge-gated-real/gate_fit-128.json``).
    open_share: float = 0.5
    #: Tokens of ordinary text the gate learns to stay closed for.
    background_tokens: int = 4096
    background: str = "wiki-en"
    #: The values' training through the gate: their learning rate and passes over the examples
    #: (at least ``training.steps`` steps). A gated memory is read at one token per fact, so its
    #: values need a larger step than an always-read memory's: chosen by measuring on SmolLM2-135M
    #: (``results/gated-memory-probe-real/values_rate.json``).
    values_learning_rate: float = 0.3
    epochs: float = 3.0
    #: Same-subject anchors per taught fact: the subject through another relation's prompt, trained
    #: to continue with the ``anchor_tokens`` greedy tokens the model wrote there before the memory
    #: (the gate opens at the subject's token whatever relation follows, so what the memory writes
    #: there must not change the subject's other facts; MEMIT's essence constraint, as examples).
    anchors: int = 2
    anchor_tokens: int = 3
    #: Where a gate has a codebook (``PKMConfig.gate_keys``): the cosine to a taught input from which
    #: it opens. Chosen by measuring on SmolLM2-135M: the threshold that kept unseen subjects' prompts
    #: closed while opening most held-out paraphrases (``results/gated-memory-probe-real/``, README,
    #: "A codebook of every taught phrasing").
    key_threshold: float = 0.88
    #: The scorer's fit: Adam steps of ``batch_size`` rows drawn at random.
    steps: int = 1500
    batch_size: int = 4096
    learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.anchors < 0:
            raise ConfigError(f"gate.anchors must be 0 or more, got {self.anchors}")
        for name in ("neighbours", "background_tokens", "steps", "batch_size", "anchor_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gate.{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.key_threshold, bool) or not -1.0 <= self.key_threshold <= 1.0:
            raise ConfigError(f"gate.key_threshold must be a cosine in [-1, 1], got {self.key_threshold!r}")
        if self.passages < 0:
            raise ConfigError(f"gate.passages must be 0 or more, got {self.passages}")
        for name in ("neighbour_weight", "learning_rate", "values_learning_rate", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"gate.{name} must be a positive number, got {value!r}")
        if not 0.0 < self.open_share < 1.0:
            raise ConfigError(f"gate.open_share must be between 0 and 1, got {self.open_share}")


def gated_memories(model: nn.Module) -> dict[str, ProductKeyMemory]:
    """The model's memory layers that have a gate."""
    return {name: layer for name, layer in memories(model).items() if layer.gate is not None}


def check_taught_list(model: nn.Module) -> None:
    """One line where a fitted gate's facts are unknown (its list was not saved with it): teaching
    or forgetting would refit the gate without them."""
    handle = memory_handle(model)
    fitted = [name for name, layer in gated_memories(model).items() if layer.gate.fitted]
    if fitted and handle is not None and not handle.taught.facts:
        raise ModelError(
            f"the gate of the memory at {fitted[0]} was fitted on facts this model does not list "
            "(memory_facts.json was not saved with it): it cannot be taught more or made to forget"
        )


def training_contexts(settings: GateTraining) -> list[PromptContext]:
    """The contexts a taught prompt is seen in: as written, and after each training passage."""
    passages = text_passages(settings.passages, seed=settings.seed, split="train", corpus=settings.background)
    return [PLAIN, *(after_text(passage) for passage in passages)]


def fact_templates(fact: Fact, templates: Sequence[int], paraphrases: bool) -> list[int]:
    """The templates ``fact`` is taught through: ``templates``, and with ``paraphrases`` every other
    template of its relation but its held-out one (one phrasing per subject stays unseen)."""
    count = len(fact.relation.templates)
    chosen = sorted({template % count for template in templates})
    if paraphrases:
        held_out = fact.held_out_template(chosen[0])
        chosen += [t for t in range(count) if t not in chosen and t != held_out]
    return chosen


@dataclass(frozen=True)
class _Text:
    """Token ids fed to the model; ``open_at`` the one position the gate must open at (None: none),
    every other position from ``closed_from`` on a closed input of weight ``weight``."""

    ids: list[int]
    open_at: int | None
    weight: float
    closed_from: int = 0


def _prompt_text(tokenizer, fact: Fact, template: int, context: PromptContext, weight: float, *, open_: bool):
    probe = build_probe(tokenizer, fact, template=template, causal=True, context=context)
    if probe is None or not probe.subject_positions:
        return None
    ids = probe.input_ids[: probe.answer_positions[0]]
    if not open_:
        return _Text(ids, None, weight)
    # closed: the subject's other tokens and the words after it, which read the subject too; the
    # template's words before it are the neighbours' as well, and a context passage is ordinary text
    return _Text(ids, probe.subject_positions[-1], weight, closed_from=probe.subject_positions[0])


def neighbour_facts(
    taught: Sequence[TaughtFact],
    keep: Sequence[Fact],
    settings: GateTraining,
    *,
    held_out: Sequence[Fact] = (),
) -> list[Fact]:
    """Per taught fact, ``settings.neighbours`` facts of its relation about subjects never taught:
    the kept facts of that relation first, then subjects of the built-in fact tables (chosen by a
    hash of the fact, so a refit draws the same ones). ``held_out``'s subjects are never drawn from
    the tables: facts a study measures the gate on must not be among the inputs it was fitted closed
    for."""
    from palimpsest.data.facts import FACT_SETS, builtin_facts, city_facts

    taught_subjects = {fact.subject for fact in taught}
    unseen_subjects = {fact.subject for fact in held_out}
    kept_by_relation: dict[str, list[Fact]] = {}
    for fact in keep:
        if fact.subject not in taught_subjects:
            kept_by_relation.setdefault(fact.relation.name, []).append(fact)
    tables = {fact.subject for fact in city_facts(2000)} | {
        fact.subject for name in FACT_SETS for fact in builtin_facts(name)
    }
    pool = sorted(tables - taught_subjects - unseen_subjects)
    neighbours: list[Fact] = []
    for entry in taught:
        fact = entry.fact
        chosen = kept_by_relation.get(fact.relation.name, [])[: settings.neighbours]
        rng = random.Random(zlib.crc32(f"{settings.seed}|{fact.subject}|{fact.relation.name}".encode()))
        while len(chosen) < settings.neighbours and pool:
            chosen.append(Fact(rng.choice(pool), fact.relation, fact.object))
        neighbours += chosen
    return neighbours


def gate_texts(
    tokenizer: PreTrainedTokenizerBase,
    taught: Sequence[TaughtFact],
    *,
    templates: Sequence[int],
    paraphrases: bool,
    contexts: Sequence[PromptContext],
    closed_facts: Sequence[Fact],
    settings: GateTraining,
) -> list[_Text]:
    """What the gate is fitted on: each taught prompt (open at the subject's last token, closed at
    its other tokens from the template's start), ``closed_facts``' prompts (closed, weighted as
    neighbours) and ordinary text (closed)."""
    texts: list[_Text] = []
    for entry in taught:
        fact = entry.fact
        for template in fact_templates(fact, templates, paraphrases):
            for context in contexts:
                text = _prompt_text(tokenizer, fact, template, context, 1.0, open_=True)
                if text is not None:
                    texts.append(text)
    for fact in closed_facts:
        text = _prompt_text(tokenizer, fact, 0, PLAIN, settings.neighbour_weight, open_=False)
        if text is not None:
            texts.append(text)
    tokens = 0
    passages = text_passages(
        max(settings.background_tokens // 32, 1), words=48, seed=settings.seed + 1, split="train",
        corpus=settings.background,
    )  # fmt: skip
    for passage in passages:
        ids = tokenizer(passage)["input_ids"]
        texts.append(_Text(ids, None, 1.0))
        tokens += len(ids)
        if tokens >= settings.background_tokens:
            break
    return texts


@torch.no_grad()
def memory_inputs(
    model: nn.Module, texts: Sequence[_Text], *, pad_id: int = 0, batch_size: int = 32,
    also: Mapping[str, nn.Module] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Per gated memory layer: (open inputs, closed inputs, closed weights) of ``texts``; for a gate
    whose codebook reads another block, the same of that block's input under :func:`key_input_name`;
    with ``also``, the same for the inputs of those other modules, under their keys (another block's
    state at the same positions, read in the same forward passes)."""
    gated = gated_memories(model)
    layers = {**gated, **(also or {})}
    fed = {key_input_name(name): layer for name, layer in gated.items() if layer.key_input is not None}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args, name=name: captured.__setitem__(name, args[0]))
        for name, layer in layers.items()
    ]
    opened: dict[str, list[torch.Tensor]] = {name: [] for name in [*layers, *fed]}
    closed: dict[str, list[torch.Tensor]] = {name: [] for name in [*layers, *fed]}
    weights: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            length = max(len(text.ids) for text in batch)
            ids = torch.tensor(
                [text.ids + [pad_id] * (length - len(text.ids)) for text in batch], device=device
            )
            mask = torch.tensor(
                [[1] * len(t.ids) + [0] * (length - len(t.ids)) for t in batch], device=device
            )
            model(input_ids=ids, attention_mask=mask)
            for name, layer in fed.items():
                captured[name] = layer.key_input.hidden  # type: ignore[union-attr]
            rows_closed: list[tuple[int, int]] = []
            rows_open: list[tuple[int, int]] = []
            for row, text in enumerate(batch):
                first = text.closed_from
                if text.open_at is not None:
                    rows_open.append((row, text.open_at))
                closed_here = [(row, p) for p in range(first, len(text.ids)) if p != text.open_at]
                rows_closed += closed_here
                weights.append(torch.full((len(closed_here),), text.weight))
            for name in [*layers, *fed]:
                hidden = captured[name].float().cpu()
                if rows_open:
                    opened[name].append(hidden[[r for r, _ in rows_open], [p for _, p in rows_open]])
                closed[name].append(hidden[[r for r, _ in rows_closed], [p for _, p in rows_closed]])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    dim = next(iter(captured.values())).shape[-1] if captured else 0
    return {
        name: (
            torch.cat(opened[name]) if opened[name] else torch.zeros(0, dim),
            torch.cat(closed[name]),
            torch.cat(weights),
        )
        for name in [*layers, *fed]
    }


def key_input_name(name: str) -> str:
    """Under which name :func:`memory_inputs` returns the key block's input of the memory ``name``."""
    return f"{name} (codebook's block)"


@contextmanager
def memories_closed(model: nn.Module) -> Iterator[None]:
    """Within: every gate closed, so the model computes the model without its memories; after:
    each gate exactly as it was."""
    saved = {name: {k: v.clone() for k, v in layer.gate.state_dict().items()}
             for name, layer in gated_memories(model).items()}  # fmt: skip
    try:
        for layer in gated_memories(model).values():
            layer.gate.close()
        yield
    finally:
        for name, layer in gated_memories(model).items():
            layer.gate.load_state_dict(saved[name])


def greedy_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], count: int,
                  *, batch_size: int = 32) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """Each prompt's ids (as a user's ``tokenizer(text)`` reads it) and the ``count`` tokens the
    model writes after it, greedily (the ids, not their text: anchors are trained on them)."""
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    written = greedy_generate(model, encoded, count, pad=pad_id(tokenizer), batch_size=batch_size)  # type: ignore[arg-type]
    return list(zip(encoded, written, strict=True))


def same_subject_anchors(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, taught: Sequence[TaughtFact], keep: Sequence[Fact],
    settings: GateTraining,
) -> list[tuple[list[int], list[int]]]:  # fmt: skip
    """Training rows (ids, labels) that keep, for each taught subject, what the model without its
    memories writes after the subject's prompt through ``settings.anchors`` other relations (chosen
    by a hash of the fact among those of the taught and kept facts, the relations the subject has
    first: :func:`subject_relations`). Each is stated through :func:`anchor_template`, not the
    relation's first template, so that the subject's other facts asked as users (and as every
    benchmark) ask them stay a test the anchors were not fitted on."""
    if not settings.anchors:
        return []
    relations = {}
    for fact in [*(entry.fact for entry in taught), *keep]:
        relations.setdefault(fact.relation.name, fact.relation)
    has = subject_relations([entry.fact for entry in taught], keep)
    prompts: list[str] = []
    for entry in taught:
        others = [relation for name, relation in sorted(relations.items()) if name != entry.relation]
        own = [relation for relation in others if relation.name in has.get(entry.subject, ())]
        rest = [relation for relation in others if relation not in own]
        rng = random.Random(zlib.crc32(f"{settings.seed}|{entry.subject}|{entry.relation}".encode()))
        chosen = rng.sample(own, min(settings.anchors, len(own)))
        chosen += rng.sample(rest, min(settings.anchors - len(chosen), len(rest)))
        for relation in chosen:
            prompts.append(Fact(entry.subject, relation, "").prompt(anchor_template(relation)))
    if not prompts:
        return []
    with memories_closed(model):
        written = greedy_tokens(model, tokenizer, prompts, settings.anchor_tokens)
    return [(ids + more, [-100] * len(ids) + more) for ids, more in written]


def subject_relations(taught: Sequence[Fact], keep: Sequence[Fact]) -> dict[str, set[str]]:
    """Per subject, the names of the relations it is the subject of, in ``taught``, ``keep`` or a
    built-in fact table. A subject's anchors are asked through these first: the facts a memory
    taught about France's capital can disturb are France's language and continent, not France's
    chemical symbol, a prompt no user asks and whose continuation protects nothing."""
    from palimpsest.data.facts import FACT_SETS, builtin_facts

    tables = [fact for name in FACT_SETS for fact in builtin_facts(name)]
    subjects = {fact.subject for fact in [*taught, *keep]}
    has: dict[str, set[str]] = {}
    for fact in [*taught, *keep, *tables]:
        if fact.subject in subjects:
            has.setdefault(fact.subject, set()).add(fact.relation.name)
    return has


def anchor_template(relation: Relation) -> int:
    """The template a same-subject anchor states ``relation`` through: the first paraphrase (not the
    first template) that does not open with the subject — a subject at a prompt's first position is
    where the gate never opens, so an anchor there would teach nothing — else the first paraphrase,
    else the one template there is."""
    later = range(1, len(relation.templates))
    return next((t for t in later if not relation.templates[t].startswith("{subject}")), 1 if later else 0)


@dataclass
class GateFits:
    """Per gated memory layer, how its gate fitted (:class:`~palimpsest.memory.gate.GateFit`)."""

    layers: dict[str, GateFit]
    facts: int
    texts: int


def fit_memory_gates(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    taught: Sequence[TaughtFact],
    *,
    templates: Sequence[int],
    paraphrases: bool,
    settings: GateTraining,
    keep: Sequence[Fact] = (),
    closed_facts: Sequence[Fact] = (),
    held_out: Sequence[Fact] = (),
) -> GateFits:
    """Fit every gate of ``model``'s memories to open for ``taught`` (see the module docstring);
    ``closed_facts`` are kept closed as hard negatives (facts taken out); no subject of ``held_out``
    is drawn as a neighbour (:func:`neighbour_facts`)."""
    contexts = training_contexts(settings)
    neighbours = neighbour_facts(taught, keep, settings, held_out=held_out)
    texts = gate_texts(
        tokenizer, taught, templates=templates, paraphrases=paraphrases, contexts=contexts,
        closed_facts=[*neighbours, *closed_facts], settings=settings,
    )  # fmt: skip
    if not any(text.open_at is not None for text in texts):
        raise ModelError("none of the taught facts has a prompt with a subject to open the gate at")
    # a codebook's keys: every open input but a sequence's first (the attention sink's input, alike
    # for every token, would match every prompt's first token); those are its start keys
    as_key = torch.tensor([text.open_at != 0 for text in texts if text.open_at is not None])
    first_tokens = len({text.ids[0] for text in texts if text.open_at == 0})  # one start key each
    for name, layer in gated_memories(model).items():
        rooms = ((int(as_key.sum()), layer.gate.key_room, "keys"),
                 (first_tokens, len(getattr(layer.gate, "start_keys", ())), "start keys"))  # fmt: skip
        for needed, room, what in rooms if layer.gate.key_room else ():
            if needed > room:
                raise ModelError(
                    f"the gate of {name} has room for {room} {what}; the facts it would hold need {needed} "
                    "(add the memory with a larger memory.gate_keys)"
                )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = memory_inputs(model, texts, pad_id=pad)
    codebooks = any(layer.gate.key_room for layer in gated_memories(model).values())
    start_centres = first_position_centres(model, tokenizer, seed=settings.seed) if codebooks else {}
    background = [text for text in texts if text.open_at is None and text.weight == 1.0]
    centre_rows = memory_inputs(model, background, pad_id=pad) if background else None
    fits: dict[str, GateFit] = {}
    for name, layer in gated_memories(model).items():
        positives, negatives, weights = inputs[name]
        centre = centre_rows[name][1].mean(dim=0) if centre_rows is not None else None
        key_rows, key_centre = positives, None
        if layer.gate.separate_keys:
            if centre_rows is None:
                raise ModelError("a codebook of another block's input needs background text to centre it")
            key_rows = inputs[key_input_name(name)][0]
            key_centre = centre_rows[key_input_name(name)][1].mean(dim=0)
        fits[name] = fit_gate(
            layer.gate, positives, negatives, negative_weights=weights, open_share=settings.open_share,
            centre=centre,
            steps=settings.steps, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
            seed=settings.seed,
        )  # fmt: skip
        if layer.gate.key_room:
            layer.gate.set_keys(
                key_rows[as_key], settings.key_threshold, start=positives[~as_key],
                start_centre=start_centres[name], key_centre=key_centre,
            )  # fmt: skip
        logger.info(
            "gate of %s fitted on %d open and %d closed inputs: opens %.1f%% of the open, keeps %.1f%% "
            "of the closed closed", name, fits[name].positives, fits[name].negatives,
            100 * fits[name].opened_positives, 100 * fits[name].closed_negatives,
        )  # fmt: skip
    return GateFits(fits, facts=len(taught), texts=len(texts))


#: Vocabulary tokens whose first-position inputs are averaged into a start keys' centre.
START_CENTRE_TOKENS = 1024


def first_position_centres(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, *, tokens: int = START_CENTRE_TOKENS, seed: int = 0,
    also: Mapping[str, nn.Module] | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per gated memory (and module of ``also``, as :func:`memory_inputs`), the mean of its input at
    a sequence's first position over ``tokens`` vocabulary tokens drawn with ``seed`` (special
    tokens left out): the centre that makes first-position inputs tell tokens apart
    (:mod:`palimpsest.memory.gate`, start keys)."""
    special = set(tokenizer.all_special_ids)
    vocabulary = [token for token in range(len(tokenizer)) if token not in special]
    drawn = random.Random(seed).sample(vocabulary, min(tokens, len(vocabulary)))
    inputs = memory_inputs(model, [_Text([token], 0, 1.0) for token in drawn], also=also)
    return {name: opened.mean(dim=0) for name, (opened, _closed, _weights) in inputs.items()}


@torch.no_grad()
def slots_read(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, facts: Sequence[TaughtFact], *,
    templates: Sequence[int], paraphrases: bool, settings: GateTraining,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per gated memory layer, which slots (a boolean per slot) the open inputs of ``facts`` select."""
    layers = gated_memories(model)
    used = {name: torch.zeros(layer.size, dtype=torch.bool) for name, layer in layers.items()}
    if not facts:
        return used
    texts = [
        text
        for entry in facts
        for template in fact_templates(entry.fact, templates, paraphrases)
        for context in training_contexts(settings)
        if (text := _prompt_text(tokenizer, entry.fact, template, context, 1.0, open_=True)) is not None
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = memory_inputs(model, texts, pad_id=pad)
    for name, layer in layers.items():
        positives = inputs[name][0]
        if len(positives):
            used[name][layer.selected_slots(positives.to(layer.values.weight.device)).reshape(-1).cpu()] = (
                True
            )
    return used


@dataclass
class Forgotten:
    """What :func:`forget_facts` took out: facts, the facts left, and per layer the slots zeroed."""

    facts: int
    remaining: int
    slots_zeroed: dict[str, int]
    gate: GateFits | None


def forget_facts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Fact],
    *,
    templates: Sequence[int] = (0,),
    paraphrases: bool = False,
    settings: GateTraining | None = None,
    held_out: Sequence[Fact] = (),
) -> Forgotten:
    """Take ``facts`` (each one the memory was taught; by subject and relation) out of the model's
    gated memory: the slots only they select are zeroed, and the gate is refitted on the facts left
    with the ones taken out as closed inputs — or, when none is left, closed for every input, so the
    model computes exactly the base model again. ``templates``/``paraphrases`` are how they were taught;
    ``held_out`` as in :func:`fit_memory_gates` (facts a study measures: never closed inputs of the refit)."""
    settings = settings or GateTraining()
    handle = memory_handle(model)
    if handle is None or not gated_memories(model):
        raise ModelError("the model has no gated memory to take facts out of (memory add --gate-hidden)")
    check_taught_list(model)
    remaining = handle.taught.without(facts)
    gone_keys = {(fact.subject, fact.relation.name) for fact in facts}
    gone = [entry for entry in handle.taught.facts if entry.key in gone_keys]
    kwargs = {"templates": templates, "paraphrases": paraphrases, "settings": settings}
    theirs = slots_read(model, tokenizer, gone, **kwargs)
    others = slots_read(model, tokenizer, remaining.facts, **kwargs)
    zeroed: dict[str, int] = {}
    for name, layer in gated_memories(model).items():
        owned = theirs[name] & ~others[name]
        with torch.no_grad():
            layer.values.weight[owned.to(layer.values.weight.device)] = 0.0
        zeroed[name] = int(owned.sum())
    fits = None
    if remaining.facts:
        fits = fit_memory_gates(
            model, tokenizer, remaining.facts, closed_facts=[entry.fact for entry in gone], held_out=held_out,
            keep=[entry.fact for entry in remaining.kept], **kwargs,
        )  # fmt: skip
    else:
        for layer in gated_memories(model).values():
            layer.gate.close()
    handle.taught = remaining
    return Forgotten(len(gone), len(remaining.facts), zeroed, fits)


def forget_saved_model(
    model_dir: str | Path, facts: Sequence[Fact], settings: MemoryLearning, out: str | Path
) -> MemoryForgetResults:
    """``palimpsest memory forget``: take ``facts`` out of a saved model's gated memory, measure the
    recall of their taught answers, of their objects as the file states them, and of the facts left,
    before and after; save the model (with the shorter list of facts) to ``out/model``."""
    from palimpsest.data import load_tokenizer
    from palimpsest.memory.inject import save_merged
    from palimpsest.models import load_pretrained, resolve_pretrained
    from palimpsest.recall import fact_recall
    from palimpsest.storage import machine_info

    model = load_pretrained(str(model_dir)).eval()
    handle = memory_handle(model)
    if handle is None or not gated_memories(model):
        raise ModelError(f"'{model_dir}' has no gated memory to take facts out of (memory add --gate-hidden)")
    check_taught_list(model)
    handle.taught.without(facts)  # every fact must be one it holds: refused before any work
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    gone_keys = {(fact.subject, fact.relation.name) for fact in facts}
    gone = [entry.fact for entry in handle.taught.facts if entry.key in gone_keys]
    left = [entry.fact for entry in handle.taught.facts if entry.key not in gone_keys]

    def recall(chosen: Sequence[Fact]) -> float | None:
        return fact_recall(model, tokenizer, chosen).accuracy if chosen else None

    before = (recall(gone), recall(facts), recall(left))
    started = time.perf_counter()
    forgotten = forget_facts(
        model, tokenizer, facts, templates=settings.templates, paraphrases=settings.paraphrases,
        settings=settings.gate,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    model.eval()
    after = (recall(gone), recall(facts), recall(left))
    out = Path(out)
    save_merged(model, tokenizer, out / "model")
    results = MemoryForgetResults(
        model=str(model_dir), facts=forgotten.facts, remaining=forgotten.remaining,
        taught_recall_before=before[0], taught_recall_after=after[0],
        stated_recall_before=before[1], stated_recall_after=after[1],
        remaining_recall_before=before[2], remaining_recall_after=after[2],
        slots_zeroed=forgotten.slots_zeroed, gate_closed=not forgotten.remaining, seconds=seconds,
        saved_model=str(out / "model"), machine=machine_info(),
    )  # fmt: skip
    results.write(out / "results.json")
    return results


@dataclass
class MemoryForgetResults(Results):
    """What ``palimpsest memory forget`` took out of a memory, and what the model recalls after."""

    KIND: ClassVar[str] = "memory-forget"

    model: str
    facts: int
    remaining: int
    #: Recall of the facts taken out with the answers the memory taught them.
    taught_recall_before: float
    taught_recall_after: float
    #: Recall of the same facts with the objects the file states (their answers before teaching).
    stated_recall_before: float
    stated_recall_after: float
    #: Recall of the facts the memory still holds, with their taught answers.
    remaining_recall_before: float | None
    remaining_recall_after: float | None
    slots_zeroed: dict[str, int]
    #: Every fact was taken out: the gate is closed again and the model computes the base model.
    gate_closed: bool
    seconds: float
    saved_model: str
    machine: dict[str, Any]

    @classmethod
    def report_section(cls, runs: Sequence[MemoryForgetResults], plots_dir: Path) -> Section:
        section = Section("Facts taken out of a gated memory")
        section.blocks.append(
            "Recall is the exact match of the whole object (greedy) through the fact's first template, "
            "the prompt as a user writes it: 'taught' with the answer the memory taught, 'stated' with "
            "the object the file states, 'remaining' the facts the memory still holds. The slots only "
            "the facts taken out read are zeroed and the gate is refitted without them (closed for "
            "every input when none is left: the base model's outputs exactly)."
        )
        rows = [
            [
                run.model, run.facts, run.remaining, run.taught_recall_before, run.taught_recall_after,
                run.stated_recall_before, run.stated_recall_after, run.remaining_recall_before,
                run.remaining_recall_after, sum(run.slots_zeroed.values()), run.gate_closed, run.seconds,
            ]
            for run in runs
        ]  # fmt: skip
        headers = [
            "model", "facts out", "facts left", "taught before", "taught after", "stated before",
            "stated after", "remaining before", "remaining after", "slots zeroed", "gate closed", "seconds",
        ]  # fmt: skip
        section.blocks.append(Table(headers, rows))
        return section


@dataclass
class TaughtFactRow:
    """One line of ``memory list``: a fact, its answer, when it was taught, the slots it reads."""

    subject: str
    relation: str
    answer: str
    round: int
    taught_at: str
    #: Slots its prompt (as written, first template) selects, and how many of them no other
    #: taught fact's prompt selects.
    slots: int
    own_slots: int
    #: Whether the gate opens at its prompt.
    opens: bool


def taught_fact_rows(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[TaughtFactRow]:
    """What a gated memory holds, fact by fact (``memory list``)."""
    handle = memory_handle(model)
    if handle is None:
        raise ModelError("the model has no product-key memory (memory add)")
    check_taught_list(model)
    entries = handle.taught.facts
    texts = [_prompt_text(tokenizer, entry.fact, 0, PLAIN, 1.0, open_=True) for entry in entries]
    usable = [(entry, text) for entry, text in zip(entries, texts, strict=True) if text is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inputs = memory_inputs(model, [text for _, text in usable], pad_id=pad) if usable else {}
    per_fact: list[set[int]] = [set() for _ in usable]
    opens = [False] * len(usable)
    for name, layer in gated_memories(model).items():
        positives = inputs[name][0] if inputs else torch.zeros(0, layer.dim)
        if not len(positives):
            continue
        device = layer.values.weight.device
        selected = layer.selected_slots(positives.to(device)).reshape(len(positives), -1).cpu()
        key_rows = inputs[key_input_name(name)][0].to(device) if layer.key_input is not None else None
        with torch.no_grad():
            opened = layer.gate_opens(positives.to(device), key_rows).cpu()
        for index in range(len(usable)):
            per_fact[index] |= {f"{name}:{slot}" for slot in selected[index].tolist()}
            opens[index] = opens[index] or bool(opened[index])
    counts: dict[str, int] = {}
    for slots in per_fact:
        for slot in slots:
            counts[slot] = counts.get(slot, 0) + 1
    rows = []
    for index, (entry, _) in enumerate(usable):
        own = sum(1 for slot in per_fact[index] if counts[slot] == 1)
        rows.append(TaughtFactRow(entry.subject, entry.relation, entry.answer, entry.round, entry.taught_at,
                                  len(per_fact[index]), own, opens[index]))  # fmt: skip
    return rows


__all__ = [
    "Forgotten",
    "GateFits",
    "GateTraining",
    "MemoryForgetResults",
    "TaughtFactRow",
    "TaughtFacts",
    "check_taught_list",
    "fact_templates",
    "first_position_centres",
    "fit_memory_gates",
    "forget_facts",
    "forget_saved_model",
    "gate_texts",
    "gated_memories",
    "greedy_tokens",
    "key_input_name",
    "memories_closed",
    "memory_inputs",
    "neighbour_facts",
    "same_subject_anchors",
    "slots_read",
    "subject_relations",
    "taught_fact_rows",
    "training_contexts",
]
