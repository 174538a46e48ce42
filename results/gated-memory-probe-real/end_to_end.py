"""A gated memory end to end: N many-edits benchmark facts taught with ``learn_facts`` (as ``memory
learn`` does), then the many-edits study's metrics and wiki-en perplexity.

    python results/gated-memory-probe-real/end_to_end.py 64 anchors '{}'                  # ~12 min here
    python results/gated-memory-probe-real/end_to_end.py 64 no-anchors '{"anchors": 0}'
    python results/gated-memory-probe-real/end_to_end.py 64 codebook '{}' '{"gate_keys": 1024}'

The third argument overrides ``GateTraining`` fields, the fourth ``PKMConfig`` fields. The facts
to keep are neighbours of cases outside the draw (``facts_to_keep``, as the study's gated-memory
method: never a measured prompt); the measured facts are held out of the gate's closed
neighbours as well (``learn_facts(held_out=...)``), so neighbourhood kept counts prompts it never saw.
Writes ``end_to_end-NAME.json`` (and the memory under ``runs/gated-end-to-end/NAME/``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import benchmark_metrics, read_benchmark
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.experiments.many_edits.gated import facts_to_keep, measured_facts
from palimpsest.memory import PKMConfig, add_product_key_memory, save_memory
from palimpsest.memory.gated import GateTraining
from palimpsest.memory.learning import MemoryLearning, learn_facts
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.training import evaluate_lm

HERE = Path(__file__).parent


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    facts_wanted, name = int(sys.argv[1]), sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    memory_options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    model = load_pretrained("smollm2-135m").eval()
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    cases = read_benchmark(HERE.parent / "many-edits-real" / "benchmark.jsonl")
    draw = cases[:facts_wanted]
    keep = facts_to_keep(draw, cases[facts_wanted:])
    perplexity_set = wiki_perplexity_set(tokenizer, 128, 16)
    before = benchmark_metrics(model, tokenizer, draw, generation_tokens=8)
    before["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    memory = PKMConfig(layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True,
                       sparse_updates=False, gate_hidden=256, seed=0, **memory_options)  # fmt: skip
    add_product_key_memory(model, memory)
    settings = MemoryLearning(paraphrases=True, gate=GateTraining(**options))
    work = Path("runs") / "gated-end-to-end" / name
    started = time.time()
    facts, answers = [c.request.fact for c in draw], [c.request.new_object for c in draw]
    learned = learn_facts(model, tokenizer, facts, settings, work / "trainer", answers=answers, keep=keep,
                          held_out=measured_facts(draw))  # fmt: skip
    seconds = time.time() - started
    model.eval()
    save_memory(model, work / "memory")
    after = benchmark_metrics(model, tokenizer, draw, generation_tokens=8)
    after["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    record = {
        "facts": facts_wanted, "gate_training": options, "memory": memory_options, "facts_to_keep": len(keep),
        "before": before,
        "after": after, "seconds": seconds, "steps": learned.steps, "examples": learned.examples,
        "gate_fit": {layer: vars(fit) for layer, fit in learned.gate.layers.items()},
    }  # fmt: skip
    (HERE / f"end_to_end-{name}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
