"""grow: product-key memory layers for language models (Lample et al. 2019; Kim & Jung 2020).

:class:`ProductKeyMemory` is the layer (multi-head product keys, exact top-k, softmax
weights in fp32, values read through an ``EmbeddingBag``); :func:`add_product_key_memory`
puts memories into a HF model by config, beside its FFN or in its place, and
:func:`save_memory` / :func:`load_memory` move only what was added;
:func:`memory_usage` and :class:`MemoryUsageCallback` measure how the slots are used, and
:func:`memory_param_groups` gives the values their own learning rate;
:func:`learn_facts` writes new facts into a memory alone (optionally only the slots a fact
selects specifically: sparse memory fine-tuning); a memory with ``PKMConfig(gate_hidden=...)``
has a :class:`MemoryGate` that keeps its read at exactly zero except for inputs like those
:func:`fit_gate` fitted it to; :func:`learn_facts` fits such a gate to every fact the memory
holds (:mod:`palimpsest.memory.gated`) and :func:`forget_facts` takes facts out again.
"""

from palimpsest.memory.gate import GateFit, MemoryGate, fit_gate
from palimpsest.memory.gated import GateTraining, forget_facts
from palimpsest.memory.inject import (
    MemoryHandle,
    PKMConfig,
    add_product_key_memory,
    load_memory,
    load_merged,
    memories,
    memory_handle,
    memory_state_dict,
    save_memory,
    save_merged,
    transformer_blocks,
)
from palimpsest.memory.layer import MaskedBatchNorm, ProductKeyMemory, Selection
from palimpsest.memory.learning import LearnedFacts, MemoryLearning, learn_facts
from palimpsest.memory.taught import TaughtFact, TaughtFacts
from palimpsest.memory.usage import (
    MemoryUsageCallback,
    distribution_metrics,
    memory_param_groups,
    memory_usage,
)

__all__ = [
    "GateFit",
    "GateTraining",
    "LearnedFacts",
    "MaskedBatchNorm",
    "MemoryGate",
    "MemoryHandle",
    "MemoryLearning",
    "MemoryUsageCallback",
    "PKMConfig",
    "ProductKeyMemory",
    "Selection",
    "TaughtFact",
    "TaughtFacts",
    "add_product_key_memory",
    "distribution_metrics",
    "fit_gate",
    "forget_facts",
    "learn_facts",
    "load_memory",
    "load_merged",
    "memories",
    "memory_handle",
    "memory_param_groups",
    "memory_state_dict",
    "memory_usage",
    "save_memory",
    "save_merged",
    "transformer_blocks",
]
