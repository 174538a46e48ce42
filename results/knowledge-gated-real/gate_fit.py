"""Why the gate stays closed at taught cities' own prompts (``why_unlearned-128-scorer-veto.json``), and
which gate opens for every taught input without opening ordinary text.

    python results/knowledge-gated-real/gate_fit.py [N] [SEED] ['[{variant}, ...]'] [NAME]   # ~10 min here

The knowledge study's draw (N facts, seed) collected as ``memory learn`` collects it for the gated
memory (block 15's FFN input; open at each taught prompt's subject's last token, closed at its other
tokens, at four neighbours per fact and at wiki-en), then each variant's gate fitted on those inputs
alone (no values trained: the gate decides which facts can be learned, and a fit takes seconds) and
scored at what it opens: the taught prompts as written (the study's "learned" prompt) by relation,
the fit's own open inputs, the held-out paraphrase, the prompt after three validation passages, the
study's kept facts and 256 cities neither taught nor drawn as neighbours (a prompt is open where any
token opens), and wiki-en's perplexity blocks by position (0, 1, 2 and later: where a rule that
opens at a taught input's own value opened ordinary text). Variant fields: ``GateTraining``'s
``open_share``, ``neighbour_weight``, ``steps``, ``key_threshold``; ``hidden`` (the scorer's width);
``same_input``: the cosine from which a key opens whatever the scorer says (``None``: never),
``same_input_positions``: the positions whose keys may do so (``"all"`` or ``"from2"``). Writes
``gate_fit-N.json`` (with a NAME after the variants: ``gate_fit-N-NAME.json``).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.data.facts import city_facts
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.experiments.knowledge import SCALES
from palimpsest.experiments.knowledge.facts import draw, survey
from palimpsest.memory import add_product_key_memory, memories
from palimpsest.memory.gate import MemoryGate, _directions, fit_gate
from palimpsest.memory.gated import (
    _Text,
    first_position_centres,
    gate_texts,
    memory_inputs,
    neighbour_facts,
    training_contexts,
)
from palimpsest.memory.taught import taught_fact
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import PLAIN, after_text, build_probe, text_passages

HERE = Path(__file__).parent
DEFAULT_VARIANTS = [{}, {"open_share": 0.3}, {"open_share": 0.5}, {"hidden": 1024}]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    variants = json.loads(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_VARIANTS
    named = f"-{sys.argv[4]}" if len(sys.argv) > 4 else ""
    scale = SCALES["real"]
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m").eval()
    _known, recalled, wrong = survey(model, tokenizer, scale, stored=HERE / "units" / "survey.json")
    chosen = draw(recalled, wrong, size, seed, scale)
    add_product_key_memory(model, replace(scale.gated_memory, seed=seed))
    ((name, layer),) = memories(model).items()
    dim = layer.gate.centre.shape[0]
    settings = replace(scale.gate, seed=seed)
    taught = [taught_fact(fact, fact.object, 1, "") for fact in chosen.taught]
    subjects = {fact.subject for fact in chosen.taught}

    def inputs(texts):
        return memory_inputs(model, texts)[name]

    neighbours = neighbour_facts(taught, (), settings, held_out=chosen.kept)
    texts = gate_texts(
        tokenizer, taught, templates=[0], paraphrases=True, contexts=training_contexts(settings),
        closed_facts=neighbours, settings=settings,
    )  # fmt: skip
    positives, negatives, weights = inputs(texts)
    open_at = torch.tensor([text.open_at for text in texts if text.open_at is not None])
    background = [text for text in texts if text.open_at is None and text.weight == 1.0]
    centre = inputs(background)[1].mean(dim=0)
    start_centre = first_position_centres(model, tokenizer, seed=seed)[name]

    def subject_inputs(facts, template_of, context=PLAIN):
        rows, kept = [], []
        for fact in facts:
            template = template_of(fact)
            probe = None if template is None else build_probe(
                tokenizer, fact, template=template, causal=True, context=context
            )  # fmt: skip
            if probe is not None and probe.subject_positions:
                rows.append(
                    _Text(probe.input_ids[: probe.answer_positions[0]], probe.subject_positions[-1], 1.0)
                )
                kept.append(fact)
        return inputs(rows)[0], kept, [row.open_at for row in rows]

    own, own_facts, own_positions = subject_inputs(chosen.taught, lambda _f: 0)
    held_out, _, _ = subject_inputs(chosen.taught, lambda f: f.held_out_template())
    after = torch.cat([subject_inputs(chosen.taught, lambda _f: 0, after_text(p))[0]
                       for p in text_passages(3, seed=0, split="validation")])  # fmt: skip
    drawn = {fact.subject for fact in neighbours}
    others = [f for f in city_facts(2000) if f.subject not in subjects | drawn]
    others = random.Random(seed).sample(others, min(256, len(others)))

    def prompt_rows(facts):
        return [inputs([_Text(tokenizer(f.prompt(0))["input_ids"], None, 1.0)])[1] for f in facts]

    kept_rows, other_rows = prompt_rows(chosen.kept), prompt_rows(others)
    blocks = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
    wiki = inputs([_Text(list(block["input_ids"]), None, 1.0) for block in blocks])[1]
    wiki = wiki.reshape(len(blocks), -1, dim)
    results = []
    for variant in variants:
        fitted_fields = ("open_share", "neighbour_weight", "steps", "key_threshold")
        fit_settings = replace(settings, **{k: v for k, v in variant.items() if k in fitted_fields})
        gate = MemoryGate(dim, variant.get("hidden", 256), keys=layer.gate.key_room)
        weighted = weights.clone()
        weighted[weighted > 1] = fit_settings.neighbour_weight
        fit = fit_gate(
            gate, positives, negatives, negative_weights=weighted, open_share=fit_settings.open_share,
            centre=centre, steps=fit_settings.steps, batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, seed=seed,
        )  # fmt: skip
        gate.set_keys(positives[open_at != 0], fit_settings.key_threshold, start=positives[open_at == 0],
                      start_centre=start_centre)  # fmt: skip
        rule = variant.get("same_input")
        rule_keys = positives[open_at >= (2 if variant.get("same_input_positions") == "from2" else 1)]
        rule_directions = _directions(rule_keys, gate.centre)

        @torch.no_grad()
        def opens(rows, gate=gate, rule=rule, rule_directions=rule_directions):
            opened = gate(rows)
            if rule is not None:
                same = (_directions(rows, gate.centre) @ rule_directions.T).max(dim=-1).values >= rule
                opened = opened | same
            return opened

        def any_open(prompts):
            return sum(bool(opens(rows).any()) for rows in prompts) / len(prompts)

        own_open = opens(own)
        by_relation: dict[str, list[bool]] = {}
        for fact, hit in zip(own_facts, own_open.tolist(), strict=True):
            by_relation.setdefault(fact.relation.name, []).append(hit)
        by_position: dict[str, list[bool]] = {}
        for position, hit in zip(own_positions, own_open.tolist(), strict=True):
            by_position.setdefault(str(min(position, 3)), []).append(hit)
        wiki_open = opens(wiki.reshape(-1, dim)).reshape(wiki.shape[:2]).float()
        record = {
            "variant": variant,
            "fit_opened_positives": fit.opened_positives, "fit_closed_negatives": fit.closed_negatives,
            "training_positives_opened": float(opens(positives).float().mean()),
            "own_prompt_opened": float(own_open.float().mean()),
            "own_prompt_by_relation": {k: sum(v) / len(v) for k, v in sorted(by_relation.items())},
            "own_prompt_by_subject_end": {
                k: [sum(v) / len(v), len(v)] for k, v in sorted(by_position.items())
            },
            "held_out_paraphrase_opened": float(opens(held_out).float().mean()),
            "after_text_opened": float(opens(after).float().mean()),
            "kept_prompts_opened": any_open(kept_rows),
            "other_city_prompts_opened": any_open(other_rows),
            "wiki_position_0": float(wiki_open[:, 0].mean()),
            "wiki_position_1": float(wiki_open[:, 1].mean()),
            "wiki_positions_2_on": float(wiki_open[:, 2:].mean()),
        }  # fmt: skip
        logging.info("%s", json.dumps(record))
        results.append(record)
        path = HERE / f"gate_fit-{size}{named}.json"
        path.write_text(json.dumps({"size": size, "seed": seed, "variants": results}, indent=1))


if __name__ == "__main__":
    main()
