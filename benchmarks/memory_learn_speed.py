"""Cost of one training step of a gated memory's values on SmolLM2-135M: batches of examples padded
to the whole set's longest (how `memory learn` batched until the collator trimmed them) against
batches trimmed to their own longest (:class:`palimpsest.training.LMCollator` now), in one run.

The examples are what ``memory learn`` trains a gated memory on for N facts: each fact through
its templates but the held-out one, as written and after passages of text, and two same-subject
anchors per fact (``palimpsest.memory.learning.fact_examples`` with the gate's training contexts).
The model is the built-in SmolLM2-135M with the knowledge study's memory (16,384 slots in block 15,
read at every token: a gated memory's upper bound, as its gate is fitted per fact set; only the
values train, as in ``memory learn``). Both arms take the same random batches
(seeded), forward and backward; the arms alternate batch by batch so that a machine shared with
other work slows both alike. Reported: seconds per step of each, the ratio, the tokens each arm
computes per step and the share of them that are padding.

usage: python benchmarks/memory_learn_speed.py [--facts 128] [--steps 20] [--batch 16] [--json F]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for name in ("facts", "steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.json and Path(args.json).exists():
        parser.error(f"--json {args.json} exists; name a new file (this benchmark never overwrites one)")

    import palimpsest as ps
    from palimpsest.data.facts import city_facts
    from palimpsest.experiments.knowledge.scales import SCALES
    from palimpsest.memory import add_product_key_memory
    from palimpsest.memory.gated import GateTraining, training_contexts
    from palimpsest.memory.learning import fact_examples, freeze_all_but_memory
    from palimpsest.training import LMCollator

    model, tokenizer = ps.load("smollm2-135m")
    add_product_key_memory(model, SCALES["real"].memory)
    freeze_all_but_memory(model, "values")
    model.train()
    facts = city_facts(2000)[: args.facts]
    anchors = [tokenizer(f"The language of {fact.subject} is")["input_ids"] + [tokenizer.eos_token_id] * 3
               for fact in facts for _ in range(2)]  # fmt: skip
    rows = list(
        fact_examples(
            tokenizer, facts, causal=True, templates=[0], paraphrases=True,
            contexts=training_contexts(GateTraining()), extra=[(ids, [-100] * len(ids)) for ids in anchors],
        )
    )  # fmt: skip

    def padded(batch: list[dict]) -> dict[str, torch.Tensor]:
        return {
            key: torch.tensor([row[key] for row in batch])
            for key in ("input_ids", "attention_mask", "labels")
        }

    collators = {"padded to the set": padded, "trimmed to the batch": LMCollator()}
    seconds = {name: 0.0 for name in collators}
    tokens = {name: 0 for name in collators}
    real = 0
    rng = random.Random(0)
    for _ in range(args.steps):
        batch = rng.sample(rows, args.batch)
        real += sum(sum(row["attention_mask"]) for row in batch)
        for name, collate in collators.items():
            inputs = collate(batch)
            tokens[name] += inputs["input_ids"].numel()
            began = time.perf_counter()
            model(**inputs).loss.backward()
            seconds[name] += time.perf_counter() - began
            model.zero_grad(set_to_none=True)
    per_step = {name: value / args.steps for name, value in seconds.items()}
    document = {
        "facts": args.facts, "examples": len(rows), "steps": args.steps, "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds_per_step": per_step,
        "tokens_per_step": {name: value / args.steps for name, value in tokens.items()},
        "padding_share": {name: 1 - real / value for name, value in tokens.items()},
        "ratio_trimmed_to_padded": per_step["trimmed to the batch"] / per_step["padded to the set"],
    }  # fmt: skip
    print(json.dumps(document, indent=2))
    if args.json:
        with open(args.json, "x", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
