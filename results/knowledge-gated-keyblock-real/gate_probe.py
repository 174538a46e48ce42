"""Where does the knowledge study's gated memory open for N taught facts? (as
``../many-edits-real/gate_probe.py``, on the knowledge study's draw)

    python results/knowledge-gated-keyblock-real/gate_probe.py N SEED [VARIANTS_JSON]   # ~15 min a variant

Fits the gate exactly as this folder's gated arm does (``config.yaml``: the codebook at block 3 from
cosine 0.90; the draw of N facts on SEED, its kept facts held out), trains no values, and counts the
share of the taught facts' own prompts, held-out paraphrases and kept facts' prompts (subject taught
through another relation or not) at whose subject's last token the gate opens, its scorer alone would
and its codebook alone would, and the wiki-en tokens it opens at. Each variant changes fields of the
gate's ``GateTraining``. Writes ``gate_probe-N-sSEED.json``, one entry per variant, resuming.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from palimpsest.config import load_config
from palimpsest.data import load_tokenizer
from palimpsest.experiments.knowledge import SCALES
from palimpsest.experiments.knowledge.facts import draw, survey
from palimpsest.experiments.knowledge.scales import KnowledgeScale
from palimpsest.memory import add_product_key_memory
from palimpsest.memory.gated import fit_memory_gates, gated_memories
from palimpsest.memory.taught import taught_fact
from palimpsest.models import load_pretrained, resolve_pretrained

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location(
    "many_edits_probe", HERE.parent / "many-edits-real" / "gate_probe.py"
)
many_edits_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(many_edits_probe)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size, seed = int(sys.argv[1]), int(sys.argv[2])
    variants = json.loads(sys.argv[3]) if len(sys.argv) > 3 else [{}, {"steps": 4000}]
    scale = load_config(KnowledgeScale, HERE / "config.yaml", base=SCALES["real"])
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    base = load_pretrained("smollm2-135m").eval()
    _known, recalled, wrong = survey(base, tokenizer, scale, stored=HERE / "units" / "survey.json")
    chosen = draw(recalled, wrong, size, seed, scale)
    taught_subjects = {fact.subject for fact in chosen.taught}
    wiki = many_edits_probe.wiki_sequences(tokenizer, scale)
    record = many_edits_probe.stored_record(out_file := HERE / f"gate_probe-{size}-s{seed}.json", size, seed)
    opened_at = many_edits_probe.subject_opened
    for variant in variants:
        if variant in [entry["variant"] for entry in record["variants"]]:
            continue
        model = load_pretrained("smollm2-135m").eval()
        add_product_key_memory(model, replace(scale.gated_memory, seed=seed))
        settings = replace(scale.gate, seed=seed, **variant)
        taught = [taught_fact(fact, fact.object, 1, "probe") for fact in chosen.taught]
        fits = fit_memory_gates(
            model, tokenizer, taught, templates=[0], paraphrases=True, settings=settings, held_out=chosen.kept
        )
        model.eval()
        ((name, layer),) = gated_memories(model).items()
        gate = layer.gate
        seen = many_edits_probe.watched(model, gate, wiki)
        entry = {
            "variant": variant,
            "fit": {
                "opened_positives": fits.layers[name].opened_positives,
                "closed_negatives": fits.layers[name].closed_negatives,
            },
            "wiki_opened": sum(int(s[0].sum()) for s in seen) / sum(len(s[0]) for s in seen),
            "taught_opened": opened_at(model, tokenizer, gate, chosen.taught, lambda f: 0),
            "held_out_paraphrase_opened": opened_at(
                model, tokenizer, gate, chosen.taught, lambda f: f.held_out_template()
            ),
            "kept_subject_taught_opened": opened_at(
                model, tokenizer, gate, [f for f in chosen.kept if f.subject in taught_subjects], lambda f: 0
            ),
            "kept_other_subjects_opened": opened_at(
                model,
                tokenizer,
                gate,
                [f for f in chosen.kept if f.subject not in taught_subjects],
                lambda f: 0,
            ),
        }
        logging.info("%s", json.dumps(entry))
        record["variants"].append(entry)
        out_file.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
