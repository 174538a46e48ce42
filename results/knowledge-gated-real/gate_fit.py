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
``same_input_positions``: the positions whose keys may do so (``"all"`` or ``"from2"``); ``key_block``:
the block whose FFN input the codebook's keys are taken from and compared at (the scorer stays on the
memory's input; a sequence's first position keeps the memory's start keys), to see whether an early
block's state, more the subject's own tokens, opens unseen phrasings
(``results/gated-memory-probe-real/key_layers-128.json``). Kept facts are scored twice more: those
whose subject was taught through another relation, and the others. Writes
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
from palimpsest.memory.gate import START_KEY_COSINE, MemoryGate, _directions, fit_gate
from palimpsest.memory.gated import (
    _Text,
    first_position_centres,
    gate_texts,
    memory_inputs,
    neighbour_facts,
    training_contexts,
)
from palimpsest.memory.taught import taught_fact
from palimpsest.models import load_pretrained, resolve_pretrained, transformer_blocks
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
    _, blocks = transformer_blocks(model)
    # SmolLM2's blocks call their FFN ``mlp``; its input is the normed state, as the memory's is
    key_blocks = sorted({variant["key_block"] for variant in variants if "key_block" in variant})
    also = {f"block {block}": blocks[block].mlp for block in key_blocks}
    sources = [name, *also]

    def collect(texts):
        return memory_inputs(model, texts, also=also)

    neighbours = neighbour_facts(taught, (), settings, held_out=chosen.kept)
    texts = gate_texts(
        tokenizer, taught, templates=[0], paraphrases=True, contexts=training_contexts(settings),
        closed_facts=neighbours, settings=settings,
    )  # fmt: skip
    collected = collect(texts)
    positives, negatives, weights = collected[name]
    open_at = torch.tensor([text.open_at for text in texts if text.open_at is not None])
    background = [text for text in texts if text.open_at is None and text.weight == 1.0]
    centres = {source: rows[1].mean(dim=0) for source, rows in collect(background).items()}
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
        return {s: opened for s, (opened, _, _) in collect(rows).items()}, kept, [row.open_at for row in rows]

    own, own_facts, own_positions = subject_inputs(chosen.taught, lambda _f: 0)
    held_out, _, _ = subject_inputs(chosen.taught, lambda f: f.held_out_template())
    afters = [subject_inputs(chosen.taught, lambda _f: 0, after_text(p))[0]
              for p in text_passages(3, seed=0, split="validation")]  # fmt: skip
    after = {source: torch.cat([rows[source] for rows in afters]) for source in sources}
    drawn = {fact.subject for fact in neighbours}
    others = [f for f in city_facts(2000) if f.subject not in subjects | drawn]
    others = random.Random(seed).sample(others, min(256, len(others)))

    def prompt_rows(facts):
        rows = [collect([_Text(tokenizer(f.prompt(0))["input_ids"], None, 1.0)]) for f in facts]
        return [{source: prompt[source][1] for source in sources} for prompt in rows]

    kept_same = [fact for fact in chosen.kept if fact.subject in subjects]
    kept_rows, other_rows = prompt_rows(chosen.kept), prompt_rows(others)
    kept_same_rows = prompt_rows(kept_same)
    kept_other_rows = prompt_rows([fact for fact in chosen.kept if fact.subject not in subjects])
    perplexity_blocks = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
    wiki_rows = collect([_Text(list(block["input_ids"]), None, 1.0) for block in perplexity_blocks])
    wiki = {source: rows[1].reshape(len(perplexity_blocks), -1, dim) for source, rows in wiki_rows.items()}
    results = []
    for variant in variants:
        fitted_fields = ("open_share", "neighbour_weight", "steps", "key_threshold")
        fit_settings = replace(settings, **{k: v for k, v in variant.items() if k in fitted_fields})
        gate = MemoryGate(dim, variant.get("hidden", 256), keys=layer.gate.key_room)
        weighted = weights.clone()
        weighted[weighted > 1] = fit_settings.neighbour_weight
        fit = fit_gate(
            gate, positives, negatives, negative_weights=weighted, open_share=fit_settings.open_share,
            centre=centres[name], steps=fit_settings.steps, batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, seed=seed,
        )  # fmt: skip
        gate.set_keys(positives[open_at != 0], fit_settings.key_threshold, start=positives[open_at == 0],
                      start_centre=start_centre)  # fmt: skip
        rule = variant.get("same_input")
        rule_keys = positives[open_at >= (2 if variant.get("same_input_positions") == "from2" else 1)]
        rule_directions = _directions(rule_keys, gate.centre)
        key_source = f"block {variant['key_block']}" if "key_block" in variant else None
        early_keys = (
            _directions(collected[key_source][0][open_at != 0], centres[key_source]) if key_source else None
        )

        @torch.no_grad()
        def opens(rows, gate=gate, rule=rule, rule_directions=rule_directions, key_source=key_source,
                  early_keys=early_keys, threshold=fit_settings.key_threshold):  # fmt: skip
            memory_rows = rows[name]
            if key_source is None:
                opened = gate(memory_rows)
            else:
                near = (_directions(rows[key_source], centres[key_source]) @ early_keys.T).max(dim=-1).values
                start = gate.start_similarity(memory_rows) >= START_KEY_COSINE
                opened = (gate.scores(memory_rows) > 0) & ((near >= threshold) | start)
            if rule is not None:
                same = (_directions(memory_rows, gate.centre) @ rule_directions.T).max(dim=-1).values >= rule
                opened = opened | same
            return opened

        def any_open(prompts):
            return sum(bool(opens(rows).any()) for rows in prompts) / len(prompts) if prompts else None

        own_open = opens(own)
        by_relation: dict[str, list[bool]] = {}
        for fact, hit in zip(own_facts, own_open.tolist(), strict=True):
            by_relation.setdefault(fact.relation.name, []).append(hit)
        by_position: dict[str, list[bool]] = {}
        for position, hit in zip(own_positions, own_open.tolist(), strict=True):
            by_position.setdefault(str(min(position, 3)), []).append(hit)
        flat_wiki = {source: rows.reshape(-1, dim) for source, rows in wiki.items()}
        wiki_open = opens(flat_wiki).reshape(wiki[name].shape[:2]).float()
        record = {
            "variant": variant,
            "fit_opened_positives": fit.opened_positives, "fit_closed_negatives": fit.closed_negatives,
            "training_positives_opened": float(opens({s: collected[s][0] for s in sources}).float().mean()),
            "own_prompt_opened": float(own_open.float().mean()),
            "own_prompt_by_relation": {k: sum(v) / len(v) for k, v in sorted(by_relation.items())},
            "own_prompt_by_subject_end": {
                k: [sum(v) / len(v), len(v)] for k, v in sorted(by_position.items())
            },
            "held_out_paraphrase_opened": float(opens(held_out).float().mean()),
            "after_text_opened": float(opens(after).float().mean()),
            "kept_prompts_opened": any_open(kept_rows),
            "kept_same_subject": [len(kept_same), any_open(kept_same_rows)],
            "kept_other_subjects_opened": any_open(kept_other_rows),
            "kept_opened_facts": [f"{fact.subject} / {fact.relation.name}" for fact, rows
                                  in zip(chosen.kept, kept_rows, strict=True) if bool(opens(rows).any())],
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
