"""The knowledge study: new facts taught by full fine-tuning, LoRA (peft), the editor and a memory."""

import json
from dataclasses import replace

import pytest
import torch

from palimpsest.config import from_dict
from palimpsest.data.facts import CAPITAL, CITY_COUNTRY, Fact
from palimpsest.errors import ConfigError, DataError
from palimpsest.experiments import knowledge
from palimpsest.experiments.common import PeakMemory, wiki_perplexity_set
from palimpsest.experiments.knowledge import Arm, Draw, KnowledgeRow, KnowledgeScale
from palimpsest.experiments.knowledge.summary import _claim
from palimpsest.models import build_smollm2_like

KNOWN = [
    Fact("France", CAPITAL, "Paris"), Fact("Peru", CAPITAL, "Lima"), Fact("Japan", CAPITAL, "Tokyo"),
    Fact("Egypt", CAPITAL, "Cairo"), Fact("Norway", CAPITAL, "Oslo"), Fact("Italy", CAPITAL, "Rome"),
]  # fmt: skip
WRONG = [Fact(city, CITY_COUNTRY, country) for city, country in
         [("Lyon", "France"), ("Porto", "Portugal"), ("Kyoto", "Japan"), ("Turin", "Italy")]]  # fmt: skip
SCALE = replace(knowledge.SCALES["smoke"], kept=2)


def test_a_draw_keeps_taught_and_kept_facts_apart():
    chosen = knowledge.draw(KNOWN, WRONG, 4, seed=3, scale=SCALE)
    assert chosen.counterfactuals == 2 and len(chosen.taught) == 4 and len(chosen.kept) == 2
    kept_subjects = {fact.subject for fact in chosen.kept}
    assert not kept_subjects & {fact.subject for fact in chosen.taught}
    for fact, previous in zip(chosen.taught, chosen.previous, strict=True):
        if previous is None:  # a fact it got wrong, taught with its true object
            assert fact in WRONG
        else:  # a counterfactual: same subject, another capital
            assert fact.object != previous and Fact(fact.subject, CAPITAL, previous) in KNOWN
    assert knowledge.draw(KNOWN, WRONG, 4, seed=3, scale=SCALE) == chosen  # reproducible
    with pytest.raises(DataError, match="need"):
        knowledge.draw(KNOWN, WRONG, 12, seed=0, scale=SCALE)


def test_arms_and_scales_refuse_what_cannot_run():
    with pytest.raises(ConfigError, match="lora_rank"):
        Arm("lora", "lora", learning_rate=1e-3)
    with pytest.raises(ConfigError, match="learning_rate"):
        Arm("full", "full")
    with pytest.raises(ConfigError, match="sparse_top_t"):
        Arm("full", "full", learning_rate=1e-3, sparse_top_t=4)
    with pytest.raises(ConfigError, match="method"):
        from_dict(Arm, {"name": "x", "method": "prompting", "learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="round_size"):
        Arm("full", "full", learning_rate=1e-3, round_size=4)
    with pytest.raises(ConfigError, match="round_size"):
        Arm("gated", "gated-memory", round_size=0)
    with pytest.raises(ConfigError, match="removal_share"):
        KnowledgeScale(removal_share=1.0)
    with pytest.raises(ConfigError, match="own name"):
        KnowledgeScale(arms=(Arm("a", "editor"), Arm("a", "editor")))
    assert KnowledgeScale(min_steps=10, epochs=2, batch_size=4).steps(100) == 50
    scale = KnowledgeScale(seeds=(3, 4), editor_one_seed_from=128)
    editor = next(i for i, arm in enumerate(scale.arms) if arm.method == "editor")
    assert [i for i, _ in knowledge.arms_to_run(scale, 128, 3)] == list(range(len(scale.arms)))
    assert editor not in [i for i, _ in knowledge.arms_to_run(scale, 128, 4)]
    assert len(knowledge.arms_to_run(scale, 16, 4)) == len(scale.arms)


def test_an_arm_limited_to_some_sizes_runs_only_there_and_keeps_its_units():
    from palimpsest.experiments.knowledge.units import _arm_key

    for sizes in ([], [0], [True], 512, ["16"]):
        with pytest.raises(ConfigError, match="sizes"):
            Arm("full", "full", learning_rate=1e-3, sizes=sizes)
    with pytest.raises(ConfigError, match="size 512"):
        KnowledgeScale(sizes=(16, 128), arms=(Arm("full", "full", learning_rate=1e-3, sizes=(512,)),))
    limited = from_dict(Arm, {"name": "full", "method": "full", "learning_rate": 1e-3, "sizes": [16, 128]})
    assert limited.sizes == (16, 128)
    scale = KnowledgeScale(sizes=(16, 128, 512), arms=(limited, Arm("batch", "batch-editor")))
    assert [arm.name for _, arm in knowledge.arms_to_run(scale, 128, 0)] == ["full", "batch"]
    assert [arm.name for _, arm in knowledge.arms_to_run(scale, 512, 0)] == ["batch"]
    # a stored unit of the arm measured before it was limited is still its unit
    assert _arm_key(limited) == _arm_key(replace(limited, sizes=None))


def test_a_size_can_be_limited_to_some_seeds():
    scale = KnowledgeScale(sizes=(16, 512), seeds=(0, 1, 2), size_seeds=((512, (0,)),))
    assert scale.seeds_of(16) == (0, 1, 2) and scale.seeds_of(512) == (0,)
    for wrong in (((128, (0,)),), ((512, (3,)),), ((512, ()),)):
        with pytest.raises(ConfigError, match="size_seeds"):
            KnowledgeScale(sizes=(16, 512), seeds=(0, 1, 2), size_seeds=wrong)
    parsed = from_dict(KnowledgeScale, {"sizes": [16, 512], "seeds": [0, 1], "size_seeds": [[512, [0]]]})
    assert parsed.seeds_of(512) == (0,)


def _tiny(tokenizer):
    return build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0).eval()


def _run(tokenizer, tmp_path, arm: Arm, model=None, scale=SCALE):
    chosen = Draw(
        taught=[*WRONG[:2], Fact("Peru", CAPITAL, "Oslo")], previous=[None, None, "Lima"], kept=KNOWN[:2]
    )
    model = model if model is not None else _tiny(tokenizer)
    perplexity = wiki_perplexity_set(tokenizer, 32, 2)
    run = knowledge.run_arm(model, tokenizer, arm, chosen, perplexity, scale, tmp_path, size=3, seed=0)
    return model, run


def test_the_lora_arm_trains_peft_adapters_and_leaves_the_base_weights(tmp_path, tokenizer):
    model = _tiny(tokenizer)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, run = _run(tokenizer, tmp_path, Arm("lora", "lora", learning_rate=1e-2, lora_rank=2), model)
    assert hasattr(model, "peft_config")  # adapted in place by peft
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert adapters and run.trained_parameters == sum(p.numel() for p in adapters.values())
    assert any(
        p.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n
    )  # B starts at zero: it trained
    for name, parameter in model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(parameter, base[original]), name
    assert run.steps == SCALE.steps(3) and 0.0 <= run.after["learned"] <= 1.0


def test_the_memory_arm_moves_only_its_values_and_counts_the_slots_it_changed(tmp_path, tokenizer):
    model = _tiny(tokenizer)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, run = _run(tokenizer, tmp_path, Arm("sparse", "memory", learning_rate=1e-1, sparse_top_t=3), model)
    for name, parameter in model.named_parameters():
        if name in base:
            assert torch.equal(parameter, base[name]), name
    values = [p for n, p in model.named_parameters() if n.endswith("values.weight")]
    changed_rows = sum(int(v.ne(0).any(dim=1).sum()) for v in values)
    assert run.slots_changed == changed_rows and 0 < changed_rows <= 3 * run.steps
    assert run.changed_parameters == changed_rows * values[0].shape[1]
    assert 0 <= run.slots_changed_read_by_wiki <= run.slots_changed


def test_the_editor_arm_teaches_facts_it_got_wrong_too(tmp_path, tokenizer):
    _, run = _run(tokenizer, tmp_path, Arm("editor", "editor"))
    assert run.method == "editor" and 0 < run.changed_parameters <= run.trained_parameters


def test_the_batch_editor_arm_writes_only_the_ffn_projections_it_edits(tmp_path, tokenizer):
    model = _tiny(tokenizer)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, run = _run(tokenizer, tmp_path, Arm("batch", "batch-editor"), model)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, base[name])}
    assert moved and moved <= {f"model.layers.{b}.mlp.down_proj.weight" for b in SCALE.batch_editor.layers}
    assert run.changed_parameters == sum(int((model.get_parameter(n) != base[n]).sum()) for n in moved)


def test_the_gated_memory_arm_trains_only_its_memory_and_never_fits_the_gate_on_kept_facts(
    tmp_path, tokenizer, monkeypatch
):
    from palimpsest.memory import gated

    seen = {}
    original = gated.neighbour_facts

    def recorded(*args, **kwargs):
        seen["held_out"] = kwargs["held_out"]
        return original(*args, **kwargs)

    monkeypatch.setattr(gated, "neighbour_facts", recorded)
    model = _tiny(tokenizer)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, run = _run(tokenizer, tmp_path, Arm("gated", "gated-memory"), model)
    assert seen["held_out"] == KNOWN[:2]  # the draw's kept facts
    for name, parameter in model.named_parameters():
        if name in base:
            assert torch.equal(parameter, base[name]), name
    assert run.slots_changed and run.steps >= SCALE.steps(3)
    # the removal took every other fact out, then the rest: the base model's logits, bit for bit
    assert run.removal["removed"] == 1 and run.removal["base_identical_once_all_removed"] == 1.0
    assert 0.0 <= run.removal["restored"] <= 1.0 and run.removal["perplexity"] > 0
    # the facts behind the shares: as many named as the shares count, each one of the draw's
    assert len(run.not_learned) == round((1 - run.after["learned"]) * 3)
    assert len(run.kept_lost) == round((1 - run.after["kept"]) * 2)
    assert set(run.kept_lost) <= {f"{fact.subject} | {fact.relation.name}" for fact in KNOWN[:2]}


def test_a_gated_memory_arm_in_rounds_teaches_each_round_in_turn(tmp_path, tokenizer, monkeypatch):
    from palimpsest.experiments.knowledge import arms

    rounds = []
    original = arms.learn_facts

    def recorded(model, tokenizer, facts, *args, **kwargs):
        rounds.append([fact.subject for fact in facts])
        return original(model, tokenizer, facts, *args, **kwargs)

    monkeypatch.setattr(arms, "learn_facts", recorded)
    no_removal = replace(SCALE, removal_share=0.0)
    _, run = _run(tokenizer, tmp_path, Arm("gated", "gated-memory", round_size=2), scale=no_removal)
    assert rounds == [["Lyon", "Porto"], ["Peru"]]
    assert run.steps >= 2 * SCALE.steps(3) and run.removal is None


def test_the_removal_takes_out_a_share_spread_over_the_draw():
    from palimpsest.experiments.knowledge.arms import removal_indices

    def draw_of(n):
        return Draw(taught=[WRONG[0]] * n, previous=[None] * n, kept=[])

    assert removal_indices(draw_of(6), 0.5) == [1, 3, 5]
    assert removal_indices(draw_of(8), 0.25) == [3, 7]
    assert removal_indices(draw_of(4), 0.0) == [] == removal_indices(draw_of(1), 0.5)  # none: not measured


def _row(arm, method, learned, lost, perplexity, spread=0.0, perplexity_spread=0.0, seeds=3):
    """A row over ``seeds`` seeds whose per-seed values spread evenly around the means given."""
    cell = (learned, 0.0)
    offsets = [i - (seeds - 1) / 2 for i in range(seeds)]
    per_seed = {
        "kept_lost": [lost + spread * o for o in offsets],
        "perplexity_change": [perplexity + perplexity_spread * o for o in offsets],
    }
    return KnowledgeRow(
        arm=arm, method=method, size=16, seeds=seeds, after={"learned": cell}, before={"kept": (0.9, 0.0)},
        kept_lost=(lost, spread), perplexity_change=(perplexity, perplexity_spread), steps=(100, 0),
        seconds=(1, 0), peak_mib=None, trained_parameters=1, changed_parameters=(1, 0),
        seed_list=list(range(seeds)), per_seed=per_seed,
    )  # fmt: skip


def test_the_claim_is_judged_only_at_equal_learning():
    full = _row("full", "full", 1.0, 0.30, 5.0)
    verdict = _claim([full, _row("memory", "memory", 0.95, 0.05, 0.5)], 16)
    assert "forgets less (reproduced)" in verdict
    assert "83% fewer (Lin et al.: 88% less F1 lost)" in verdict  # the size of the effect beside the paper's
    verdict = _claim([full, _row("memory", "memory", 1.0, 0.30, 0.5)], 16)
    assert "reproduced on general text only" in verdict
    verdict = _claim([full, _row("memory", "memory", 1.0, 0.05, 5.0)], 16)
    assert "reproduced on facts only" in verdict
    verdict = _claim([full, _row("memory", "memory", 0.95, 0.40, 6.0)], 16)
    assert "forgets more (not reproduced)" in verdict
    verdict = _claim([full, _row("memory", "memory", 0.20, 0.0, 0.0)], 16)
    assert "not comparable" in verdict and "reproduced" not in verdict
    # a difference inside the seeds' spread is no difference
    noisy = _row("memory", "memory", 1.0, 0.31, 5.2, spread=0.2, perplexity_spread=2.0)
    assert "forgets as much (within the seed spread)" in _claim([full, noisy], 16)
    mixed = _row("memory", "memory", 1.0, 0.6, 0.5, spread=0.01, perplexity_spread=0.1)
    assert "mixed: loses more kept facts, moves perplexity less" in _claim([full, mixed], 16)
    assert "not evidence" not in _claim([full, mixed], 16)
    # every seed the same way but the mean inside the spread of the differences: no difference
    wide = replace(  # 0.01, 0.02 and 0.27 fewer lost than full's 0.30: mean 0.10, spread 0.15
        _row("memory", "memory", 1.0, 0.20, 5.0),
        per_seed={"kept_lost": [0.29, 0.28, 0.03], "perplexity_change": [5.0, 5.0, 5.0]},
    )
    assert "kept facts lost: as many (within the spread)" in _claim([full, wide], 16)
    # arms compare on the seeds both ran, paired
    two = replace(_row("memory", "memory", 0.95, 0.05, 0.5, seeds=2), seed_list=[1, 2])
    assert "forgets less (reproduced)" in _claim([full, two], 16)
    # one seed has no spread: the direction is reported but called what it is
    single = _claim(
        [_row("full", "full", 1.0, 0.30, 5.0, seeds=1), _row("memory", "memory", 0.95, 0.05, 0.5)], 16
    )
    assert "One seed only for full" in single and "not evidence" in single
    # an N where one side did not run (an arm limited to other sizes) is not judged, and says which side
    assert "not judged: no memory arm ran" in _claim([full], 512)
    memory_alone = [_row("memory", "memory", 1.0, 0.0, 0.0)]
    assert "not judged: no full fine-tuning or LoRA arm ran" in _claim(memory_alone, 512)


def test_the_gated_memory_is_judged_against_its_goals_and_the_batch_editor():
    from palimpsest.experiments.knowledge.summary import _gated_memory

    gated = replace(_row("gated", "gated-memory", 0.97, 0.02, 0.1, spread=0.01), after={
        "learned": (0.97, 0.0), "paraphrase": (0.40, 0.0)})  # fmt: skip
    editor = replace(_row("batch", "batch-editor", 0.99, 0.20, 4.0, spread=0.01), after={
        "learned": (0.99, 0.0), "paraphrase": (0.50, 0.0)})  # fmt: skip
    verdict = _gated_memory([gated, editor], 512)
    assert "missed: paraphrase\n" in verdict  # 97% learned, 2 points lost, +0.1%: the rest met
    assert "gated vs batch: loses fewer kept facts" in verdict and "learns 2.0 points fewer" in verdict
    assert _gated_memory([editor], 512) == ""
    # recall after preceding text is a goal too, where it was measured
    heard = replace(gated, after={**gated.after, "paraphrase": (0.7, 0.0), "learned_after_text": (0.80, 0.0)})
    assert "80% after text" in _gated_memory([heard], 512)
    assert "missed: learned after text" in _gated_memory([heard], 512)


def test_units_stored_before_the_after_text_measures_summarise_without_them():
    from palimpsest.experiments.knowledge.summary import _measures

    old = {"learned": 1.0, "paraphrase": 0.5, "generation": 1.0, "kept": 1.0, "kept_generation": 1.0,
           "perplexity": 20.0}  # fmt: skip
    new = {**old, "learned_after_text": 0.5, "kept_after_text": 1.0}
    assert _measures([new, new])["learned_after_text"] == (0.5, 0.0)
    assert "learned_after_text" not in _measures([old, new])  # not a mean over the seeds that have it
    assert _measures([old, new])["learned"] == (1.0, 0.0)


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block.add_(1)
    del block
    if peak.peak_mib is not None:  # a platform without /proc measures nothing
        assert peak.peak_mib >= 32


def test_the_knowledge_study_from_the_command_line(tmp_path):
    from cli_helpers import one_error_line, palimpsest

    out = tmp_path / "knowledge"
    result = palimpsest("experiment", "knowledge", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["kind"] == "knowledge"
    arms = {run["arm"] for run in document["runs"]}
    assert arms == {arm.name for arm in knowledge.SCALES["smoke"].arms}
    report = (out / "report.md").read_text()
    assert "Grow meets rewrite: new knowledge" in report and "knowledge-frontier-4.png" in report
    gated = next(run for run in document["runs"] if run["method"] == "gated-memory")
    assert gated["removal"]["base_identical_once_all_removed"] == 1.0 and "base model bit for bit" in report
    stored = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    again = palimpsest("experiment", "knowledge", "--scale", "smoke", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stored  # resumed, not rerun
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms:\n  - {name: x, method: full}\n")
    refused = palimpsest(
        "experiment", "knowledge", "--scale", "smoke", "--config", str(bad), "--out", str(out)
    )
    assert "learning_rate" in one_error_line(refused)
    bad.write_text("model: /nowhere/model\n")  # found only once the run (and its progress display) started
    missing = palimpsest(
        "experiment", "knowledge", "--scale", "smoke", "--config", str(bad), "--out", str(tmp_path / "k2")
    )
    assert "/nowhere/model" in one_error_line(missing)
