"""Probe: where MEMIT's damage to an edited subject's other facts comes from.

    python results/many-edits-same-subject-probe-real/probe.py N SETTINGS_JSON > OUT.log

The study's seed-0 draw of 100 cases, those of them with same-subject facts (the subject's other
recalled facts), at most N. The batch editor's targets are found (SETTINGS_JSON: BatchEditConfig
fields, e.g. '{"keep_prompts": "other-relations", "kl_factor": 1.0}'); then each same-subject
prompt is read with its subject's target vector added where the subject ends, after the last
edited block, without any weight written ("steer": the target's own effect), and again after the
edit is written into the weights ("weights"). Prints both recall rates and one line per fact.
"""

import json
import random
import sys
import time
from pathlib import Path

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import kept_facts, read_benchmark
from palimpsest.editing.memit import BatchEditor
from palimpsest.editing.metrics import probe_or_fail
from palimpsest.editing.statistics import cached_statistics
from palimpsest.models import load_pretrained, resolve_pretrained, transformer_blocks
from palimpsest.recall import score_probes

N = int(sys.argv[1]) if len(sys.argv) > 1 else 40
settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
tok = load_tokenizer(resolve_pretrained("smollm2-135m"))
model = load_pretrained("smollm2-135m").eval()
cases = read_benchmark(Path("results/many-edits-real-quick/benchmark.jsonl"))
random.Random(0).shuffle(cases)
draw = [c for c in cases[:100] if c.same_subject][:N]
requests = [c.request for c in draw]
_n, same = kept_facts(draw)
print(len(draw), "cases", len(same), "same-subject facts", flush=True)
pad = tok.pad_token_id or 0


def recall(facts, answer=None):
    return score_probes(
        model,
        [probe_or_fail(tok, f, 0, f.object if answer is None else answer(f), True) for f in facts],
        pad_id=pad,
    )[0]


base = recall(same)
print("base same-subject recall", sum(base) / len(base), flush=True)
blocks = settings.get("layers", [3, 4, 5, 6, 7])
stats = cached_statistics(model, tok, blocks, tokens=100_000)
editor = BatchEditor(model, tok, statistics=stats, **settings)
t = time.time()
shifts, norms = editor._targets(requests, 0, stats)
print("targets", round(time.time() - t), "s", flush=True)
_p, layers = transformer_blocks(model)
last = layers[editor.blocks[-1]]
index = {r.fact.subject: i for i, r in enumerate(requests)}


def steered(fact, answer):
    probe = probe_or_fail(tok, fact, 0, answer, True)
    delta = shifts[:, index[fact.subject]].float()
    pos = probe.subject_positions[-1]

    def hook(_m, _a, out):
        s = (out[0] if isinstance(out, tuple) else out).clone()
        s[:, pos] += delta
        return (s, *out[1:]) if isinstance(out, tuple) else s

    h = last.register_forward_hook(hook)
    try:
        return score_probes(model, [probe], pad_id=pad)[0][0]
    finally:
        h.remove()


made_steer = [steered(r.fact, r.new_object) for r in requests]
same_steer = [steered(f, f.object) for f in same]
print(
    "steer: made",
    sum(made_steer) / len(made_steer),
    "same kept",
    sum(same_steer) / len(same_steer),
    flush=True,
)
editor.apply(requests, measure=False)
made_w = recall(
    [r.fact for r in requests], answer=lambda f: next(r.new_object for r in requests if r.fact == f)
)
same_w = recall(same)
print("weights: made", sum(made_w) / len(made_w), "same kept", sum(same_w) / len(same_w), flush=True)
for f, b, s, w in zip(same, base, same_steer, same_w, strict=True):
    print(f.subject, f.relation.name, f.object, "base", b, "steer", s, "weights", w)
