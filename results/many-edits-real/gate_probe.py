"""Where does the gated memory's gate open on ordinary text once it holds N edits?

    python results/many-edits-real/gate_probe.py N [SEED] [VARIANTS_JSON]     # ~10 min a variant here

At 1,000 edits at once the gated memory cost +13.6% wiki-en perplexity where it cost nothing at 100
(``README.md``, "The gated memory at 1,000"). A closed gate leaves the model's outputs bit-identical,
so the cost comes only from the wiki tokens where the gate opens. This probe fits the gate exactly
as the study's ``gated-memory`` method does (the same draw of N requests, kept facts and held-out
facts; no values trained: they do not change where the gate opens) and counts, over the study's
perplexity set, the tokens where it opens, where its scorer alone would open and where its codebook
alone would, with the tokens it opens at most often; and, as the other side of the trade, the share
of the requests' own prompts, held-out paraphrases and neighbours' prompts it opens at the subject's
last token. Each variant changes fields of the study's ``GateTraining`` (default: the study's own
settings, then more background text). Writes ``gate_probe-N.json``, one entry per variant, resuming.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import read_benchmark
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.experiments.many_edits import SCALES
from palimpsest.experiments.many_edits.gated import facts_to_keep, measured_facts
from palimpsest.memory import add_product_key_memory
from palimpsest.memory.gated import fit_memory_gates, gated_memories
from palimpsest.memory.taught import taught_fact
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import PLAIN, build_probe

HERE = Path(__file__).parent
DEFAULT_VARIANTS = [{}, {"background_tokens": 16384}, {"background_tokens": 65536}]


class GateWatch:
    """Per forward pass of a gated memory's gate: where it opened, and where its scorer and its
    codebook alone would have (flattened over the batch's positions)."""

    def __init__(self, gate):
        self.gate, self.rows = gate, []

    def __call__(self, _module, args, opened):
        hidden = args[0]
        key_hidden = args[1] if len(args) > 1 else None
        scorer = self.gate.scores(hidden) > 0
        near = self.gate.key_similarity(key_hidden if self.gate.separate_keys else hidden)
        self.rows.append((opened.cpu(), scorer.cpu(), (near >= self.gate.key_threshold).cpu()))


@torch.no_grad()
def watched(model, gate, sequences):
    """``[(opened, scorer, near)]`` per sequence (booleans per position)."""
    watch = GateWatch(gate)
    hook = gate.register_forward_hook(watch)
    try:
        out = []
        for ids in sequences:
            watch.rows.clear()
            model(input_ids=torch.tensor([ids]))
            out.append(tuple(torch.cat([row[i] for row in watch.rows]) for i in range(3)))
        return out
    finally:
        hook.remove()


def subject_opened(model, tokenizer, gate, facts, template_of) -> dict[str, float]:
    """Of ``facts``' prompts (plain, the template ``template_of(fact)``), the shares at whose subject's
    last token the gate opens, its scorer alone would and its codebook alone would."""
    rows = []
    for fact in facts:
        template = template_of(fact)
        if template is None:
            continue
        probe = build_probe(tokenizer, fact, template=template, causal=True, context=PLAIN)
        if probe is None or not probe.subject_positions:
            continue
        rows.append((probe.input_ids[: probe.answer_positions[0]], probe.subject_positions[-1]))
    seen = watched(model, gate, [ids for ids, _ in rows])
    shares = {}
    for index, what in enumerate(("opened", "scorer", "codebook")):
        hits = sum(bool(masks[index][at]) for masks, (_, at) in zip(seen, rows, strict=True))
        shares[what] = hits / max(len(rows), 1)
    shares["prompts"] = len(rows)
    return shares


def wiki_sequences(tokenizer, scale) -> list[list[int]]:
    """The token ids of a study's perplexity set (its ``block_size`` and ``perplexity_blocks``)."""
    blocks = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
    return [list(block["input_ids"]) for block in blocks]


def stored_record(out_file: Path, size: int, seed: int) -> dict:
    """What an earlier run of a probe wrote to ``out_file`` (its variants are not run again), or a new
    record."""
    if out_file.is_file():
        return json.loads(out_file.read_text())
    return {"size": size, "seed": seed, "variants": []}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    variants = json.loads(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_VARIANTS
    scale = SCALES["real"]
    method = scale.gated_memory
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    cases = read_benchmark(HERE / "benchmark.jsonl")
    order = list(cases)
    random.Random(seed).shuffle(order)
    draw = order[:size]
    keep = facts_to_keep(draw, order[size:])
    held_out = measured_facts(draw)
    edited = {case.request.fact.subject for case in draw}
    neighbours = [fact for case in draw for fact in case.neighbours[:1]]
    wiki = wiki_sequences(tokenizer, scale)
    out_file = HERE / f"gate_probe-{size}.json"
    record = stored_record(out_file, size, seed)
    done = [entry["variant"] for entry in record["variants"]]
    for variant in variants:
        if variant in done:
            continue
        settings = replace(method.learning.gate, **variant)
        model = load_pretrained("smollm2-135m").eval()
        add_product_key_memory(model, replace(method.memory, seed=seed))
        taught = [taught_fact(c.request.fact, c.request.new_object, 1, "probe") for c in draw]
        kept = [taught_fact(fact, fact.object, 1, "probe") for fact in keep]
        fits = fit_memory_gates(
            model, tokenizer, taught, templates=method.learning.templates,
            paraphrases=method.learning.paraphrases, settings=settings, keep=[k.fact for k in kept],
            held_out=held_out,
        )  # fmt: skip
        model.eval()
        ((name, layer),) = gated_memories(model).items()
        gate = layer.gate
        on_wiki = watched(model, gate, wiki)
        opened, scorer, near = (torch.cat([seq[i] for seq in on_wiki]) for i in range(3))
        tokens = Counter(
            tokenizer.decode([ids[p]]) for ids, seq in zip(wiki, on_wiki, strict=True)
            for p in seq[0].nonzero().flatten().tolist()
        )  # fmt: skip
        entry = {
            "variant": variant,
            "keys": int(gate.key_count),
            "fit": {
                "opened_positives": fits.layers[name].opened_positives,
                "closed_negatives": fits.layers[name].closed_negatives,
            },
            "wiki_tokens": len(opened),
            "wiki_opened": float(opened.float().mean()),
            "wiki_scorer_opens": float(scorer.float().mean()),
            "wiki_codebook_near": float(near.float().mean()),
            "wiki_opened_tokens": tokens.most_common(40),
            "requests_opened": subject_opened(
                model, tokenizer, gate, [c.request.fact for c in draw], lambda f: 0
            ),
            "held_out_paraphrase_opened": subject_opened(
                model, tokenizer, gate, [c.request.fact for c in draw], lambda f: f.held_out_template()
            ),
            "neighbours_opened": subject_opened(
                model, tokenizer, gate, [n for n in neighbours if n.subject not in edited], lambda f: 0
            ),
            "neighbours_of_edited_subjects_opened": subject_opened(
                model, tokenizer, gate, [n for n in neighbours if n.subject in edited], lambda f: 0
            ),
        }
        logging.info("%s", json.dumps({k: v for k, v in entry.items() if k != "wiki_opened_tokens"}))
        logging.info("opened at: %s", entry["wiki_opened_tokens"][:20])
        record["variants"].append(entry)
        out_file.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
