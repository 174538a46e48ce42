"""The memory study: arms, continuation from the no-memory run, resume, verdict logic."""

import json

import pytest

from palimpsest.errors import ConfigError
from palimpsest.experiments.memory import (
    SCALES,
    MemoryStudyResults,
    MemoryUnit,
    run_memory_study,
    summarise,
)
from palimpsest.experiments.memory.summary import _compare


def test_smoke_study_runs_every_arm_and_resumes(demo_smoke, tmp_path):
    import shutil

    # the demo's memory part made these units (the same scale); the shared run stays as made
    study = shutil.copytree(demo_smoke["out"] / "memory", tmp_path / "memory")
    results = run_memory_study(study, "smoke")
    settings = SCALES["smoke"]
    units = {u.arm: u for u in results.units}
    assert set(units) == set(settings.arms)
    start = settings.pretrained_step()
    for arm in ("no-memory-continued", "replace-pretrained", "residual-pretrained"):
        assert units[arm].start_step == start and units[arm].steps == settings.training.steps - start
        assert units[arm].eval_curve[0][0] > start
    base = units["no-memory"].parameters
    assert units["no-ffn"].parameters < base < units["wide-ffn"].parameters
    assert units["residual-scratch"].added_parameters > 0
    # the matched dense FFNs: as many parameters as the memory (to one hidden unit), and far fewer
    memory = units["residual-scratch"].added_parameters
    assert abs(units["ffn-equal-params"].added_parameters - memory) <= 2 * 64 + 1
    assert units["ffn-equal-compute"].added_parameters < memory / 2
    assert "at equal compute" in results.summary.verdict and "at equal parameters" in results.summary.verdict
    assert units["residual-pretrained"].parameters == units["residual-scratch"].parameters
    for arm in ("replace-scratch", "residual-pretrained"):
        assert units[arm].usage["kl_weights"] >= 0 and 0 < units[arm].usage["slots_90"] <= 1
        assert units[arm].outdated_curve
    assert "no-memory" not in {u.arm for u in results.units if u.usage is not None}
    assert results.summary.verdict
    assert not (study / "no-memory-s0" / "trainer").exists()  # checkpoints removed at the end
    # every unit is reused; the stored results read back to the same typed results
    marker = study / "residual-pretrained-s0" / "result.json"
    mtime = marker.stat().st_mtime
    again = run_memory_study(study, "smoke")
    assert json.dumps(again.to_json()) == json.dumps(results.to_json()) and marker.stat().st_mtime == mtime
    stored = json.loads((study / "results.json").read_text())
    assert MemoryStudyResults.from_json(stored).summary.arms.keys() == results.summary.arms.keys()


def test_continuations_need_the_no_memory_arm(tmp_path):
    from dataclasses import replace

    with pytest.raises(ConfigError, match="no-memory"):
        run_memory_study(tmp_path, replace(SCALES["smoke"], arms=("residual-pretrained",)))
    with pytest.raises(ConfigError, match="unknown arm"):
        run_memory_study(tmp_path, replace(SCALES["smoke"], arms=("no-memory", "telepathy")))
    with pytest.raises(ConfigError, match="unknown scale"):
        run_memory_study(tmp_path, "galactic")


def _unit(arm, seed, loss):
    return MemoryUnit(
        arm=arm, seed=seed, start_step=0, steps=1, parameters=1, added_parameters=0, validation_loss=loss,
        validation_perplexity=1.0, recall=0.0, recall_facts=0, unprobeable_facts=0, train_seconds=1.0,
        tokens_per_second=1.0, eval_curve=[], train_curve=[],
    )  # fmt: skip


def test_a_finding_holds_only_when_every_seed_agrees():
    by_arm = {
        "residual-scratch": [_unit("residual-scratch", 0, 5.0), _unit("residual-scratch", 1, 5.0)],
        "replace-scratch": [_unit("replace-scratch", 0, 5.1), _unit("replace-scratch", 1, 4.9)],
    }
    mixed = _compare(by_arm, "residual-scratch", "replace-scratch", "validation_loss", "lower")
    assert not mixed.holds and mixed.per_seed == pytest.approx([-0.1, 0.1])
    by_arm["replace-scratch"][1].validation_loss = 5.2
    assert _compare(by_arm, "residual-scratch", "replace-scratch", "validation_loss", "lower").holds
    summary = summarise([u for group in by_arm.values() for u in group], SCALES["smoke"])
    assert "Kim & Jung (2)" in summary.verdict and "partly reproduced" in summary.verdict


def test_one_seed_gives_the_study_and_a_pretraining_run_the_same_memory(tokenizer):
    from dataclasses import replace

    import torch

    from palimpsest.experiments.memory.units import add_study_memory
    from palimpsest.memory import memories
    from palimpsest.memory.extension import MemoryExtension
    from palimpsest.models import build_model

    scale = SCALES["smoke"]

    def model():
        return build_model(scale.model.family, scale.model.size, tokenizer, max_positions=32, seed=0)

    torch.manual_seed(123)  # whatever ran before must not matter
    study = memories(add_study_memory(model(), scale, "residual-scratch", seed=3))
    torch.manual_seed(456)
    run = memories(MemoryExtension(replace(scale.memory, mode="residual"), run_seed=3).prepare_model(model()))
    assert study.keys() == run.keys() and study
    for name in study:
        for (a, x), (b, y) in zip(
            study[name].state_dict().items(), run[name].state_dict().items(), strict=True
        ):
            assert a == b and torch.equal(x, y), a
