"""Does a model know a fact? Exact match and answer log-probability, for masked and causal LMs.

One definition for every study (the memory study's recall, the editor's metrics):

* the *answer* is the object's tokens, as they are tokenized inside the full statement
  (with its leading space) — the final punctuation is not part of it;
* a causal LM is given the prompt (the template cut before the object) as a user writes
  it — only what the tokenizer itself puts in front of a text, nothing of ours (the
  ``"plain"`` :class:`PromptContext`) — and scored teacher-forced on the answer: the fact is
  *recalled* when the argmax at every answer position is the answer token (exactly what
  greedy decoding would produce, computed in one batched pass). Two other contexts are
  measured beside it: the prompt after a passage of unrelated text (:func:`after_text`), and
  the prompt behind the end-of-document token (``"end-of-text"``: how palimpsest probed
  until the issue "Many edits" showed that an edit could hold there and not for the plain
  prompt);
* a masked LM is given the whole statement with every answer token masked: recalled
  when the argmax at every masked position is the answer token;
* ``logprob`` is the sum of the answer tokens' log-probabilities under the same inputs
  (teacher-forced for causal LMs, one joint masking for masked LMs), used to compare
  two candidate objects of one prompt.

A fact whose prompt tokenizes differently alone than inside its statement cannot be
probed this way; it is reported as ``unprobeable`` and left out, never silently scored.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact
from palimpsest.data.tokenization import boundary_ids
from palimpsest.models import cache_argument, objective_of, returned_cache


@dataclass(frozen=True)
class PromptContext:
    """What stands in front of a causal LM's prompt: nothing of ours (``plain``), a passage of
    unrelated text, or the end-of-document token (``end-of-text``)."""

    name: str
    text: str = ""
    end_of_text: bool = False


PLAIN = PromptContext("plain")
END_OF_TEXT = PromptContext("end-of-text", end_of_text=True)


def after_text(passage: str) -> PromptContext:
    """The prompt after ``passage`` (one space between them), as a question asked mid-conversation."""
    return PromptContext("after-text", text=passage.strip())


def text_passages(
    count: int, words: int = 10, *, seed: int = 0, split: str = "train", corpus: str = "wiki-en"
) -> list[str]:
    """``count`` passages of ``words`` words of ordinary text, each from a random place of a random
    document (deterministic by ``seed``): the unrelated text a prompt may follow. Editors train
    on passages of the ``train`` split; measurements read the ``validation`` split's, which no
    editor has seen."""
    import random

    from palimpsest.data import load_corpus, split_corpus

    if count <= 0:
        return []
    parts = split_corpus(load_corpus(corpus), 0.05, seed=0)
    texts = (parts.train if split == "train" else parts.validation).texts
    rng = random.Random(seed)
    passages: list[str] = []
    while len(passages) < count:
        document = texts[rng.randrange(len(texts))].split()
        if len(document) > words:
            start = rng.randrange(len(document) - words)
            passages.append(" ".join(document[start : start + words]).rstrip(".,;:") + ".")
    return passages


#: How many held-out passages the ``after-text`` measurements average over.
EVALUATION_PASSAGES = 3


@dataclass(frozen=True)
class Probe:
    """Token ids of one probe: ``input_ids`` with the answer at ``answer_positions``."""

    input_ids: list[int]
    answer_positions: list[int]
    answer_ids: list[int]
    #: Where the subject's tokens stand in ``input_ids`` (empty where the tokenizer merges the
    #: subject with its neighbours, so that no token boundary marks it).
    subject_positions: tuple[int, ...] = ()


def build_probe(
    tokenizer: PreTrainedTokenizerBase, fact: Fact, *, template: int = 0, object_: str | None = None,
    causal: bool, context: PromptContext = PLAIN,
) -> Probe | None:  # fmt: skip
    """The probe of ``fact`` (with ``object_`` as the answer, if given); ``None`` if unprobeable.

    ``context`` says what stands in front of a causal LM's prompt (a masked LM reads the
    statement framed as in training, whatever the context)."""
    answer_text = fact.object if object_ is None else object_
    before, after = fact.relation.parts(fact.subject, template)
    lead = f"{context.text} " if causal and context.text else ""
    prompt = lead + before.rstrip()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_ids = encode(prompt)
    with_answer = encode(lead + before + answer_text)
    if with_answer[: len(prompt_ids)] != prompt_ids or len(with_answer) == len(prompt_ids):
        return None
    answer_ids = with_answer[len(prompt_ids) :]
    subject = _subject_span(encode, fact, template, with_answer, lead)
    if causal:
        prefix = context_prefix(tokenizer, context)
        ids = prefix + with_answer
        first = len(prefix) + len(prompt_ids)
        shifted = tuple(len(prefix) + p for p in subject)
        return Probe(ids, list(range(first, first + len(answer_ids))), answer_ids, shifted)
    full = encode(before + answer_text + after)
    if full[: len(with_answer)] != with_answer or tokenizer.mask_token_id is None:
        return None
    masked = list(full)
    for position in range(len(prompt_ids), len(with_answer)):
        masked[position] = tokenizer.mask_token_id
    # the framing of a training block and of BERT's inputs: [CLS]/<s> ... [SEP]/</s>
    first, last = boundary_ids(tokenizer)
    prefix = [first] if first is not None else []
    wrapped = prefix + masked + ([last] if last is not None else [])
    positions = [len(prefix) + p for p in range(len(prompt_ids), len(with_answer))]
    return Probe(wrapped, positions, answer_ids, tuple(len(prefix) + p for p in subject))


def context_prefix(tokenizer: PreTrainedTokenizerBase, context: PromptContext) -> list[int]:
    """The ids in front of a causal prompt's text: the end-of-document token for ``end-of-text``,
    else what the tokenizer itself puts in front of a text (nothing for SmolLM2)."""
    from palimpsest.data.tokenization import leading_special_ids

    if context.end_of_text:
        start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        return [start] if start is not None else []
    return leading_special_ids(tokenizer)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id a left-padded batch is padded with: the tokenizer's pad, else its end of text, else 0
    (masked out either way, so any id does)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel, prompts: Sequence[list[int]], count: int, *, pad: int, batch_size: int = 32
) -> list[list[int]]:
    """The ``count`` tokens a causal LM writes greedily after each prompt's ids, exactly ``count``:
    no end-of-text stops it, so a continuation is never cut where the answer might follow. Prompts
    are left-padded (masked) so that a batch decodes together; the model's train/eval mode is kept."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    written: list[list[int]] = []
    try:
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            width = max(len(ids) for ids in batch)
            ids = torch.tensor([[pad] * (width - len(e)) + list(e) for e in batch], device=device)
            mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in batch], device=device)
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=count, min_new_tokens=count,
                do_sample=False, pad_token_id=pad, eos_token_id=None,
            )  # fmt: skip
            written += out[:, width:].tolist()
    finally:
        model.train(was_training)
    return written


def _subject_span(
    encode, fact: Fact, template: int, statement_ids: list[int], text_before: str = ""
) -> range:
    """Token positions of the subject inside ``statement_ids`` (empty if no boundary marks it)."""
    text = fact.relation.templates[template % len(fact.relation.templates)]
    lead = text_before + text.split("{subject}")[0]
    before = encode(lead.rstrip()) if lead.strip() else []  # the space belongs to the subject's token
    through = encode(lead + fact.subject)
    if through[: len(before)] != before or statement_ids[: len(through)] != through:
        return range(0)
    return range(len(before), len(through))


@dataclass
class RecallResult:
    """Per probed fact: recalled or not, and the answer's log-probability."""

    recalled: list[bool]
    logprob: list[float]
    unprobeable: int

    @property
    def accuracy(self) -> float:
        return sum(self.recalled) / len(self.recalled) if self.recalled else float("nan")


@torch.no_grad()
def score_probes(model: PreTrainedModel, probes: Sequence[Probe], *, pad_id: int = 0, batch_size: int = 64):
    """``(recalled, logprob)`` of each probe, in batches (right padding, attention mask).

    A causal LM's logits are computed only where an answer is read, and the start that a
    batch's probes share (a passage of text in front of each) is run once and reused from the
    key/value cache: probes after text cost little more than the prompts alone."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    causal = objective_of(model.config) == "clm"
    argument = cache_argument(model) if causal else None
    parameters = inspect.signature(model.forward).parameters
    recalled: list[bool] = []
    logprobs: list[float] = []
    for start in range(0, len(probes), batch_size):
        batch = probes[start : start + batch_size]
        # a causal LM predicts token i from position i - 1
        reads = [
            [p - 1 for p in probe.answer_positions] if causal else probe.answer_positions for probe in batch
        ]
        shared = _shared_start(batch, min(min(r) for r in reads)) if argument is not None else 0
        width = max(len(p.input_ids) for p in batch) - shared
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, probe in enumerate(batch):
            ids[row, : len(probe.input_ids) - shared] = torch.tensor(probe.input_ids[shared:])
            mask[row, : len(probe.input_ids) - shared] = 1
        arguments: dict = {}
        if shared:
            start_ids = torch.tensor([batch[0].input_ids[:shared]], device=device)
            keep_one = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
            cache = returned_cache(model(input_ids=start_ids, use_cache=True, **keep_one), argument)
            layers = []
            for layer in cache:  # keys and values (and a sliding window's size), one row -> the batch
                keys, values, *rest = (t for t in layer if t is not None)
                rows = len(batch)
                layers.append(
                    (keys.expand(rows, *keys.shape[1:]), values.expand(rows, *values.shape[1:]), *rest)
                )
            arguments[argument] = DynamicCache(ddp_cache_data=layers, config=model.config)
            arguments["use_cache"] = True
            mask = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], dim=1)
        kept = sorted({p - shared for r in reads for p in r})
        if causal and "logits_to_keep" in parameters:
            arguments["logits_to_keep"] = torch.tensor(kept, device=device)
            column = {p: i for i, p in enumerate(kept)}
        else:
            column = {p: p for p in kept}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **arguments).logits
        for row, probe in enumerate(batch):
            columns = torch.tensor([column[p - shared] for p in reads[row]], device=device)
            answer = torch.tensor(probe.answer_ids)
            rows = logits[row, columns].float().log_softmax(-1).cpu()
            recalled.append(bool((rows.argmax(-1) == answer).all()))
            logprobs.append(float(rows.gather(-1, answer.unsqueeze(-1)).sum()))
    model.train(was_training)
    return recalled, logprobs


def _shared_start(probes: Sequence[Probe], before: int) -> int:
    """How many first tokens every probe shares (none read: at most ``before``); 0 where that is
    too short to be worth a pass of its own."""
    first = probes[0].input_ids
    shared = min(before, *(len(p.input_ids) for p in probes))
    for probe in probes[1:]:
        while shared and probe.input_ids[:shared] != first[:shared]:
            shared -= 1
    return shared if shared >= 4 and len(probes) > 1 else 0


def fact_recall(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: Sequence[Fact],
    *,
    template: int = 0,
    batch_size: int = 64,
    context: PromptContext = PLAIN,
) -> RecallResult:
    """Exact-match recall of ``facts`` through template ``template`` (see the module docstring)."""
    causal = objective_of(model.config) == "clm"
    probes = [
        build_probe(tokenizer, fact, template=template, causal=causal, context=context) for fact in facts
    ]
    usable = [probe for probe in probes if probe is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    recalled, logprob = score_probes(model, usable, pad_id=pad, batch_size=batch_size)
    return RecallResult(recalled, logprob, unprobeable=len(probes) - len(usable))
