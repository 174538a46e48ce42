"""Does a gate fitted as ``memory learn`` fits it stay closed for subjects it never saw?

    python results/gated-memory-probe-real/gate_variants.py '[{}, {"neighbours": 16}]'   # ~10 min here

64 many-edits facts taught (their memory inputs at block 15, as ``fit_memory_gates`` collects them:
open at the subject's last token of each taught prompt, closed for its other tokens, for
``neighbours`` prompts per fact with other subjects and for wiki-en). Each variant (``GateTraining``
fields ``neighbours``, ``open_share``; ``hard``: the neighbours' weight) is fitted and scored on
what it never saw: the taught facts' held-out paraphrase and their prompt after three validation
passages (share of subject tokens opened), the draw's own neighbour prompts whose subject was not
taught (a prompt counts as open if any token opens: that is where the memory would write), and
wiki-en validation tokens. Appends to ``gate_variants.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import read_benchmark
from palimpsest.experiments.many_edits.gated import facts_to_keep
from palimpsest.memory import PKMConfig, add_product_key_memory, memories
from palimpsest.memory.gate import fit_gate
from palimpsest.memory.gated import (
    GateTraining,
    gate_texts,
    memory_inputs,
    neighbour_facts,
    training_contexts,
)
from palimpsest.memory.taught import taught_fact
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import PLAIN, after_text, build_probe, text_passages

HERE = Path(__file__).parent
FACTS = 64


class Setup:
    """SmolLM2-135M with a gated 16,384-slot memory at block 15 (unfitted), and the first ``facts``
    cases of the many-edits benchmark taught (their new objects): what the gate probes share."""

    def __init__(self, facts: int):
        self.tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
        self.model = load_pretrained("smollm2-135m").eval()
        memory = PKMConfig(
            layers=[0.5], n_keys=128, heads=4, k=32, k_dim=128, zero_values=True, gate_hidden=256, seed=0
        )
        add_product_key_memory(self.model, memory)
        ((self.name, self.layer),) = memories(self.model).items()
        self.cases = read_benchmark(HERE.parent / "many-edits-real" / "benchmark.jsonl")
        self.draw = self.cases[:facts]
        self.taught = [taught_fact(c.request.fact, c.request.new_object, 1, "") for c in self.draw]
        self.subjects = {entry.subject for entry in self.taught}

    def inputs(self, texts):
        """The memory's (open, closed, weights) inputs of ``texts`` (``_Prompt``s or gate texts)."""
        return memory_inputs(self.model, texts)[self.name]

    def subject_rows(self, context, template_of, *, after_first: bool = False):
        """Each taught fact's input at its subject's last token, in the template ``template_of`` names
        (None: skipped) after ``context``; ``after_first``: only where that token is not the first."""
        rows = []
        for entry in self.taught:
            template = template_of(entry.fact)
            probe = (
                None
                if template is None
                else build_probe(self.tokenizer, entry.fact, template=template, causal=True, context=context)
            )
            if (
                probe is not None
                and probe.subject_positions
                and (probe.subject_positions[-1] > 0 or not after_first)
            ):
                rows.append(
                    _Prompt(probe.input_ids[: probe.answer_positions[0]], probe.subject_positions[-1])
                )
        return self.inputs(rows)[0]


def main() -> None:
    variants = json.loads(sys.argv[1])
    setup = Setup(FACTS)
    tokenizer, layer, cases, draw = setup.tokenizer, setup.layer, setup.cases, setup.draw
    taught, subjects, inputs, subject_rows = setup.taught, setup.subjects, setup.inputs, setup.subject_rows
    keep = facts_to_keep(draw, cases[FACTS:])

    held_out = subject_rows(PLAIN, lambda fact: fact.held_out_template())
    after = torch.cat(
        [subject_rows(after_text(p), lambda _f: 0) for p in text_passages(3, seed=0, split="validation")]
    )
    unseen = [f for c in draw for f in c.neighbours if f.subject not in subjects]
    unseen_rows = [inputs([_Prompt(tokenizer(f.prompt(0))["input_ids"], None)])[1] for f in unseen]
    wiki = inputs(
        [
            _Prompt(tokenizer(p)["input_ids"], None)
            for p in text_passages(60, words=48, seed=7, split="validation")
        ]
    )[1]
    fitted: dict[int, tuple] = {}
    results = []
    for variant in variants:
        count = variant.get("neighbours", 4)
        if count not in fitted:
            settings = GateTraining(neighbours=count)
            texts = gate_texts(
                tokenizer, taught, templates=[0], paraphrases=True, contexts=training_contexts(settings),
                closed_facts=neighbour_facts(taught, keep, settings), settings=settings,
            )  # fmt: skip
            fitted[count] = inputs(texts)
        positives, negatives, weights = fitted[count]
        weights = weights.clone()
        if "hard" in variant:
            weights[weights > 1] = variant["hard"]
        share = variant.get("open_share", 0.1)
        fit = fit_gate(
            layer.gate, positives, negatives, negative_weights=weights, open_share=share,
            centre=wiki.mean(dim=0), seed=0,
        )  # fmt: skip
        with torch.no_grad():
            scores = {
                "fitted_open": fit.opened_positives, "fitted_closed": fit.closed_negatives,
                "held_out_paraphrase_opened": layer.gate(held_out).float().mean().item(),
                "after_text_opened": layer.gate(after).float().mean().item(),
                "unseen_neighbour_prompts_opened": _share_open(layer.gate, unseen_rows),
                "wiki_tokens_opened": layer.gate(wiki).float().mean().item(),
            }  # fmt: skip
        results.append({"variant": variant, "unseen_neighbour_prompts": len(unseen_rows), **scores})
    path = HERE / "gate_variants.json"
    earlier = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(earlier + results, indent=1))


def _share_open(gate, prompts) -> float:
    """The share of prompts (rows of their tokens' inputs) at which any token opens the gate."""
    return sum(bool(gate(rows).any()) for rows in prompts) / len(prompts)


class _Prompt:
    """Token ids with one open position (or none): every other position a closed input."""

    def __init__(self, ids, open_at):
        self.ids, self.open_at, self.weight, self.closed_from = list(ids), open_at, 1.0, 0


if __name__ == "__main__":
    main()
