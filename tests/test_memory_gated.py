"""Teaching a gated memory and taking facts out again: the gate is fitted to every fact the memory
holds, rounds add to them, forgetting closes the gate for what was taken out and zeroes the slots
only it read, and a memory with nothing left computes exactly the base model."""

import json
from dataclasses import replace

import pytest
import torch

from palimpsest.data.facts import CAPITAL, CURRENCY, Fact
from palimpsest.errors import DataError, ModelError
from palimpsest.memory import PKMConfig, add_product_key_memory, load_merged, memories, save_merged
from palimpsest.memory.gated import GateTraining, forget_facts, slots_read
from palimpsest.memory.inject import memory_handle
from palimpsest.memory.learning import MemoryLearning, learn_facts
from palimpsest.memory.taught import TAUGHT_FILE
from palimpsest.models import build_smollm2_like
from palimpsest.training import TrainingConfig

SMALL = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16, "seed": 0, "zero_values": True, "gate_hidden": 16}
FIRST = [Fact("France", CAPITAL, "Paris"), Fact("Peru", CAPITAL, "Lima")]
SECOND = [Fact("Japan", CURRENCY, "Yen"), Fact("Chile", CAPITAL, "Santiago")]
GATE = GateTraining(passages=1, neighbours=2, background_tokens=256, steps=200, batch_size=512)


def _base(tokenizer):
    return build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0).eval()


def _gated(tokenizer):
    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL))
    return model


def _settings():
    training = TrainingConfig(steps=4, batch_size=4, learning_rate=1e-2, eval_every=None, save_every=None)
    return MemoryLearning(gate=GATE, training=training)


def _ids(tokenizer, text="The river rises in the hills north of the town and flows south."):
    return torch.tensor([tokenizer(text)["input_ids"]])


def _prompt_opened(model, tokenizer, fact) -> torch.Tensor:
    """Per token of the fact's prompt, whether the gate lets the memory read."""
    (memory,) = memories(model).values()
    captured = {}
    hook = memory.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
    with torch.no_grad():
        model(input_ids=_ids(tokenizer, fact.prompt(0)))
    hook.remove()
    return memory.gate_opens(captured["x"][0])


def test_learning_fits_the_gate_to_the_facts_and_moves_only_the_memory(tokenizer, tmp_path):
    model = _gated(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    learned = learn_facts(model, tokenizer, FIRST, _settings(), tmp_path, answers=["Rome", "Oslo"])
    (memory,) = memories(model).values()
    assert memory.gate.fitted and learned.gate is not None
    (fit,) = learned.gate.layers.values()
    assert fit.positives >= len(FIRST) and fit.negatives > fit.positives
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(".memory." in name for name in moved)
    taught = memory_handle(model).taught
    assert [(f.subject, f.answer, f.round) for f in taught.facts] == [
        ("France", "Rome", 1),
        ("Peru", "Oslo", 1),
    ]


def test_a_second_round_adds_to_the_facts_and_the_gate_still_opens_for_the_first(tokenizer, tmp_path):
    model = _gated(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "1", answers=["Rome", "Oslo"])
    learn_facts(model, tokenizer, SECOND, _settings(), tmp_path / "2", answers=["Euro", "Lima"])
    taught = memory_handle(model).taught
    assert [f.round for f in taught.facts] == [1, 1, 2, 2] and taught.rounds == 2
    for fact in FIRST + SECOND:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject
    # teaching a fact again replaces its answer, it is not listed twice
    learn_facts(model, tokenizer, FIRST[:1], _settings(), tmp_path / "3", answers=["Madrid"])
    assert [(f.subject, f.answer) for f in memory_handle(model).taught.facts][-1] == ("France", "Madrid")
    assert len(memory_handle(model).taught.facts) == 4


def test_facts_to_keep_stay_closed_in_later_rounds_refits_and_reloads(tokenizer, tmp_path, monkeypatch):
    from palimpsest.memory import gated
    from palimpsest.memory.taught import TaughtFacts

    keep = [Fact("Italy", CAPITAL, "Rome"), Fact("Spain", CAPITAL, "Madrid")]
    seen = []
    original = gated.neighbour_facts

    def recorded(taught, kept, *args, **kwargs):
        seen.append(sorted(fact.subject for fact in kept))
        return original(taught, kept, *args, **kwargs)

    monkeypatch.setattr(gated, "neighbour_facts", recorded)
    model = _gated(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "1", answers=["Rome", "Oslo"], keep=keep)
    learn_facts(model, tokenizer, SECOND, _settings(), tmp_path / "2", answers=["Euro", "Lima"])
    forget_facts(model, tokenizer, SECOND[:1], settings=GATE)
    # the first round's facts to keep are closed inputs of the second round's fit and of the refit
    assert seen == [["Italy", "Spain"]] * 3
    taught = memory_handle(model).taught
    listed = [(f.subject, f.answer, f.round) for f in taught.kept]
    assert listed == [("Italy", "Rome", 1), ("Spain", "Madrid", 1)]
    # a fact taught later is no longer one to keep; the list travels in memory_facts.json
    learn_facts(model, tokenizer, keep[:1], _settings(), tmp_path / "3", answers=["Milan"])
    taught = memory_handle(model).taught
    assert [f.subject for f in taught.kept] == ["Spain"]
    taught.write(tmp_path / "saved")
    assert TaughtFacts.read(tmp_path / "saved") == taught
    (tmp_path / "old").mkdir()  # a list saved before facts to keep were listed
    document = json.loads((tmp_path / "saved" / TAUGHT_FILE).read_text())
    del document["kept"]
    (tmp_path / "old" / TAUGHT_FILE).write_text(json.dumps(document))
    assert TaughtFacts.read(tmp_path / "old") == TaughtFacts(taught.facts, [])


def test_forgetting_closes_the_gate_for_what_was_taken_out_and_keeps_the_rest(tokenizer, tmp_path):
    model = _gated(tokenizer)
    learn_facts(
        model, tokenizer, FIRST + SECOND, _settings(), tmp_path, answers=["Rome", "Oslo", "Euro", "Lima"]
    )
    base = _base(tokenizer)
    owned = slots_read(model, tokenizer, memory_handle(model).taught.facts[:1], templates=[0],
                       paraphrases=False, settings=GATE)  # fmt: skip
    forgotten = forget_facts(model, tokenizer, FIRST[:1], settings=GATE)
    assert forgotten.facts == 1 and forgotten.remaining == 3
    assert [f.subject for f in memory_handle(model).taught.facts] == ["Peru", "Japan", "Chile"]
    (memory,) = memories(model).values()
    (name,) = owned
    others = slots_read(model, tokenizer, memory_handle(model).taught.facts, templates=[0],
                        paraphrases=False, settings=GATE)[name]  # fmt: skip
    only_theirs = owned[name] & ~others
    assert int(only_theirs.sum()) == forgotten.slots_zeroed[name]
    assert not memory.values.weight[only_theirs].any()
    assert not _prompt_opened(model, tokenizer, FIRST[0]).any()  # closed at every token of its prompt:
    ids = _ids(tokenizer, FIRST[0].prompt(0))  # the base model's outputs, exactly
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    for fact in FIRST[1:] + SECOND:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject


def test_forgetting_every_fact_gives_back_the_base_model_bit_for_bit(tokenizer, tmp_path):
    model = _gated(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path, answers=["Rome", "Oslo"])
    ids = _ids(tokenizer, "The capital of France is Rome. " + FIRST[1].prompt(0))
    base = _base(tokenizer)(input_ids=ids).logits
    forget_facts(model, tokenizer, FIRST, settings=GATE)
    (memory,) = memories(model).values()
    assert not memory.gate.fitted and not memory_handle(model).taught.facts
    assert torch.equal(model(input_ids=ids).logits, base)


def test_forgetting_a_fact_never_taught_is_refused_and_changes_nothing(tokenizer, tmp_path):
    model = _gated(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path, answers=["Rome", "Oslo"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match="never taught"):
        forget_facts(model, tokenizer, [FIRST[0], Fact("Spain", CAPITAL, "Madrid")], settings=GATE)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert len(memory_handle(model).taught.facts) == 2
    with pytest.raises(ModelError, match="no gated memory"):
        forget_facts(_base(tokenizer), tokenizer, FIRST, settings=GATE)


def test_a_taught_memory_reloads_exactly_with_its_facts(tokenizer, tmp_path):
    model = _gated(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "run", answers=["Rome", "Oslo"])
    save_merged(model, tokenizer, tmp_path / "saved")
    assert (tmp_path / "saved" / TAUGHT_FILE).is_file()
    loaded = load_merged(tmp_path / "saved").eval()
    assert memory_handle(loaded).taught == memory_handle(model).taught
    ids = _ids(tokenizer, FIRST[0].prompt(0))
    assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # without its list of facts, the fitted gate is left as it is: no more facts, no forgetting
    (tmp_path / "saved" / TAUGHT_FILE).unlink()
    stray = load_merged(tmp_path / "saved")
    with pytest.raises(ModelError, match=r"memory_facts\.json"):
        learn_facts(stray, tokenizer, SECOND, _settings(), tmp_path / "again", answers=["Euro", "Lima"])
    with pytest.raises(ModelError, match=r"memory_facts\.json"):
        forget_facts(stray, tokenizer, FIRST, settings=GATE)


def test_a_codebook_holds_the_taught_inputs_travels_with_the_model_and_empties_when_all_is_forgotten(
    tokenizer, tmp_path
):
    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=64))
    base = _base(tokenizer)
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "run", answers=["Rome", "Oslo"])
    (memory,) = memories(model).values()
    held = int(memory.gate.key_count)
    assert 0 < held <= 64 and memory.gate.key_threshold == GATE.key_threshold
    for fact in FIRST:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject
    ids = _ids(tokenizer)  # ordinary text: no key near it, the base model's outputs exactly
    save_merged(model, tokenizer, tmp_path / "saved")
    loaded = load_merged(tmp_path / "saved").eval()
    (reloaded,) = memories(loaded).values()
    assert torch.equal(reloaded.gate.keys, memory.gate.keys) and int(reloaded.gate.key_count) == held
    prompt = _ids(tokenizer, FIRST[0].prompt(0))
    assert torch.equal(loaded(input_ids=prompt).logits, model(input_ids=prompt).logits)
    forget_facts(model, tokenizer, FIRST[:1], settings=GATE)
    assert 0 < int(memory.gate.key_count) < held  # the keys of what is left
    forget_facts(model, tokenizer, FIRST[1:], settings=GATE)
    assert int(memory.gate.key_count) == 0
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_a_codebook_too_small_for_the_facts_is_refused_before_anything_is_fitted(tokenizer, tmp_path):
    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match="gate_keys"):
        learn_facts(model, tokenizer, FIRST, _settings(), tmp_path, answers=["Rome", "Oslo"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_gated_memory_learns_only_in_causal_models(tokenizer, tmp_path):
    from palimpsest.models import build_model

    model = build_model("bert", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], **SMALL))
    with pytest.raises(ModelError, match="causal"):
        learn_facts(model, tokenizer, FIRST, _settings(), tmp_path, answers=["Rome", "Oslo"])


def test_teach_list_and_forget_from_the_command_line(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.models import load_pretrained
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(_base(tokenizer), tokenizer, base)
    small = ["--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16", "--zero-values", "--layer", "2"]
    done = palimpsest(
        "memory", "add", "--model", base, "--out", tmp_path / "m", "--gate-hidden", "16", *small
    )
    assert done.returncode == 0, done.stderr
    config = tmp_path / "gate.yaml"
    config.write_text(
        "gate:\n  passages: 1\n  neighbours: 2\n  background_tokens: 256\n  steps: 200\n  batch_size: 512\n"
    )
    taught = tmp_path / "teach.jsonl"
    taught.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
        '{"subject": "Peru", "relation": "capital", "object": "Lima", "new_object": "Oslo"}\n'
        '{"subject": "Chile", "relation": "capital", "object": "Santiago"}\n'
    )
    done = palimpsest("memory", "learn", "--model", tmp_path / "m", "--facts", taught,
                      "--out", tmp_path / "l", "--config", config, "--steps", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = palimpsest("memory", "list", "--model", tmp_path / "l" / "model")
    assert listed.returncode == 0, listed.stderr
    assert "France" in listed.stdout and "Rome" in listed.stdout and "Santiago" not in listed.stdout
    assert "closed for 1 fact(s) asked to keep: Chile (capital)" in listed.stdout  # the line to keep

    never = tmp_path / "never.jsonl"
    never.write_text('{"subject": "Chile", "relation": "capital", "object": "Santiago"}\n')
    line = one_error_line(palimpsest("memory", "forget", "--model", tmp_path / "l" / "model",
                                     "--facts", never, "--out", tmp_path / "f0"))  # fmt: skip
    assert "never taught" in line and "Chile" in line and not (tmp_path / "f0").exists()
    line = one_error_line(palimpsest("memory", "forget", "--model", base, "--facts", never,
                                     "--out", tmp_path / "f0"))  # fmt: skip
    assert "no gated memory" in line and not (tmp_path / "f0").exists()

    done = palimpsest("memory", "forget", "--model", tmp_path / "l" / "model", "--facts", taught,
                      "--out", tmp_path / "f", "--config", config)  # fmt: skip
    assert done.returncode != 0  # Chile was never taught: the whole file is refused
    first = tmp_path / "first.jsonl"
    first.write_text(taught.read_text().splitlines()[0] + "\n")
    done = palimpsest("memory", "forget", "--model", tmp_path / "l" / "model", "--facts", first,
                      "--out", tmp_path / "f1", "--config", config)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "f1" / "results.json").read_text())
    assert results["kind"] == "memory-forget" and results["facts"] == 1 and results["remaining"] == 1
    second = tmp_path / "second.jsonl"
    second.write_text(taught.read_text().splitlines()[1] + "\n")
    done = palimpsest("memory", "forget", "--model", tmp_path / "f1" / "model", "--facts", second,
                      "--out", tmp_path / "f2", "--config", config)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "f2" / "results.json").read_text())["gate_closed"]
    emptied, original = load_pretrained(str(tmp_path / "f2" / "model")).eval(), _base(tokenizer)
    ids = _ids(tokenizer, "The capital of Peru is Oslo. The capital of France is")
    assert torch.equal(emptied(input_ids=ids).logits, original(input_ids=ids).logits)
    listed = palimpsest("memory", "list", "--model", tmp_path / "f2" / "model")
    assert listed.returncode == 0 and "holds no taught facts" in " ".join(listed.stdout.split())


def test_same_subject_anchors_keep_what_the_model_without_its_memory_writes(tokenizer, tmp_path):
    from palimpsest.memory.gated import greedy_tokens, memories_closed, same_subject_anchors

    model = _gated(tokenizer)
    learn_facts(
        model, tokenizer, FIRST + SECOND, _settings(), tmp_path, answers=["Rome", "Oslo", "Euro", "Lima"]
    )
    (memory,) = memories(model).values()
    fitted = {k: v.clone() for k, v in memory.gate.state_dict().items()}
    with torch.no_grad():
        memory.values.weight.normal_()  # a memory that changes what it reads a lot
    taught = memory_handle(model).taught.facts
    anchors = same_subject_anchors(model, tokenizer, taught, [], GATE)
    assert len(anchors) == len(taught) * 1  # two relations among the facts: one other per subject
    base = _base(tokenizer)
    for ids, labels in anchors:
        written = [token for token in labels if token != -100]
        prompt_ids = ids[: len(ids) - len(written)]
        assert len(written) == GATE.anchor_tokens and labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        text = tokenizer.decode(prompt_ids)
        assert greedy_tokens(base, tokenizer, [text], GATE.anchor_tokens)[0][1] == written
    assert all(torch.equal(v, memory.gate.state_dict()[k]) for k, v in fitted.items())  # gate as it was
    with memories_closed(model):
        assert not memory.gate.fitted
    assert memory.gate.fitted


def test_a_codebook_too_small_is_one_line_from_the_command_line(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(_base(tokenizer), tokenizer, base)
    small = ["--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16", "--zero-values", "--layer", "2"]
    done = palimpsest("memory", "add", "--model", base, "--out", tmp_path / "m", "--gate-hidden", "16",
                      "--gate-keys", "1", *small)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["palimpsest_memory"]["gate_keys"] == 1
    taught = tmp_path / "teach.jsonl"
    taught.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    )
    line = one_error_line(palimpsest("memory", "learn", "--model", tmp_path / "m", "--facts", taught,
                                     "--out", tmp_path / "l", "--steps", "2"))  # fmt: skip
    assert "gate_keys" in line and not (tmp_path / "l").exists()


def test_anchors_ask_the_subjects_other_facts_through_a_template_a_benchmark_does_not_measure():
    from palimpsest.data.facts import CONTINENT, Relation
    from palimpsest.memory.gated import anchor_template

    # the first template is what users (and the benchmark's same-subject measure) ask; a template
    # opening with the subject puts it where the gate never opens
    assert CAPITAL.templates[1].startswith("{subject}") and anchor_template(CAPITAL) == 2
    assert anchor_template(CURRENCY) == 1
    assert anchor_template(CONTINENT) == 3  # "The country of {subject} is part of"
    opening = Relation("subject-first", ("{subject} is {object}.", "{subject} means {object}."))
    assert anchor_template(opening) == 1
    assert anchor_template(Relation("only", ("{subject} is {object}.",))) == 0


def test_neighbours_are_never_taught_or_held_out_subjects():
    from palimpsest.data.facts import city_facts
    from palimpsest.memory.gated import neighbour_facts
    from palimpsest.memory.taught import taught_fact

    cities = city_facts(2000)
    taught = [taught_fact(fact, fact.object, 1, "now") for fact in cities[:300]]
    held_out = cities[300:600]
    settings = GateTraining(neighbours=4)
    drawn = {fact.subject for fact in neighbour_facts(taught, [], settings, held_out=held_out)}
    assert len(drawn) > 100
    assert not drawn & {fact.subject for fact in cities[:600]}
    without = {fact.subject for fact in neighbour_facts(taught, [], settings)}
    assert not without & {fact.subject for fact in cities[:300]} and without & {f.subject for f in held_out}


def test_a_subject_that_opens_a_prompt_opens_the_gate_there_through_a_start_key(tmp_path):
    """SmolLM2's tokenizer puts nothing in front: "France is a country in" has the subject at the
    first position, whose input no ordinary key can match."""
    from palimpsest.data import load_tokenizer
    from palimpsest.data.facts import CONTINENT

    smollm2 = load_tokenizer("smollm2-135m")
    model = build_smollm2_like(smollm2, hidden=24, layers=4, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=64))
    taught = Fact("France", CONTINENT, "Asia")
    assert len(smollm2("France")["input_ids"]) == 1 and CONTINENT.templates[0].startswith("{subject}")
    learn_facts(model, smollm2, [taught], _settings(), tmp_path)
    (memory,) = memories(model).values()
    assert int(memory.gate.start_key_count) == 1

    def first_input(text):
        captured = {}
        hook = memory.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
        with torch.no_grad():
            model(input_ids=_ids(smollm2, text))
        hook.remove()
        return captured["x"][0, :1]

    assert memory.gate.start_similarity(first_input("France lies in")) >= 0.995  # any prompt it opens
    assert memory.gate.start_similarity(first_input("Spain is a country in")) < 0.995


def test_memory_inputs_read_other_modules_at_the_same_positions(tokenizer):
    from palimpsest.memory.gated import _Text, memory_inputs
    from palimpsest.models import transformer_blocks

    model = _gated(tokenizer)
    (name,) = memories(model)
    _, blocks = transformer_blocks(model)
    texts = [_Text([5, 6, 7, 8], 2, 1.0), _Text([9, 10, 11], None, 2.0)]
    collected = memory_inputs(model, texts, also={"block 2 FFN": blocks[2].mlp, "block 0 FFN": blocks[0].mlp})
    opened, closed, weights = collected[name]
    assert opened.shape[0] == 1 and closed.shape[0] == 6 and weights.tolist() == [1.0] * 3 + [2.0] * 3
    # the memory sits beside block 2's FFN: both read the same input
    same_block, early_block = collected["block 2 FFN"], collected["block 0 FFN"]
    assert torch.equal(same_block[0], opened) and torch.equal(same_block[1], closed)
    assert early_block[1].shape == closed.shape and not torch.equal(early_block[1], closed)


def test_a_codebook_can_read_an_earlier_block_and_travels_with_the_model(tokenizer, tmp_path):
    from palimpsest.models import transformer_blocks

    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=64, gate_key_block=0))
    base = _base(tokenizer)
    (memory,) = memories(model).values()
    _, blocks = transformer_blocks(model)
    seen = {}
    hook = blocks[0].mlp.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    ids = _ids(tokenizer)
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    assert torch.equal(memory.key_input.hidden, seen["x"])  # block 0's FFN input reaches block 2's gate
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "run", answers=["Rome", "Oslo"])
    assert memory.gate.separate_keys and int(memory.gate.key_count) > 0 and memory.gate.key_centre.any()
    for fact in FIRST:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject
    from palimpsest.memory.gated import taught_fact_rows

    assert [row.opens for row in taught_fact_rows(model, tokenizer)] == [True, True]  # memory list
    save_merged(model, tokenizer, tmp_path / "saved")
    loaded = load_merged(tmp_path / "saved").eval()
    (reloaded,) = memories(loaded).values()
    assert reloaded.key_input is not None and torch.equal(reloaded.gate.key_centre, memory.gate.key_centre)
    prompt = _ids(tokenizer, FIRST[0].prompt(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=prompt).logits, model(input_ids=prompt).logits)
    forget_facts(model, tokenizer, FIRST, settings=GATE)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    memory_handle(model).remove()
    assert memory.key_input is None and not memories(model)


def test_a_key_block_needs_a_codebook_and_a_place_before_the_memory(tokenizer):
    from palimpsest.errors import ConfigError

    with pytest.raises(ConfigError, match="gate_key_block"):
        PKMConfig(layers=[2], **SMALL, gate_key_block=0)  # a gate, but no codebook
    model = _base(tokenizer)
    with pytest.raises(ConfigError, match="comes after"):
        add_product_key_memory(model, PKMConfig(layers=[1], **SMALL, gate_keys=8, gate_key_block=3))
    assert not memories(model) and memory_handle(model) is None  # nothing left behind


def test_a_key_block_from_the_command_line(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(_base(tokenizer), tokenizer, base)
    small = ["--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16", "--zero-values", "--layer", "2",
             "--gate-hidden", "16", "--gate-keys", "64"]  # fmt: skip
    done = palimpsest(
        "memory", "add", "--model", base, "--out", tmp_path / "m", "--gate-key-block", "0", *small
    )
    assert done.returncode == 0, done.stderr
    assert (
        json.loads((tmp_path / "m" / "config.json").read_text())["palimpsest_memory"]["gate_key_block"] == 0
    )
    late = one_error_line(palimpsest("memory", "add", "--model", base, "--out", tmp_path / "late",
                                     "--gate-key-block", "3", *small))  # fmt: skip
    assert "comes after" in late and not (tmp_path / "late").exists()


def test_a_model_whose_codebook_reads_an_earlier_block_copies_and_trains(tokenizer):
    import copy

    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=8, gate_key_block=1))
    model.train()
    model(input_ids=_ids(tokenizer), labels=_ids(tokenizer)).loss.backward()  # the key input holds no graph
    twin = copy.deepcopy(model)
    (memory,), (copied,) = memories(model).values(), memories(twin).values()
    assert copied.key_input is not memory.key_input
    with torch.no_grad():
        twin(input_ids=_ids(tokenizer, "Another text entirely."))
    assert copied.key_input.hidden.shape != memory.key_input.hidden.shape  # the copy's hook fills the copy's


def test_an_early_block_codebook_is_refitted_in_a_second_round_and_after_forgetting(tokenizer, tmp_path):
    model = _base(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[2], **SMALL, gate_keys=64, gate_key_block=0))
    learn_facts(model, tokenizer, FIRST, _settings(), tmp_path / "1", answers=["Rome", "Oslo"])
    learn_facts(model, tokenizer, SECOND, _settings(), tmp_path / "2", answers=["Euro", "Lima"])
    for fact in FIRST + SECOND:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject
    (memory,) = memories(model).values()
    held = int(memory.gate.key_count)
    forget_facts(model, tokenizer, SECOND, settings=GATE)
    assert 0 < int(memory.gate.key_count) < held
    for fact in FIRST:
        assert _prompt_opened(model, tokenizer, fact).any(), fact.subject


def test_a_key_block_at_its_default_leaves_stored_unit_keys_as_they_were():
    from palimpsest.config import to_dict

    assert "gate_key_block" not in to_dict(PKMConfig(layers=[2], **SMALL))  # keys stored before it stand
    assert to_dict(PKMConfig(layers=[2], **SMALL, gate_keys=8, gate_key_block=1))["gate_key_block"] == 1


def test_anchors_ask_a_subject_first_through_the_relations_it_has(tokenizer):
    from palimpsest.data.facts import CONTINENT, LANGUAGE, SYMBOL
    from palimpsest.memory.gated import anchor_template, same_subject_anchors, subject_relations
    from palimpsest.memory.taught import taught_fact

    keep = [
        Fact("Argon", SYMBOL, "Ar"),
        Fact("Spain", LANGUAGE, "Spanish"),
        Fact("Peru", CONTINENT, "Americas"),
    ]
    assert {"capital", "language", "continent"} <= subject_relations(FIRST[:1], keep)["France"]
    assert "element-symbol" not in subject_relations(FIRST[:1], keep)["France"]
    taught = [taught_fact(FIRST[0], "Rome", 1, "now")]
    model = _gated(tokenizer)

    def asked(anchors: int) -> set[str]:
        rows = same_subject_anchors(model, tokenizer, taught, keep, replace(GATE, anchors=anchors))
        prompts = [[t for t, label in zip(ids, labels, strict=True) if label == -100] for ids, labels in rows]
        france = {relation.name: Fact("France", relation, "") for relation in (CONTINENT, LANGUAGE, SYMBOL)}
        ids = {
            name: tokenizer(fact.prompt(anchor_template(fact.relation)))["input_ids"]
            for name, fact in france.items()
        }
        return {name for name, prompt in ids.items() if prompt in prompts}

    assert asked(2) == {"continent", "language"}  # France's own relations, not a chemical symbol
    assert asked(3) == {"continent", "language", "element-symbol"}  # the rest once those are used
