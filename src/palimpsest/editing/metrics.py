"""The editing metrics, one canonical definition each (all fractions in [0, 1]).

On the *modified* facts M (each edit request, probed through its edit template):

``A_M``            exact match of the full new object (every token, see :mod:`palimpsest.recall`);
``old_kept``       exact match of the old object (how often the edit did not take);
``efficacy``       ROME's ES: share of requests with P(new object) > P(old object);
``paraphrase``     exact match of the new object through the subject's held-out paraphrase
                   template (:meth:`Fact.held_out_template`: rotated over the templates
                   other than the edit template by a stable hash of the subject);
``paraphrase_efficacy``  ROME's PS: P(new) > P(old) through that paraphrase.

On the *unmodified* facts F \\ S (probed through the edit template):

``A_F\\S``          exact match of the true object;
``neighbourhood``  ROME's NS: share with P(true object) > P(new object of an edit of the
                   same relation) — the edit did not spill onto other subjects.

``A_mean`` is (A_M + A_F\\S) / 2, Zhu et al.'s average. Two objects are compared by their
mean log-probability per token (as ROME's code does), so that a long object is not
penalised for its length against a one-token one.
Every study reports these before the edit beside after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact
from palimpsest.editing.requests import EditRequest
from palimpsest.errors import DataError
from palimpsest.models import objective_of, position_limit
from palimpsest.recall import (
    END_OF_TEXT,
    EVALUATION_PASSAGES,
    PLAIN,
    Probe,
    PromptContext,
    after_text,
    build_probe,
    context_prefix,
    greedy_generate,
    pad_id,
    score_probes,
    text_passages,
)


def probe_or_fail(
    tokenizer: PreTrainedTokenizerBase,
    fact: Fact,
    template: int,
    object_: str,
    causal: bool,
    context: PromptContext = PLAIN,
) -> Probe:
    """The probe of ``fact`` answered by ``object_``, or a one-line error naming it."""
    probe = build_probe(tokenizer, fact, template=template, object_=object_, causal=causal, context=context)
    if probe is None:
        raise DataError(
            f"cannot probe '{fact.statement(template, object_)}': the tokenizer splits the prompt "
            "differently alone than before the object"
        )
    return probe


def _pairwise(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[tuple[Fact, int, str, str]],
    context: PromptContext = PLAIN,
) -> tuple[list[bool], list[bool], list[bool]]:
    """For (fact, template, a, b): exact match of a, exact match of b, and P(a) > P(b)."""
    causal = objective_of(model.config) == "clm"
    probes_a = [probe_or_fail(tokenizer, f, t, a, causal, context) for f, t, a, _ in items]
    probes_b = [probe_or_fail(tokenizer, f, t, b, causal, context) for f, t, _, b in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    exact_a, logprob_a = score_probes(model, probes_a, pad_id=pad)
    exact_b, logprob_b = score_probes(model, probes_b, pad_id=pad)
    mean_a = [value / len(probe.answer_ids) for value, probe in zip(logprob_a, probes_a, strict=True)]
    mean_b = [value / len(probe.answer_ids) for value, probe in zip(logprob_b, probes_b, strict=True)]
    return exact_a, exact_b, [x > y for x, y in zip(mean_a, mean_b, strict=True)]


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def edit_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    unmodified: Sequence[Fact] = (),
    *,
    edit_template: int = 0,
    context: PromptContext = PLAIN,
    other_contexts: bool = True,
) -> dict[str, Any]:
    """Every metric of the module docstring for the model as it is now, on prompts in ``context``
    (as users write them, by default). With ``other_contexts`` (causal LMs), ``A_M`` and
    ``A_F\\S`` are also reported after a passage of unrelated text (``A_M@after-text``: the
    mean over a few held-out passages of ordinary text) and behind the end-of-document token
    (``A_M@end-of-text``): an edit that holds in one context
    and not in another shows there."""
    if not requests:
        raise DataError("no edit requests to measure")
    edited = [(r.fact, edit_template, r.new_object, r.fact.object) for r in requests]
    new_exact, old_exact, new_beats_old = _pairwise(model, tokenizer, edited, context)
    metrics: dict[str, Any] = {
        "A_M": _share(new_exact),
        "old_kept": _share(old_exact),
        "efficacy": _share(new_beats_old),
        "edits": len(requests),
    }
    paraphrased = []
    for request in requests:
        template = request.fact.held_out_template(edit_template)
        if template is not None:
            paraphrased.append((request.fact, template, request.new_object, request.fact.object))
    if paraphrased:
        exact, _, beats = _pairwise(model, tokenizer, paraphrased, context)
        metrics["paraphrase"] = _share(exact)
        metrics["paraphrase_efficacy"] = _share(beats)
    causal = objective_of(model.config) == "clm"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if unmodified:
        new_by_relation: dict[str, list[str]] = {}
        for request in requests:
            new_by_relation.setdefault(request.fact.relation.name, []).append(request.new_object)
        kept = []
        for index, fact in enumerate(unmodified):
            candidates = [o for o in new_by_relation.get(fact.relation.name, []) if o != fact.object]
            rival = candidates[index % len(candidates)] if candidates else None
            kept.append((fact, edit_template, fact.object, rival))
        with_rival = [item for item in kept if item[3] is not None]
        probes = [probe_or_fail(tokenizer, f, t, o, causal, context) for f, t, o, _ in kept]
        true_exact, _ = score_probes(model, probes, pad_id=pad)
        metrics["A_F\\S"] = _share(true_exact)
        metrics["unmodified"] = len(unmodified)
        if with_rival:
            _, _, true_beats_new = _pairwise(model, tokenizer, with_rival, context)
            metrics["neighbourhood"] = _share(true_beats_new)
        metrics["A_mean"] = (metrics["A_M"] + metrics["A_F\\S"]) / 2
    if other_contexts and causal:
        limit = position_limit(model)
        passages = text_passages(EVALUATION_PASSAGES, seed=0, split="validation")
        variants = {"after-text": [after_text(p) for p in passages], "end-of-text": [END_OF_TEXT]}
        for name, contexts in variants.items():
            if name == context.name:
                continue
            made, kept_now = [], []
            for other in contexts:
                new_probes = [
                    probe_or_fail(tokenizer, r.fact, edit_template, r.new_object, causal, other)
                    for r in requests
                ]
                kept_probes = [
                    probe_or_fail(tokenizer, f, edit_template, f.object, causal, other) for f in unmodified
                ]
                if limit is not None and max(len(p.input_ids) for p in new_probes + kept_probes) > limit:
                    break  # a model with fewer positions than the passage and the prompt need
                made += score_probes(model, new_probes, pad_id=pad)[0]
                kept_now += score_probes(model, kept_probes, pad_id=pad)[0] if kept_probes else []
            else:
                metrics[f"A_M@{name}"] = _share(made)
                if unmodified:
                    metrics[f"A_F\\S@{name}"] = _share(kept_now)
    return metrics


def greedy_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    context: PromptContext = PLAIN,
) -> list[str]:
    """What a causal LM writes after each prompt, greedily, ``max_new_tokens`` tokens (decoded).

    Each prompt is read in ``context`` (as a user writes it, by default; see
    :mod:`palimpsest.recall`), left-padded so that a batch decodes together.
    """
    front = context_prefix(tokenizer, context)
    lead = f"{context.text} " if context.text else ""
    encoded = [front + tokenizer(lead + p, add_special_tokens=False)["input_ids"] for p in prompts]
    written = greedy_generate(model, encoded, max_new_tokens, pad=pad_id(tokenizer), batch_size=batch_size)
    return tokenizer.batch_decode(written, skip_special_tokens=True)


def generation_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    unmodified: Sequence[Fact] = (),
    *,
    edit_template: int = 0,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Success read from what the model *writes*, not from teacher-forced scores.

    ``generation``: share of edit prompts whose greedy continuation (``max_new_tokens``
    tokens) contains the new object; ``generation_paraphrase`` the same through the held-out
    paraphrase; ``generation_kept``: share of unmodified facts whose continuation still
    contains the true object. Teacher-forced scores overstate edits ("The Mirage of Model
    Editing", ACL 2025); a continuation that names the new object is what a user sees.
    Returns the continuations too (``texts``).
    """
    edit_prompts = [r.fact.prompt(edit_template) for r in requests]
    para = [(r, r.fact.held_out_template(edit_template)) for r in requests]
    para = [(r, t) for r, t in para if t is not None]
    kept_prompts = [f.prompt(edit_template) for f in unmodified]
    texts = greedy_continuations(
        model, tokenizer, edit_prompts + [r.fact.prompt(t) for r, t in para] + kept_prompts,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    edits, rest = texts[: len(requests)], texts[len(requests) :]
    paraphrases, kept = rest[: len(para)], rest[len(para) :]
    metrics: dict[str, Any] = {
        "generation": _share([r.new_object in text for r, text in zip(requests, edits, strict=True)]),
        "texts": {
            "edits": [{"prompt": p, "continuation": c} for p, c in zip(edit_prompts, edits, strict=True)],
            "kept": [{"prompt": p, "continuation": c} for p, c in zip(kept_prompts, kept, strict=True)],
        },
    }
    if para:
        metrics["generation_paraphrase"] = _share(
            [r.new_object in text for (r, _), text in zip(para, paraphrases, strict=True)]
        )
    if unmodified:
        metrics["generation_kept"] = _share(
            [f.object in text for f, text in zip(unmodified, kept, strict=True)]
        )
    return metrics
