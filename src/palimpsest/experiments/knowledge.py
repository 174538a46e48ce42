"""New knowledge in a memory: grow meets rewrite on a real model (``palimpsest experiment knowledge``).

Lin et al. 2025 ("Continual learning via sparse memory finetuning") taught a pretrained model
new facts by updating only the memory slots the facts select far more than background text
does, and lost 11% of NaturalQuestions F1 doing it, against 89% for full fine-tuning and 71%
for LoRA on the same facts. Zhu et al. 2020 found their memory-augmented model the easiest to
modify locally. This study asks whether that holds at our scale, on the built-in SmolLM2-135M:

1. *What it knows*: exact-match recall of the built-in country and element relations and of
   the cities of ``city_facts`` (city -> country) through each fact's first template.
2. *What it is taught*, per N and seed: ``counterfactual_share`` of the N facts are
   counterfactual edits of facts it recalls (another object of the same relation), the rest
   true city -> country facts it gets wrong (checked before training). ``kept`` other facts
   it recalls are never trained on; they measure forgetting, with wiki-en perplexity.
3. *Arms*, each from the same pretrained weights and for the same number of optimizer steps
   on the same examples (the fact's first template, loss on the answer's tokens only):
   full fine-tuning; LoRA through ``peft`` on every linear layer of the blocks; the
   constrained editor (:class:`~palimpsest.editing.ConstrainedFinetune`, its defaults; its
   steps see every fact and it stops when all have taken); a residual memory with zero
   values added at ``memory.layers`` and only its values trained; and sparse memory
   fine-tuning (only the top-t slots per step by TF-IDF against wiki-en).
4. *Measured*, before and after: recall of the taught facts (first template, the held-out
   paraphrase, and greedy generation naming the answer), recall of the kept facts (and their
   greedy continuations), wiki-en perplexity; the cost (parameters trained or changed,
   seconds, peak resident memory above the start); for memories, slots changed and how many
   of those wiki text reads.

Every (N, seed, arm) unit is stored as it finishes; a re-run resumes. The ``smoke`` scale
runs the same code on a random model of SmolLM2's structure (it knows nothing: every
probeable fact counts as known, the numbers mean nothing, the plumbing is tested).
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data.facts import Fact, builtin_facts, city_facts
from palimpsest.editing.config import EditConfig
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.metrics import greedy_continuations
from palimpsest.editing.requests import EditRequest, counterfactual_requests
from palimpsest.errors import ConfigError, DataError
from palimpsest.experiments.common import (
    mean_std,
    real_or_random_model,
    wiki_perplexity_set,
)
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.memory.inject import PKMConfig, add_product_key_memory, memories
from palimpsest.memory.learning import (
    MemoryLearning,
    Trainable,
    fact_examples,
    learn_facts,
    slot_document_frequency,
)
from palimpsest.memory.usage import validation_batches
from palimpsest.models import count_parameters, load_pretrained
from palimpsest.plotting import plot_points
from palimpsest.recall import build_probe, fact_recall
from palimpsest.report import Figure, Section, Table, pm
from palimpsest.results import Results
from palimpsest.storage import machine_info, resumable
from palimpsest.training import TrainingConfig, evaluate_lm, train

logger = logging.getLogger(__name__)

#: Relations whose recalled facts are edited (counterfactuals) or kept.
KNOWN_SETS = (
    "country-capital", "country-language", "country-continent", "element-symbol", "atomic-number",
)  # fmt: skip
#: Lin et al. 2025 (Table/Fig. 1, NaturalQuestions F1 lost after learning the same new facts).
ANCHORS = (("sparse memory fine-tuning", 11.0), ("LoRA", 71.0), ("full fine-tuning", 89.0))

Method = Literal["full", "lora", "editor", "memory"]


@dataclass(frozen=True)
class Arm:
    """One way of teaching the facts."""

    name: str
    method: Method
    #: The optimizer's learning rate (the editor: ``None`` keeps its own default).
    learning_rate: float | None = None
    #: LoRA's rank (its alpha is twice the rank).
    lora_rank: int | None = None
    #: Memory arms: what trains, and sparse fine-tuning's slots per step (None: every slot read).
    trainable: Trainable = "values"
    sparse_top_t: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora", "editor", "memory"):
            raise ConfigError(
                f"arm {self.name}: method must be full, lora, editor or memory, got {self.method!r}"
            )
        if self.method == "lora" and (self.lora_rank is None or self.lora_rank < 1):
            raise ConfigError(f"arm {self.name}: a LoRA arm needs a positive lora_rank")
        if self.method != "editor" and self.learning_rate is None:
            raise ConfigError(f"arm {self.name}: set its learning_rate")
        if self.learning_rate is not None and not (
            math.isfinite(self.learning_rate) and self.learning_rate > 0
        ):
            raise ConfigError(f"arm {self.name}: learning_rate must be a positive number")
        if self.sparse_top_t is not None and (self.method != "memory" or self.sparse_top_t < 1):
            raise ConfigError(f"arm {self.name}: sparse_top_t is a positive slot count of a memory arm")


def _real_arms() -> tuple[Arm, ...]:
    """The arms, each at the learning rate chosen by measuring on SmolLM2-135M (the figures: README,
    "The knowledge study")."""
    return (
        Arm("full fine-tuning", "full", learning_rate=1e-5),
        Arm("LoRA r=4", "lora", learning_rate=1e-4, lora_rank=4),
        Arm("LoRA r=32", "lora", learning_rate=1e-4, lora_rank=32),
        Arm("editor", "editor"),
        Arm("memory values", "memory", learning_rate=1e-2),
        Arm("sparse memory t=1000", "memory", learning_rate=1e-1, sparse_top_t=1000),
        Arm("sparse memory t=250", "memory", learning_rate=1e-1, sparse_top_t=250),
    )


def _memory_for_real() -> PKMConfig:
    """A 16,384-slot residual memory in the middle block, starting at zero (outputs unchanged)."""
    return PKMConfig(
        layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True, sparse_updates=False
    )


@dataclass(frozen=True)
class KnowledgeScale:
    """Sizes of one run of the study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    sizes: tuple[int, ...] = (16, 128, 512)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[Arm, ...] = field(default_factory=_real_arms)
    #: Share of the N taught facts that are counterfactual edits of recalled facts (the rest:
    #: true city -> country facts the model gets wrong).
    counterfactual_share: float = 0.25
    known_sets: tuple[str, ...] = KNOWN_SETS
    #: The most populous cities checked for what the model knows.
    cities: int = 3000
    #: Recalled facts never trained on, measured before and after.
    kept: int = 64
    #: Count facts as known only if recalled (off for a random model, which knows none).
    known_only: bool = True
    #: Optimizer steps of every arm: at least ``min_steps``, and ``epochs`` passes over the facts.
    min_steps: int = 100
    epochs: int = 6
    batch_size: int = 16
    memory: PKMConfig = field(default_factory=_memory_for_real)
    #: The editor arm's settings (steps are the study's).
    editor: EditConfig = field(default_factory=EditConfig)
    perplexity_blocks: int = 16
    block_size: int = 128
    background_blocks: int = 64
    #: From this N on, the editor runs on the first seed only: each of its steps sees every fact,
    #: so it costs N / batch_size times a step of the other arms (None: every seed).
    editor_one_seed_from: int | None = 512
    generation_tokens: int = 6

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError("sizes: name at least one positive number of facts")
        if not self.arms:
            raise ConfigError("arms: name at least one")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError("arms: every arm needs its own name")
        if not 0.0 <= self.counterfactual_share <= 1.0:
            raise ConfigError(f"counterfactual_share must be in [0, 1], got {self.counterfactual_share}")
        for name in ("cities", "kept", "min_steps", "epochs", "batch_size", "perplexity_blocks", "block_size",
                     "background_blocks", "generation_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def steps(self, size: int) -> int:
        return max(self.min_steps, math.ceil(self.epochs * size / self.batch_size))


def _smoke_arms() -> tuple[Arm, ...]:
    return (
        Arm("full fine-tuning", "full", learning_rate=1e-3),
        Arm("LoRA r=4", "lora", learning_rate=1e-2, lora_rank=4),
        Arm("editor", "editor"),
        Arm("memory values", "memory", learning_rate=1e-1),
        Arm("sparse memory t=8", "memory", learning_rate=1e-1, sparse_top_t=8),
    )


SCALES: dict[str, KnowledgeScale] = {
    "smoke": KnowledgeScale(
        model=None,
        sizes=(4,),
        seeds=(0,),
        arms=_smoke_arms(),
        counterfactual_share=0.5,
        cities=300,
        kept=4,
        known_only=False,
        min_steps=3,
        batch_size=4,
        memory=PKMConfig(
            layers=[0.5], n_keys=16, heads=2, k=4, k_dim=16, zero_values=True, sparse_updates=False
        ),
        perplexity_blocks=2,
        block_size=32,
        background_blocks=4,
        generation_tokens=3,
    ),
    # The demo's part: 16 facts, one seed, full fine-tuning beside the two memory arms.
    "demo": KnowledgeScale(
        sizes=(16,),
        seeds=(0,),
        arms=tuple(a for a in _real_arms() if a.method in ("full", "memory"))[:3],
        cities=1000,
        kept=32,
        perplexity_blocks=8,
    ),
    "real": KnowledgeScale(),
}


# --------------------------------------------------------------------------- what it knows


@dataclass
class Known:
    """How many facts of one relation the model recalls before any training."""

    facts: int
    recalled: int
    recall: float


@dataclass
class Draw:
    """The taught facts of one (N, seed): each fact with the object taught, and the kept facts."""

    taught: list[Fact]
    #: The object the model held before (counterfactuals) or ``None`` (facts it got wrong).
    previous: list[str | None]
    kept: list[Fact]

    @property
    def counterfactuals(self) -> int:
        return sum(p is not None for p in self.previous)


def survey(
    model, tokenizer, scale: KnowledgeScale, *, stored: str | Path | None = None
) -> tuple[dict[str, Known], list[Fact], list[Fact]]:
    """Per relation, what the model recalls; the recalled facts, and city facts it gets wrong.

    Only facts whose answer, through the first template and the held-out paraphrase, the
    tokenizer keeps apart from the prompt take part (the others cannot be probed). With
    ``stored`` (a file), the recall of every fact is kept there, so a resumed study does not
    probe thousands of facts again.
    """
    sets = {name: builtin_facts(name) for name in scale.known_sets}
    sets["city-country"] = city_facts(scale.cities)
    probeable = {name: [f for f in facts if _probeable(tokenizer, f)] for name, facts in sets.items()}

    def recall() -> dict[str, list[bool]]:
        return {
            name: fact_recall(model, tokenizer, facts).recalled if facts else []
            for name, facts in probeable.items()
        }

    key = {"model": scale.model, "known_sets": scale.known_sets, "cities": scale.cities}
    hits_by_set = resumable(stored, key, recall) if stored is not None else recall()
    known: dict[str, Known] = {}
    recalled: list[Fact] = []
    wrong: list[Fact] = []
    for name, facts in probeable.items():
        hits = hits_by_set[name]
        known[name] = Known(facts=len(sets[name]), recalled=sum(hits), recall=sum(hits) / max(len(facts), 1))
        if not scale.known_only:
            hits = [name != "city-country"] * len(facts)
        recalled += [f for f, hit in zip(facts, hits, strict=True) if hit]
        if name == "city-country":
            wrong += [f for f, hit in zip(facts, hits, strict=True) if not hit]
    if not scale.known_only:  # a random model: half the cities stand in for known facts
        recalled += wrong[1::2]
        wrong = wrong[0::2]
    return known, recalled, wrong


def _probeable(tokenizer, fact: Fact) -> bool:
    templates = [0] + ([t] if (t := fact.held_out_template()) is not None else [])
    return all(build_probe(tokenizer, fact, template=t, causal=True) is not None for t in templates)


def draw(recalled: list[Fact], wrong: list[Fact], size: int, seed: int, scale: KnowledgeScale) -> Draw:
    """N facts to teach and ``kept`` recalled facts to keep, disjoint and reproducible."""
    count = round(size * scale.counterfactual_share)
    editable = len(recalled) - scale.kept
    if count > editable or size - count > len(wrong):
        raise DataError(
            f"{size} facts at a counterfactual share of {scale.counterfactual_share:g} need {count} recalled "
            f"facts beside {scale.kept} kept ones and {size - count} unknown cities; the model recalls "
            f"{len(recalled)} and gets {len(wrong)} cities wrong"
        )
    rng = random.Random(seed)
    pool = list(recalled)
    rng.shuffle(pool)
    kept, editable_pool = pool[: scale.kept], pool[scale.kept :]
    requests = counterfactual_requests(editable_pool, count, seed=seed) if count else []
    unknown = rng.sample(wrong, size - count)
    taught = [r.new_fact for r in requests] + unknown
    previous: list[str | None] = [r.fact.object for r in requests] + [None] * len(unknown)
    return Draw(taught=taught, previous=previous, kept=kept)


# --------------------------------------------------------------------------- measuring


def measure(model, tokenizer, chosen: Draw, perplexity_set, scale: KnowledgeScale) -> dict[str, float]:
    """Learning, forgetting and fluency of the model as it is now."""
    taught = chosen.taught
    paraphrased = [(f, f.held_out_template()) for f in taught]
    paraphrased = [(f, t) for f, t in paraphrased if t is not None]
    paraphrase_hits: list[bool] = []
    for template in sorted({t for _, t in paraphrased}):
        group = [f for f, t in paraphrased if t == template]
        paraphrase_hits += fact_recall(model, tokenizer, group, template=template).recalled
    prompts = [f.prompt(0) for f in taught] + [f.prompt(0) for f in chosen.kept]
    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens=scale.generation_tokens)
    written, kept_written = texts[: len(taught)], texts[len(taught) :]
    return {
        "learned": fact_recall(model, tokenizer, taught).accuracy,
        "paraphrase": _share(paraphrase_hits),
        "generation": _share([f.object in text for f, text in zip(taught, written, strict=True)]),
        "kept": fact_recall(model, tokenizer, chosen.kept).accuracy,
        "kept_generation": _share(
            [f.object in text for f, text in zip(chosen.kept, kept_written, strict=True)]
        ),
        "perplexity": math.exp(evaluate_lm(model, perplexity_set)["loss"]),
    }


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


class PeakMemory:
    """Peak resident memory while inside the block, above its level at the start (MiB).

    On CUDA it is the allocator's own peak; on CPU the process's resident set, sampled every
    20 ms from ``/proc`` (``None`` where there is no ``/proc``, e.g. macOS).
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._highest = 0

    @staticmethod
    def _resident() -> int | None:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._highest = max(self._highest, self._resident() or 0)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        resident = self._resident()
        if resident is not None:
            self._start = self._highest = resident
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if torch.cuda.is_available():
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._highest = max(self._highest, self._resident() or 0)
            self.peak_mib = (self._highest - self._start) / 2**20


# --------------------------------------------------------------------------- the arms


@dataclass
class ArmRun:
    """One arm on one draw: every measure before and after, and what it cost."""

    arm: str
    method: str
    size: int
    seed: int
    counterfactuals: int
    after: dict[str, float]
    steps: int
    seconds: float
    peak_mib: float | None
    #: Parameters the optimizer trained (LoRA: the adapters; memory: its trained tensors).
    trained_parameters: int
    #: Parameters whose value changed (memory: rows of changed slots times their width).
    changed_parameters: int
    #: Memory arms: slots whose value changed, and how many of them wiki-en text reads.
    slots_changed: int | None = None
    slots_changed_read_by_wiki: int | None = None
    slots_used_by_wiki: float | None = None


def _training(scale: KnowledgeScale, arm: Arm, size: int, seed: int) -> TrainingConfig:
    return TrainingConfig(
        steps=scale.steps(size), batch_size=scale.batch_size, learning_rate=arm.learning_rate or 1e-3,
        schedule="constant", warmup_ratio=0.0, weight_decay=0.0, eval_every=None, save_every=None,
        log_every=max(scale.steps(size) // 10, 1), seed=seed,
    )  # fmt: skip


def run_arm(
    model,
    tokenizer,
    arm: Arm,
    chosen: Draw,
    perplexity_set,
    scale: KnowledgeScale,
    work: Path,
    *,
    size: int,
    seed: int,
    callbacks: Iterable[TrainerCallback] = (),
) -> ArmRun:
    """Teach ``chosen`` to ``model`` (fresh pretrained weights, changed in place) the arm's way.

    Full fine-tuning and LoRA train on :func:`~palimpsest.memory.learning.fact_examples`, the
    examples :func:`~palimpsest.memory.learning.learn_facts` builds for the memory arms."""
    training = _training(scale, arm, size, seed)
    memory_facts: dict[str, Any] = {}
    with PeakMemory() as peak:
        started = time.perf_counter()
        if arm.method == "full":
            trained = count_parameters(model)
            examples = fact_examples(tokenizer, chosen.taught, causal=True)
            result = train(model, tokenizer, examples, training, work, objective="clm", callbacks=callbacks)
            steps, measured = result.steps, model
            changed = trained
        elif arm.method == "lora":
            examples = fact_examples(tokenizer, chosen.taught, causal=True)
            measured, trained, steps = _train_lora(
                model, tokenizer, examples, training, arm, work, callbacks, seed
            )
            changed = trained
        elif arm.method == "editor":
            editor = ConstrainedFinetune(model, tokenizer, config=scale.editor, steps=training.steps)
            requests = [
                EditRequest(
                    Fact(f.subject, f.relation, previous if previous is not None else "(unknown)"), f.object
                )
                for f, previous in zip(chosen.taught, chosen.previous, strict=True)
            ]
            # N=512 takes hours on a CPU: its progress outlives a stopped run (removed when done)
            progress = work.with_name(f"{work.name}.editor-progress.safetensors")
            steps = editor.apply(requests, measure=False, progress=progress).steps
            trained, measured = editor.edited_parameters, model
            changed = sum(int((p != editor.original[n]).sum()) for n, p in editor.parameters.items())
        else:
            add_product_key_memory(model, replace(scale.memory, seed=seed))
            settings = MemoryLearning(
                trainable=arm.trainable, sparse_top_t=arm.sparse_top_t, block_size=scale.block_size,
                background_blocks=scale.background_blocks, training=training,
            )  # fmt: skip
            learned = learn_facts(model, tokenizer, chosen.taught, settings, work, callbacks=callbacks)
            steps, trained, measured = learned.steps, _count(learned.trained, model), model
            memory_facts = _memory_changes(model, tokenizer, scale)
            changed = memory_facts.pop("changed_parameters")
        seconds = time.perf_counter() - started
    after = measure(measured, tokenizer, chosen, perplexity_set, scale)
    logger.info(
        "%s, %d facts, seed %d: learned %.2f, kept %.2f, perplexity %.2f (%.0f s)",
        arm.name, size, seed, after["learned"], after["kept"], after["perplexity"], seconds,
    )  # fmt: skip
    return ArmRun(
        arm=arm.name, method=arm.method, size=size, seed=seed, counterfactuals=chosen.counterfactuals,
        after=after, steps=steps, seconds=seconds, peak_mib=peak.peak_mib, trained_parameters=trained,
        changed_parameters=changed, **memory_facts,
    )  # fmt: skip


def _count(names: Sequence[str], model) -> int:
    parameters = dict(model.named_parameters())
    return sum(parameters[name].numel() for name in names)


def _train_lora(
    model, tokenizer, examples, training: TrainingConfig, arm: Arm, work: Path, callbacks, seed: int
):
    """LoRA through ``peft`` on every linear layer of the blocks (not the head); returns the
    adapted model, its trained parameter count and the steps taken."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # the adapters' initialisation
    config = LoraConfig(
        r=arm.lora_rank, lora_alpha=2 * arm.lora_rank, lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    adapted = get_peft_model(model, config)
    trained = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    result = train(adapted, tokenizer, examples, training, work, objective="clm", callbacks=callbacks)
    return adapted, trained, result.steps


@torch.no_grad()
def _memory_changes(model, tokenizer, scale: KnowledgeScale) -> dict[str, Any]:
    """Slots whose value moved from zero, how many of those wiki text reads, and slot usage."""
    batches = validation_batches(
        tokenizer, "wiki-en", block_size=scale.block_size, max_blocks=scale.background_blocks, batch_size=8
    )
    frequency, _documents = slot_document_frequency(model, batches)
    changed = read = slots = 0
    width = 0
    used = 0.0
    for name, layer in memories(model).items():
        moved = layer.values.weight.ne(0).any(dim=1).cpu()
        changed += int(moved.sum())
        read += int((moved & (frequency[name] > 0)).sum())
        used += float((frequency[name] > 0).sum())
        slots += layer.size
        width = layer.values.weight.shape[1]
    return {
        "changed_parameters": changed * width,
        "slots_changed": changed,
        "slots_changed_read_by_wiki": read,
        "slots_used_by_wiki": used / slots,
    }


# --------------------------------------------------------------------------- the study


@dataclass
class Baseline:
    """The pretrained model on one draw, before any arm: every measure."""

    size: int
    seed: int
    counterfactuals: int
    before: dict[str, float]


def _one_seed_editor(scale: KnowledgeScale, size: int, arm: Arm) -> bool:
    """The editor at an N from ``editor_one_seed_from`` on: it runs on the first seed only."""
    threshold = scale.editor_one_seed_from
    return arm.method == "editor" and threshold is not None and size >= threshold


def arms_to_run(scale: KnowledgeScale, size: int, seed: int) -> list[tuple[int, Arm]]:
    """``(index, arm)`` of the arms that run at this N and seed (``editor_one_seed_from``)."""
    return [
        (index, arm)
        for index, arm in enumerate(scale.arms)
        if not (_one_seed_editor(scale, size, arm) and seed != scale.seeds[0])
    ]


def _unit_key(scale: KnowledgeScale, what: Any) -> Any:
    """What a stored unit depends on: the model, the draws, the measures and ``what``."""
    fields = ("model", "counterfactual_share", "known_sets", "cities", "kept", "known_only",
              "perplexity_blocks", "block_size", "generation_tokens")  # fmt: skip
    return {**{name: getattr(scale, name) for name in fields}, "unit": what}


def run_knowledge_study(
    out: str | Path,
    scale: str | KnowledgeScale | tuple[str, KnowledgeScale] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> KnowledgeResults:
    """Run (or resume: every unit is stored as it finishes) the study into ``out``."""
    return KnowledgeStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class KnowledgeStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: the survey of what the
    model knows, then per (N, seed) draw a baseline unit, then one unit per arm."""

    name = "knowledge"
    title = "knowledge study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, scale = run.out, run.settings
        model, tokenizer = real_or_random_model(scale.model, out)
        model.eval()
        source = scale.model if scale.model is not None else str(out / "random-model")
        known, recalled, wrong = survey(model, tokenizer, scale, stored=out / "units" / "survey.json")
        perplexity_set = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
        draws = {
            (size, seed): draw(recalled, wrong, size, seed, scale)
            for size in scale.sizes
            for seed in scale.seeds
        }
        baselines, runs = [], []
        units: list[tuple[int, int, int, Arm]] = []
        for (size, seed), chosen in draws.items():
            unedited = partial(_baseline, model, tokenizer, chosen, perplexity_set, scale, size, seed)
            key = _unit_key(scale, ["before", size, seed])
            baselines.append((yield Unit(f"units/{size}-s{seed}-before.json", key, unedited, kind=Baseline)))
            units += [(size, seed, index, arm) for index, arm in arms_to_run(scale, size, seed)]
        # At each N, an editor that runs on one seed only (it is the costly arm) goes after every other
        # arm's seeds: a run cut short has the comparison on all seeds first.
        units.sort(key=lambda u: (scale.sizes.index(u[0]), _one_seed_editor(scale, u[0], u[3])))
        for size, seed, index, arm in units:
            name = f"{size}-s{seed}-arm{index}"
            compute = partial(
                _arm_unit, source, tokenizer, arm, draws[(size, seed)], perplexity_set, scale,
                out / "work" / name, size, seed, run.callbacks_for,
            )  # fmt: skip
            settings = [scale.steps(size), scale.batch_size, to_dict(scale.memory), to_dict(scale.editor)]
            key = _unit_key(scale, [to_dict(arm), size, seed, *settings, scale.background_blocks])
            runs.append((yield Unit(f"units/{name}.json", key, compute, kind=ArmRun)))
        return KnowledgeResults(
            scale=run.scale_name, settings=scale, model=scale.model or "random SmolLM2-shaped model",
            known=known, recalled_facts=len(recalled), unknown_cities=len(wrong), baselines=baselines,
            runs=runs, summary=summarise(baselines, runs, scale), machine=machine_info(),
        )  # fmt: skip


def _baseline(
    model, tokenizer, chosen, perplexity_set, scale: KnowledgeScale, size: int, seed: int
) -> Baseline:
    return Baseline(
        size, seed, chosen.counterfactuals, measure(model, tokenizer, chosen, perplexity_set, scale)
    )


def _arm_unit(
    source: str, tokenizer, arm: Arm, chosen, perplexity_set, scale: KnowledgeScale, work: Path,
    size: int, seed: int, callbacks_for: Callable[[str], Iterable[TrainerCallback]],
) -> ArmRun:  # fmt: skip
    """One arm on one draw, from a fresh copy of the model (its progress shown only when it runs)."""
    callbacks = callbacks_for(f"{arm.name}, {size} facts, seed {seed}")
    shutil.rmtree(work, ignore_errors=True)  # a unit killed midway starts again (the editor resumes)
    fresh = load_pretrained(source)
    result = run_arm(
        fresh, tokenizer, arm, chosen, perplexity_set, scale, work, size=size, seed=seed, callbacks=callbacks
    )
    shutil.rmtree(work, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- summary

METRICS = ("learned", "paraphrase", "generation", "kept", "kept_generation", "perplexity")


@dataclass
class KnowledgeRow:
    """One arm at one N: mean ± std over seeds of every measure, its change, and the cost."""

    arm: str
    method: str
    size: int
    seeds: int
    after: dict[str, tuple[float, float]]
    before: dict[str, tuple[float, float]]
    #: kept recall lost (before - after) and perplexity change in percent, per seed then mean ± std.
    kept_lost: tuple[float, float]
    perplexity_change: tuple[float, float]
    steps: tuple[float, float]
    seconds: tuple[float, float]
    #: None where the platform cannot measure it.
    peak_mib: tuple[float, float] | None
    trained_parameters: int
    changed_parameters: tuple[float, float]
    slots_changed: tuple[float, float] | None = None
    slots_changed_read_by_wiki: tuple[float, float] | None = None
    #: Share of all memory slots wiki-en text reads (the background of the TF-IDF ranking).
    slots_used_by_wiki: tuple[float, float] | None = None
    #: Kim & Jung's "outdated" slots with the whole learning run as the window: the share of
    #: all slots whose values the new facts left untouched (still zero).
    slots_outdated: tuple[float, float] | None = None


@dataclass
class KnowledgeSummary:
    rows: list[KnowledgeRow]
    verdict: str


def summarise(
    baselines: Sequence[Baseline], runs: Sequence[ArmRun], scale: KnowledgeScale
) -> KnowledgeSummary:
    before = {(b.size, b.seed): b.before for b in baselines}
    rows = []
    for size in scale.sizes:
        for arm in scale.arms:
            group = [r for r in runs if r.size == size and r.arm == arm.name]
            if not group:
                continue
            firsts = [before[(r.size, r.seed)] for r in group]
            pairs = list(zip(firsts, group, strict=True))
            memory = group[0].slots_changed is not None
            slots = scale.memory.n_keys**2 * len(scale.memory.layers)
            rows.append(
                KnowledgeRow(
                    arm=arm.name, method=arm.method, size=size, seeds=len(group),
                    after={m: mean_std(r.after[m] for r in group) for m in METRICS},
                    before={m: mean_std(b[m] for b in firsts) for m in METRICS},
                    kept_lost=mean_std(b["kept"] - r.after["kept"] for b, r in pairs),
                    perplexity_change=mean_std(
                        100 * (r.after["perplexity"] / b["perplexity"] - 1) for b, r in pairs
                    ),
                    steps=mean_std(r.steps for r in group), seconds=mean_std(r.seconds for r in group),
                    peak_mib=mean_std(r.peak_mib for r in group) if group[0].peak_mib is not None else None,
                    trained_parameters=group[0].trained_parameters,
                    changed_parameters=mean_std(r.changed_parameters for r in group),
                    slots_changed=mean_std(r.slots_changed for r in group) if memory else None,
                    slots_used_by_wiki=mean_std(r.slots_used_by_wiki for r in group) if memory else None,
                    slots_changed_read_by_wiki=(
                        mean_std(r.slots_changed_read_by_wiki for r in group) if memory else None
                    ),
                    slots_outdated=mean_std(1 - r.slots_changed / slots for r in group) if memory else None,
                )
            )  # fmt: skip
    return KnowledgeSummary(rows=rows, verdict=_verdict(rows, scale))


#: Two arms "learned equally" when their taught-fact recall differs by at most this much.
EQUAL_LEARNING = 0.15


def _verdict(rows: list[KnowledgeRow], scale: KnowledgeScale) -> str:
    parts = []
    for size in scale.sizes:
        cell = [r for r in rows if r.size == size]
        if not cell:
            continue
        described = "".join(
            f"\n- {r.arm} learned {100 * r.after['learned'][0]:.0f}% "
            f"(paraphrase {100 * r.after['paraphrase'][0]:.0f}%), "
            f"kept {100 * r.after['kept'][0]:.0f}% (lost {100 * r.kept_lost[0]:+.0f} points), perplexity "
            f"{r.perplexity_change[0]:+.1f}%"
            for r in cell
        )
        parts.append(
            f"N={size} (kept facts recalled before: {100 * cell[0].before['kept'][0]:.0f}%):{described}"
        )
        parts.append(_claim(cell, size))
        parts.append(_specific_slots(cell, size))
    # paragraphs and lists: the report renders them (markdown as is, HTML by ``report._html_text``)
    return "\n\n".join(part for part in parts if part)


def _direction(mine: tuple[float, float], other: tuple[float, float], n_mine: int, n_other: int) -> int:
    """-1 / 0 / +1: ``mine`` is lower / not distinguishable / higher than ``other``, where a
    difference counts only beyond one standard error of the difference of the two means."""
    error = math.sqrt(mine[1] ** 2 / max(n_mine, 1) + other[1] ** 2 / max(n_other, 1))
    difference = mine[0] - other[0]
    if abs(difference) <= error or difference == 0:
        return 0
    return 1 if difference > 0 else -1


def _specific_slots(cell: list[KnowledgeRow], size: int) -> str:
    """Did the memory arms write into slots ordinary text does not read (sparse fine-tuning's premise)?"""
    memory = [r for r in cell if r.slots_changed is not None and r.slots_used_by_wiki is not None]
    if not memory:
        return ""
    described = []
    for r in memory:
        changed, read = r.slots_changed[0], r.slots_changed_read_by_wiki[0]  # type: ignore[index]
        share = read / changed if changed else math.nan
        described.append(
            f"{r.arm}: {changed:,.0f} slots changed, {100 * share:.0f}% of them read by wiki-en text "
            f"(which reads {100 * r.slots_used_by_wiki[0]:.0f}% of all slots)"  # type: ignore[index]
        )
    return (
        f"Slots written at N={size} (the premise: new facts go to slots ordinary text leaves alone):"
        + "".join(f"\n- {line}" for line in described)
    )


def _claim(cell: list[KnowledgeRow], size: int) -> str:
    """'memory-only / sparse updates forget less at equal learning', judged at one N."""
    memory = [r for r in cell if r.method == "memory"]
    others = [r for r in cell if r.method in ("full", "lora")]
    if not memory or not others:
        return f"N={size}: the claim needs a memory arm beside full fine-tuning or LoRA."
    findings = []
    for mine in memory:
        for other in others:
            gap = mine.after["learned"][0] - other.after["learned"][0]
            if abs(gap) > EQUAL_LEARNING:
                findings.append(
                    f"{mine.arm} vs {other.arm}: not comparable "
                    f"(learned {100 * mine.after['learned'][0]:.0f}% vs "
                    f"{100 * other.after['learned'][0]:.0f}%)"
                )
                continue
            lost, other_lost = mine.kept_lost[0], other.kept_lost[0]
            fluency, other_fluency = mine.perplexity_change[0], other.perplexity_change[0]
            facts = _direction(mine.kept_lost, other.kept_lost, mine.seeds, other.seeds)
            text = _direction(mine.perplexity_change, other.perplexity_change, mine.seeds, other.seeds)
            if facts == text == 0:
                outcome = "forgets as much (within the seed spread)"
            elif facts < 0 and text < 0:
                outcome = "forgets less (reproduced)"
            elif facts < 0 and text == 0:
                outcome = "loses fewer kept facts, moves perplexity as much (reproduced on facts only)"
            elif facts == 0 and text < 0:
                outcome = "moves perplexity less, loses as many kept facts (reproduced on general text only)"
            elif facts >= 0 and text >= 0:
                outcome = "forgets more (not reproduced)"
            elif facts > 0:
                outcome = "mixed: loses more kept facts, moves perplexity less"
            else:
                outcome = "mixed: loses fewer kept facts, moves perplexity more"
            lost_words = {-1: "fewer", 0: "as many (within the spread)", 1: "more"}
            moved_words = {-1: "less", 0: "as much (within the spread)", 1: "more"}
            outcome += f" — kept facts lost: {lost_words[facts]}, perplexity moved: {moved_words[text]}"
            if facts < 0 and other_lost > 0:  # how much less, beside the size of the paper's effect
                paper = dict(ANCHORS)
                reference = paper["LoRA" if other.method == "lora" else "full fine-tuning"]
                paper_cut = 100 * (1 - paper["sparse memory fine-tuning"] / reference)
                fewer = 100 * (1 - lost / other_lost)
                outcome += f", {fewer:.0f}% fewer (Lin et al.: {paper_cut:.0f}% less F1 lost)"
            findings.append(
                f"{mine.arm} vs {other.arm} at equal learning: {outcome} (kept lost {100 * lost:+.0f} vs "
                f"{100 * other_lost:+.0f} points, perplexity {fluency:+.1f}% vs {other_fluency:+.1f}%)"
            )
    single = [r.arm for r in [*memory, *others] if r.seeds < 2]
    caveat = (
        f" One seed only for {', '.join(single)}: no spread to judge a difference by, so these directions "
        "are not evidence."
        if single
        else ""
    )
    return f"Claim 'memory-only / sparse updates forget less at equal learning', N={size}.{caveat}" + "".join(
        f"\n- {finding}" for finding in findings
    )


# --------------------------------------------------------------------------- results


@dataclass
class KnowledgeResults(Results):
    """The study's results.json: what the model knew, every unit and the summary."""

    KIND: ClassVar[str] = "knowledge"

    scale: str
    settings: KnowledgeScale
    model: str
    known: dict[str, Known]
    recalled_facts: int
    unknown_cities: int
    baselines: list[Baseline]
    runs: list[ArmRun]
    summary: KnowledgeSummary
    machine: dict[str, Any]

    def headline(self) -> str:
        return self.summary.verdict

    @classmethod
    def report_section(cls, studies: Sequence[KnowledgeResults], plots_dir: Path) -> Section:
        section = Section("Grow meets rewrite: new knowledge in a memory (Lin et al. 2025, Zhu et al. 2020)")
        for study in studies:
            section.blocks += _study_blocks(study, plots_dir)
        return section


def _study_blocks(study: KnowledgeResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings = study.settings
    memory = settings.memory
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model}, nothing trained before. Per N and seed, "
        f"{100 * settings.counterfactual_share:.0f}% of the N taught facts are counterfactual edits of "
        f"facts it recalls, the rest true city -> country facts it gets wrong; {settings.kept} other "
        "recalled facts "
        f"are kept (never trained on). Every arm starts from the pretrained weights and takes the same "
        f"optimizer steps (max({settings.min_steps}, {settings.epochs} epochs) at batch "
        f"{settings.batch_size}; "
        "the editor's steps see every fact and stop when all have taken). Learned = exact match through the "
        "taught template; paraphrase = through the held-out template; generation = the greedy continuation "
        f"({settings.generation_tokens} tokens) names the answer; kept = the kept facts still recalled; "
        "perplexity on held-out wiki-en. Memory arms: a residual memory of "
        f"{memory.n_keys**2:,} slots at depth {memory.layers}, zero values (outputs unchanged). "
        "Slots outdated = the share of slots the new facts left untouched (Kim & Jung's outdated slots, the "
        "whole learning run as the window). "
        f"Mean ± std over {len(settings.seeds)} seed(s)"
        + (
            f" (the editor on the first seed only from N={settings.editor_one_seed_from}: each of its steps "
            "sees every fact)."
            if settings.editor_one_seed_from is not None
            and max(settings.sizes) >= settings.editor_one_seed_from
            else "."
        ),
        Table(
            ["relation", "facts", "recalled", "recall %"],
            [[name, v.facts, v.recalled, f"{100 * v.recall:.0f}"] for name, v in study.known.items()],
        ),
    ]
    headers = [
        "N", "arm", "learned", "paraphrase", "generation", "kept", "kept lost (points)",
        "perplexity change %", "steps", "seconds", "peak MiB", "trained params", "changed params",
        "slots changed (read by wiki)", "slots outdated %", "seeds",
    ]  # fmt: skip
    table = []
    for r in study.summary.rows:
        slots = (
            f"{r.slots_changed[0]:,.0f} ({r.slots_changed_read_by_wiki[0]:,.0f})"
            if r.slots_changed is not None and r.slots_changed_read_by_wiki is not None
            else "-"
        )
        shares = [r.after[m] for m in ("learned", "paraphrase", "generation", "kept")] + [r.kept_lost]
        table.append([
            r.size, r.arm, *(pm(share, scale=100, digits=0) for share in shares),
            pm(r.perplexity_change, digits=1), f"{r.steps[0]:.0f}", f"{r.seconds[0]:.0f}",
            f"{r.peak_mib[0]:.0f}" if r.peak_mib is not None else "-", f"{r.trained_parameters:,}",
            f"{r.changed_parameters[0]:,.0f}", slots,
            pm(r.slots_outdated, scale=100, digits=1) if r.slots_outdated is not None else "-", r.seeds,
        ])  # fmt: skip
    blocks.append(Table(headers, table))
    before = [r for r in study.summary.rows if r.arm == settings.arms[0].name]
    if before:
        blocks.append(
            Table(
                [
                    "N",
                    "learned before",
                    "paraphrase before",
                    "kept before",
                    "kept generation before",
                    "perplexity before",
                ],
                [
                    [
                        r.size,
                        pm(r.before["learned"], scale=100, digits=0),
                        pm(r.before["paraphrase"], scale=100, digits=0),
                        pm(r.before["kept"], scale=100, digits=0),
                        pm(r.before["kept_generation"], scale=100, digits=0),
                        pm(r.before["perplexity"], digits=2),
                    ]
                    for r in before
                ],
            )
        )
    blocks.append(
        Table(
            ["anchor (Lin et al. 2025, not this model)", "NaturalQuestions F1 lost %"],
            [list(anchor) for anchor in ANCHORS],
        )
    )
    blocks.append(study.summary.verdict)
    for size in settings.sizes:
        cell = [r for r in study.summary.rows if r.size == size]
        if not cell:
            continue
        path = plot_points(
            {r.arm: (r.after["kept"][0], r.after["learned"][0]) for r in cell},
            plots_dir / f"knowledge-frontier-{size}.png",
            title=f"{study.model}: {size} new facts — learning vs forgetting",
            xlabel="kept facts still recalled (forgetting: left)", ylabel="taught facts recalled (learning)",
            reference_x=cell[0].before["kept"][0],
            reference_label="kept facts recalled before training",
            spread={r.arm: (r.after["kept"][1], r.after["learned"][1]) for r in cell},
            legend=True,
        )  # fmt: skip
        blocks.append(
            Figure(path, f"N={size}: one point per arm (mean ± std over seeds); dashed: before training")
        )
        path = plot_points(
            {r.arm: (r.perplexity_change[0], r.after["learned"][0]) for r in cell},
            plots_dir / f"knowledge-fluency-{size}.png",
            title=f"{study.model}: {size} new facts — learning vs wiki-en perplexity",
            xlabel="wiki-en perplexity change % (forgetting: right)",
            ylabel="taught facts recalled (learning)", legend=True, shares=False,
            spread={r.arm: (r.perplexity_change[1], r.after["learned"][1]) for r in cell},
        )  # fmt: skip
        blocks.append(Figure(path, f"N={size}: learning against the change of general-text perplexity"))
    return blocks
