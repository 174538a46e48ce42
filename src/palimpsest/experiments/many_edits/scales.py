"""The many-edits study's settings: the methods as each is configured, the scales from smoke to real."""

from __future__ import annotations

from dataclasses import dataclass, field

from palimpsest.editing.benchmark import (
    BENCHMARK_SETS,
    BenchmarkConfig,
)
from palimpsest.errors import ConfigError
from palimpsest.experiments.common import check_size_seeds, seeds_of
from palimpsest.experiments.many_edits.gated import GatedMemoryMethod
from palimpsest.memory.gated import GateTraining
from palimpsest.memory.inject import PKMConfig
from palimpsest.memory.learning import MemoryLearning

#: FT-M as EasyEdit runs it (one MLP down-projection at relative depth 0.7, 25 steps, lr 5e-4,
#: no bound, loss on the object only).
FT_M = {
    "layers": "0.7", "modules": ["ffn-out"], "norm": None, "learning_rate": 5e-4, "steps": 25,
    "objective": "ft-m", "context_passages": 0,
}  # fmt: skip


#: The constrained editor with the batch editors' preserved-knowledge constraint instead of its
#: norm ball (each change kept in the null space of ordinary text's keys and of earlier edits').
CONSTRAINED_PRESERVE = {"norm": None, "preserve": "text"}


#: MEMIT and AlphaEdit as their papers set them, on the batch editor: a request's keys averaged
#: over its contexts (one least-squares column per request), no norm control of the targets;
#: MEMIT's least squares knows nothing of earlier batches, AlphaEdit keeps their keys.
AS_PUBLISHED = {
    "memit": {"key_contexts": "mean", "target_norm_limit": None, "accumulate_keys": False},
    "alphaedit": {"key_contexts": "mean", "target_norm_limit": None, "accumulate_keys": True},
}


METHODS = ("ft-m", "constrained", "constrained-preserve", "memit", "alphaedit", "palimpsest", "gated-memory")


#: The fact tables of the demo's benchmark: small enough to probe every fact in seconds.
DEMO_SETS = ("country-capital", "country-language", "element-symbol")


@dataclass(frozen=True)
class ManyEditsScale:
    """Sizes of one run of the study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    #: Fact tables the benchmark is drawn from (None: every built-in one; building probes each fact).
    benchmark_sets: tuple[str, ...] | None = None
    at_once: tuple[int, ...] = (1, 10, 100, 1000)
    #: (edits, batch) of each sequence.
    in_sequence: tuple[tuple[int, int], ...] = ((1000, 1), (1000, 10))
    methods: tuple[str, ...] = METHODS
    #: Methods of the sequences (None: ``methods``).
    sequence_methods: tuple[str, ...] | None = None
    #: ``(method, sizes)``: that method edits only draws of those numbers of edits (a method not
    #: named edits every draw). The fine-tuning editors' cost grows with the batch while they fail
    #: past a handful (``results/editing-real/``), so a short run can show each where it makes its
    #: point and spend its time on the batch editor.
    method_sizes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: ``(method, batches)``: in sequence, that method edits only the sequences made in batches of
    #: those sizes (a method not named edits every sequence). A sequence of one edit at a time costs
    #: a target search per request, so a run can give it to the method it is measured for.
    method_batches: tuple[tuple[str, tuple[int, ...]], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    #: ``(edits, seeds)``: draws of that many edits (at once and in sequence) run on those seeds
    #: only (a size not named runs on every seed): a large draw costs far more than a small one, so a
    #: run can spread the small sizes over seeds and keep the large ones to the first.
    size_seeds: tuple[tuple[int, tuple[int, ...]], ...] = ()
    statistics_tokens: int = 100_000
    #: Blocks the batch editors write (None: their default, chosen on SmolLM2).
    batch_layers: tuple[int, ...] | None = None
    #: AlphaEdit's null-space threshold (None: its default; a random model's keys fill every direction).
    nullspace_threshold: float | None = None
    perplexity_blocks: int = 16
    block_size: int = 128
    generation_tokens: int = 8
    #: The gated memory's memory and learning settings (method ``gated-memory``).
    gated_memory: GatedMemoryMethod = field(default_factory=GatedMemoryMethod)

    def __post_init__(self) -> None:
        # checked here, so a wrong name stops the run before a model is loaded or anything written
        unknown = [name for name in self.benchmark_sets or () if name not in BENCHMARK_SETS]
        if unknown:
            raise ConfigError(
                f"benchmark_sets: unknown fact table(s) {', '.join(unknown)} "
                f"(known: {', '.join(BENCHMARK_SETS)})"
            )
        named = [*self.methods, *(self.sequence_methods or ()), *(m for m, _ in self.method_sizes),
                 *(m for m, _ in self.method_batches)]  # fmt: skip
        unknown = [name for name in named if name not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
        drawn = {*self.at_once, *(edits for edits, _ in self.in_sequence)}
        check_size_seeds(self.size_seeds, drawn, self.seeds, "edits")
        for method, sizes in self.method_sizes:
            if not set(sizes) & drawn:
                raise ConfigError(
                    f"method_sizes: {method} would edit no draw (sizes {list(sizes)}, drawn {sorted(drawn)})"
                )
        batches = {batch for _, batch in self.in_sequence}
        for method, sizes in self.method_batches:
            if not set(sizes) & batches:
                raise ConfigError(
                    f"method_batches: {method} would edit no sequence (batches {list(sizes)}, "
                    f"sequences in batches of {sorted(batches)})"
                )

    def seeds_of(self, edits: int) -> tuple[int, ...]:
        """The seeds a draw of ``edits`` requests runs on (see ``size_seeds``)."""
        return seeds_of(self.size_seeds, edits, self.seeds)

    def runs(self, method: str, edits: int, sequence_batch: int | None = None) -> bool:
        """Whether ``method`` edits a draw of ``edits`` requests (see ``method_sizes``) at once
        (``sequence_batch`` None) or in a sequence of batches of ``sequence_batch`` (see
        ``method_batches``)."""
        if edits not in dict(self.method_sizes).get(method, (edits,)):
            return False
        batches = dict(self.method_batches).get(method)
        return sequence_batch is None or batches is None or sequence_batch in batches


SCALES: dict[str, ManyEditsScale] = {
    "smoke": ManyEditsScale(
        model=None, benchmark=BenchmarkConfig(size=12, neighbours=2, min_city_population=5_000_000),
        at_once=(1, 4), in_sequence=((4, 2),), seeds=(0,), statistics_tokens=2_000, batch_layers=(1, 2),
        nullspace_threshold=0.5,
        sequence_methods=tuple(m for m in METHODS if m != "gated-memory"),  # its rounds: tests of memory
        perplexity_blocks=2, block_size=32, generation_tokens=3,
        gated_memory=GatedMemoryMethod(
            PKMConfig(
                layers=[0.5], n_keys=8, heads=2, k=4, k_dim=16, zero_values=True, gate_hidden=16,
                gate_keys=256,
            ),
            MemoryLearning(
                paraphrases=True,
                gate=GateTraining(passages=1, neighbours=2, background_tokens=256, steps=100, batch_size=512),
            ),
        ),
    ),
    # Every method up to 100 edits, one seed (its cost on 2 cores: README, "The many-edits study").
    "real-quick": ManyEditsScale(at_once=(1, 10, 100), in_sequence=((100, 10),), seeds=(0,)),
    "real": ManyEditsScale(),
    # The demo's part: one edit and a batch at once, the batch again in a sequence, on fact tables
    # that are quick to probe (city-country's 4,706 facts are not); a few minutes on 2 cores.
    "demo": ManyEditsScale(
        benchmark=BenchmarkConfig(size=64), benchmark_sets=DEMO_SETS, at_once=(1, 10), in_sequence=((10, 5),),
        methods=("constrained", "ft-m", "palimpsest"), sequence_methods=("palimpsest",),
        method_sizes=(("constrained", (1,)), ("ft-m", (10,))), seeds=(0,), statistics_tokens=10_000,
        perplexity_blocks=4,
    ),
    # The demo's part on a random SmolLM2-shaped model, for tests.
    "demo-smoke": ManyEditsScale(
        model=None, benchmark=BenchmarkConfig(size=8, neighbours=2), benchmark_sets=DEMO_SETS,
        at_once=(1, 4), in_sequence=((4, 2),), methods=("constrained", "palimpsest"),
        sequence_methods=("palimpsest",), method_sizes=(("constrained", (1,)),), seeds=(0,),
        statistics_tokens=2_000, batch_layers=(1, 2),
        nullspace_threshold=0.5, perplexity_blocks=2, block_size=32, generation_tokens=3,
    ),
}  # fmt: skip
