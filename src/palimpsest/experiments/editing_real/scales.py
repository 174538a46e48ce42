"""The real editing study's settings: the fact sets, the editors as published, the scales."""

from __future__ import annotations

from dataclasses import dataclass

KEPT = "A_F\\S"


KNOWLEDGE_SETS = (
    "country-capital", "country-language", "country-currency", "country-continent",
    "element-symbol", "atomic-number",
)  # fmt: skip


#: EasyEdit's fine-tuning baselines on Llama (FT-L / FT-M): one MLP down-projection at block 21
#: of 32 (relative depth 0.7), 25 steps of Adam at lr 5e-4, no bound.
EASYEDIT = {
    "layers": "0.7", "modules": ["ffn-out"], "norm": None, "learning_rate": 5e-4, "steps": 25,
    "context_passages": 0,
}  # fmt: skip


#: Anchors printed beside the table (EasyEdit / KnowEdit, Llama-2-7b-chat, ZsRE; PAPERS.md).
ANCHORS = (
    ("FT-L (EasyEdit, Llama-2-7b-chat, ZsRE)", 53.9, 73.4),
    ("FT-M (EasyEdit, Llama-2-7b-chat, ZsRE)", 99.98, 89.8),
    ("FT+L (ROME paper, GPT-2 XL, CounterFact)", 99.1, 70.3),
)


@dataclass(frozen=True)
class RealEditingScale:
    """Sizes of one run of the real-model study."""

    #: A built-in name, folder or hub id; ``None`` builds a random SmolLM2-shaped model (smoke).
    model: str | None = "smollm2-135m"
    knowledge_sets: tuple[str, ...] = KNOWLEDGE_SETS
    edit_sets: tuple[str, ...] = ("country-capital", "country-language", "element-symbol")
    #: Edit only facts the model recalls (off for a random model, which knows none).
    known_only: bool = True
    sizes: tuple[int, ...] = (1, 16, 64)
    sequential: tuple[int, ...] = (64,)
    #: Single edits per seed at size 1 (each made and undone alone).
    singles: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    kept: int = 40
    support: int = 16
    #: The per-depth sweep: every ``depth_every``-th block (and the last), at these sizes.
    depth_every: int = 3
    depth_sizes: tuple[int, ...] = (1,)
    #: Seeds whose draws the per-depth sweep runs on (None: every seed).
    depth_seeds: tuple[int, ...] | None = None
    linf_deltas: tuple[float, ...] = (0.05, 0.2)
    l2_deltas: tuple[float, ...] = (0.05,)
    #: Methods at the larger sizes and one after another (the sweep is too costly there).
    large_methods: tuple[str, ...] = ("ft", "ft+support", "ft-l", "ft-m", "default")
    sequential_methods: tuple[str, ...] = ("ft-m", "default")
    #: Seeds of the sequential runs (None: every seed); 64 edits in a row are the costliest unit.
    sequential_seeds: tuple[int, ...] | None = None
    steps: int = 25
    learning_rate: float = 5e-4
    perplexity_blocks: int = 8
    block_size: int = 128
    generation_tokens: int = 8


SCALES: dict[str, RealEditingScale] = {
    "smoke": RealEditingScale(
        model=None,
        edit_sets=("country-capital",),
        known_only=False,
        sizes=(1, 4),
        sequential=(3,),
        singles=1,
        seeds=(0,),
        kept=6,
        support=2,
        depth_every=2,
        depth_sizes=(1,),
        linf_deltas=(0.2,),
        l2_deltas=(0.05,),
        large_methods=("ft", "ft-m", "default"),
        sequential_methods=("default",),
        steps=3,
        perplexity_blocks=2,
        block_size=32,
        generation_tokens=3,
    ),
    # Every method at 1, 16 and 64 edits on three seeds; the per-depth sweep (single edits) on
    # the first seed's draws and 64 edits in a row on one seed (its cost: README, "On a real model").
    "real": RealEditingScale(depth_seeds=(0,), sequential_seeds=(0,)),
}


#: The scale names of the editing study that edit the built-in model (``palimpsest experiment
#: editing --scale real``), and which settings each runs.
REAL_SCALE_NAMES = {"real": "real", "real-smoke": "smoke"}
