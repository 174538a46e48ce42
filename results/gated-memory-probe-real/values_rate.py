"""Probe: how fast do a gated memory's values learn? One gate fit, several learning rates.

    python results/gated-memory-probe-real/values_rate.py 32 "1e-1:100,3e-1:100,1:100"   # ~15 min here

N many-edits benchmark facts taught (paraphrases, two passages) into a 16,384-slot gated memory
in the middle block; for each LR:STEPS the values start from zero again (the gate is fitted once
and restored); recall of the new object as written, after text (three validation passages) and
through the held-out paraphrase, and the largest value row's norm.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

import palimpsest.memory.learning as learning
from palimpsest.data import load_tokenizer
from palimpsest.data.facts import Fact
from palimpsest.editing.benchmark import read_benchmark
from palimpsest.memory import PKMConfig, add_product_key_memory, memories
from palimpsest.memory.gated import GateTraining
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import after_text, fact_recall, text_passages
from palimpsest.training import TrainingConfig

HERE = Path(__file__).parent


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    facts_wanted = int(sys.argv[1])
    grid = [(float(lr), int(steps)) for lr, steps in (item.split(":") for item in sys.argv[2].split(","))]
    model = load_pretrained("smollm2-135m").eval()
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    cases = read_benchmark(HERE.parent / "many-edits-real" / "benchmark.jsonl")[:facts_wanted]
    facts, answers = [c.request.fact for c in cases], [c.request.new_object for c in cases]
    taught = [Fact(f.subject, f.relation, a) for f, a in zip(facts, answers, strict=True)]
    memory = PKMConfig(layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True,
                       sparse_updates=False, gate_hidden=256, seed=0)  # fmt: skip
    add_product_key_memory(model, memory)
    (layer,) = memories(model).values()
    fit_once = _FitOnce(layer, learning.fit_memory_gates)
    learning.fit_memory_gates = fit_once  # the gate does not depend on the values' learning rate
    passages = text_passages(3, seed=0, split="validation")
    rows = []
    for rate, steps in grid:
        with torch.no_grad():
            layer.values.weight.zero_()
        started = time.time()
        training = TrainingConfig(
            steps=steps, batch_size=16, learning_rate=rate, schedule="constant", warmup_ratio=0.0,
            weight_decay=0.0, eval_every=None, save_every=None,
        )  # fmt: skip
        settings = learning.MemoryLearning(
            paraphrases=True, gate=GateTraining(values_learning_rate=rate), training=training
        )
        work = Path("runs") / "gated-values-rate" / f"{rate}-{steps}"
        learning.learn_facts(model, tokenizer, facts, settings, work, answers=answers)
        model.eval()
        held_out = [(f, f.held_out_template()) for f in taught]
        paraphrase = [
            fact_recall(model, tokenizer, [f], template=t).accuracy for f, t in held_out if t is not None
        ]
        after = [fact_recall(model, tokenizer, taught, context=after_text(p)).accuracy for p in passages]
        rows.append({
            "lr": rate, "steps": steps, "made": fact_recall(model, tokenizer, taught).accuracy,
            "after_text": sum(after) / len(after), "held_out": sum(paraphrase) / len(paraphrase),
            "max_value_norm": float(layer.values.weight.norm(dim=1).max()), "seconds": time.time() - started,
        })  # fmt: skip
        logging.info("%s", rows[-1])
    (HERE / "values_rate.json").write_text(json.dumps(rows, indent=1))


class _FitOnce:
    """The gate fitted at the first call, restored exactly at the later ones."""

    def __init__(self, layer, fit):
        self.layer, self.fit, self.fits, self.state = layer, fit, None, None

    def __call__(self, *args, **kwargs):
        if self.fits is None:
            self.fits = self.fit(*args, **kwargs)
            self.state = {k: v.clone() for k, v in self.layer.gate.state_dict().items()}
        else:
            self.layer.gate.load_state_dict(self.state)
        return self.fits


if __name__ == "__main__":
    main()
