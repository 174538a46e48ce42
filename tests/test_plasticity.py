"""The plasticity study end to end: smoke scale, and the full scale on local stand-in data."""

import dataclasses
import json

import pytest

from palimpsest.data import load_corpus
from palimpsest.errors import ConfigError
from palimpsest.experiments.plasticity import (
    CONTROL_LANGUAGE,
    SCALES,
    NewLanguage,
    PlasticityResults,
    first_step_at_or_below,
    run_plasticity,
    summarise,
)
from palimpsest.experiments.plasticity.summary import _verdict
from palimpsest.forgetting.callback import ForgettingConfig


def test_first_step_at_or_below():
    curve = [[0, 5.0], [10, 4.0], [20, 3.5]]
    assert first_step_at_or_below(curve, 4.0) == 10
    assert first_step_at_or_below(curve, 3.0) is None


def _run(variant, seed, curve, budget=3000):
    return {
        "variant": variant,
        "language": "wiki-fr",
        "budget": budget,
        "seed": seed,
        "curve": [[step, loss] for step, loss in curve],
        "final_loss": min(loss for _, loss in curve),
        "zero_shot_accuracy": 0.3,
        "zero_shot_majority": 0.3,
    }


def test_relearning_gap_is_kept_at_every_evaluation_with_its_crossover():
    """Forgetting lower at the start, the standard model lower from step 20 and at the end."""
    settings = dataclasses.replace(SCALES["smoke"], languages=("wiki-fr",), budgets=(3000,), seeds=(0, 1))
    standard = [(0, 7.0), (10, 6.0), (20, 5.0), (30, 4.5)]
    forgetting = [(0, 6.5), (10, 5.5), (20, 5.2), (30, 5.0)]
    runs = [
        _run(v, seed, curve)
        for seed in (0, 1)
        for v, curve in (("standard", standard), ("forgetting", forgetting))
    ]
    task = {v: {"accuracy": 0.9, "majority_baseline": 0.3} for v in ("standard", "forgetting")}
    (cell,) = summarise(runs, task, settings).cells
    assert cell.early_step == 10 and cell.early_gap == pytest.approx((0.5, 0.0))
    assert cell.early_gap_positive_seeds == 2
    assert cell.gap_mean == pytest.approx([0.5, 0.5, -0.2, -0.5])
    assert cell.crossover_step == 20
    assert cell.final_gap_positive_seeds == 0
    verdict = summarise(runs, task, settings).verdict
    assert "converged faster, to a worse loss" in verdict
    # the reverse: the standard model lower throughout, never a crossover
    runs = [_run(v, 0, curve) for v, curve in (("standard", forgetting), ("forgetting", standard))]
    settings = dataclasses.replace(settings, seeds=(0,))
    (cell,) = summarise(runs, task, settings).cells
    assert cell.crossover_step == 10 and cell.early_gap_positive_seeds == 0
    assert "did NOT appear" in summarise(runs, task, settings).verdict


def test_smoke_study_is_complete_and_resumable(tmp_path):
    results = run_plasticity(tmp_path, "smoke")
    settings = SCALES["smoke"]
    expected = len(settings.languages) * len(settings.budgets) * len(settings.seeds) * 2
    assert len(results.runs) == expected
    for run in results.runs:
        steps = [step for step, _ in run["curve"]]
        assert steps[0] == 0 and steps[-1] == settings.adaptation.training.steps
        assert 0.0 <= run["zero_shot_accuracy"] <= 1.0
    cell = results.summary.cells[0]
    assert len(cell.standard.curve_mean) == len(cell.steps)
    assert "relative gain" in results.summary.verdict
    # the English body beside its majority class: at smoke scale far too weak to judge transfer from
    assert set(results.summary.english_task_majority) == {"standard", "forgetting"}
    assert "too weak a body to judge transfer" in results.summary.verdict
    # the control language failing to beat the majority says the protocol fails at this scale
    stand_in = dataclasses.replace(cell, language=CONTROL_LANGUAGE)
    stand_in.standard = dataclasses.replace(
        cell.standard, zero_shot_accuracy=(0.1, 0.0), majority_baseline=0.3
    )
    stand_in.forgetting = dataclasses.replace(cell.forgetting, zero_shot_accuracy=(0.2, 0.0))
    task = {v: {"accuracy": 0.9, "majority_baseline": 0.3} for v in ("standard", "forgetting")}
    assert "Even the control" in _verdict([stand_in], {}, settings, task)
    stand_in.standard = dataclasses.replace(
        cell.standard, zero_shot_accuracy=(0.6, 0.0), majority_baseline=0.3
    )
    assert "Even the control" not in _verdict([stand_in], {}, settings, task)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert json.dumps(PlasticityResults.from_json(stored).to_json()) == json.dumps(results.to_json())
    # A re-run reuses every finished unit: same numbers, nothing retrained.
    marker = tmp_path / "adapt-standard-wiki-fr-3000-s0" / "result.json"
    mtime = marker.stat().st_mtime
    again = run_plasticity(tmp_path, "smoke")
    assert again.runs == results.runs and marker.stat().st_mtime == mtime
    # A changed task step redoes the task and every zero-shot unit built on it; pretraining stays.
    pretrained = tmp_path / "pretrain-standard" / "unit.json"
    pretrained_mtime = pretrained.stat().st_mtime
    task_adaptation = dataclasses.replace(
        settings.task_adaptation, training=dataclasses.replace(settings.task_adaptation.training, steps=3)
    )
    run_plasticity(tmp_path, dataclasses.replace(settings, task_adaptation=task_adaptation))
    assert marker.stat().st_mtime != mtime and pretrained.stat().st_mtime == pretrained_mtime


def test_unknown_language_and_bad_reset_every():
    with pytest.raises(ConfigError, match="klingon"):  # refused when the settings are made
        dataclasses.replace(SCALES["smoke"], languages=("klingon",))
    with pytest.raises(ConfigError, match=r"multiple of forgetting\.reset_every"):
        dataclasses.replace(SCALES["smoke"], forgetting=ForgettingConfig(reset_every=3))


def _jsonl(path, rows):
    path.mkdir(parents=True)
    split = "test" if "test" in rows else "train"
    lines = [json.dumps(row, ensure_ascii=False) for row in rows[split]]
    (path / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_full_scale_runs_on_local_stand_ins(tmp_path):
    """The paper's configuration (CC100 + XNLI through `datasets` names, sentence pairs,
    unigram tokenizers, RoBERTa) with local dataset folders in place of hub names."""
    english, french = load_corpus("wiki-en", max_documents=300), load_corpus("wiki-fr", max_documents=300)
    data = tmp_path / "data"
    _jsonl(data / "cc100-en", {"train": [{"text": t} for t in english.texts]})
    _jsonl(data / "cc100-fr", {"train": [{"text": t} for t in french.texts]})

    def nli(texts):
        return [{"premise": t, "hypothesis": texts[(i + 1) % len(texts)][:60], "label": i % 3}
                for i, t in enumerate(texts)]  # fmt: skip

    _jsonl(data / "xnli-en", {"train": nli(english.texts)})
    _jsonl(data / "xnli-fr", {"test": nli(french.texts[:60])})
    full = SCALES["full"]
    french_spec = NewLanguage(text=f"hf:{data}/cc100-fr", task=f"hf:{data}/xnli-fr", max_documents=300)
    pretrain = full.pretrain
    small = dataclasses.replace(
        pretrain,
        data=dataclasses.replace(
            pretrain.data, corpus=f"hf:{data}/cc100-en", max_documents=300, vocab_size=400, block_size=32,
            max_eval_blocks=8,
        ),
        model=dataclasses.replace(pretrain.model, size="micro"),
        training=dataclasses.replace(
            pretrain.training, batch_size=4, gradient_accumulation=1, steps=4, eval_every=2, save_every=2
        ),
    )  # fmt: skip
    adaptation = full.adaptation
    scale = dataclasses.replace(
        full,
        pretrain=small,
        forgetting=dataclasses.replace(full.forgetting, reset_every=2),
        adaptation=dataclasses.replace(
            adaptation, block_size=32, vocab_size=300, max_eval_blocks=4,
            training=dataclasses.replace(adaptation.training, steps=2, eval_every=1, batch_size=4),
        ),
        task_adaptation=dataclasses.replace(
            full.task_adaptation, max_length=32,
            training=dataclasses.replace(full.task_adaptation.training, steps=2, batch_size=4),
        ),
        languages=("fr",), budgets=(2000,),
        task=dataclasses.replace(full.task, corpus=f"hf:{data}/xnli-en"),
        language_specs={"fr": french_spec},
    )  # fmt: skip
    assert scale.task.pair_field == "hypothesis" and scale.pretrain.data.tokenizer_model == "unigram"
    results = run_plasticity(tmp_path / "out", scale)
    runs = results.runs
    assert {run["language"] for run in runs} == {"fr"} and len(runs) == 2 * len(full.seeds)
    assert all(run["zero_shot_examples"] == 60 for run in runs)
    assert set(results.task) == {"standard", "forgetting"}


@pytest.mark.slow
def test_smoke_study_under_two_process_ddp(tmp_path):
    """Every process runs the study; rank 0 writes, training is data-parallel."""
    from torchrun_helper import torchrun

    done = torchrun("plasticity_smoke.py", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 2 * len(SCALES["smoke"].seeds) * len(SCALES["smoke"].languages)


def test_embedding_alignment_scores_a_copy_fully_and_a_redraw_at_chance(tmp_path, tokenizer):
    import torch

    from palimpsest.experiments.plasticity import embedding_alignment
    from palimpsest.experiments.plasticity.units import _renaming_of
    from palimpsest.forgetting import find_token_embeddings
    from palimpsest.models import build_model

    model = build_model("roberta", "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)
    model.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    same = embedding_alignment(tmp_path / "a", tmp_path / "a", lambda token: token)
    assert same["pairs"] > 8 and same["cosine"] > 0.999 and same["retrieval"] > 0.9
    with torch.no_grad():  # a rotation of the same geometry: a linear map recovers it
        embeddings = find_token_embeddings(model).weight
        rotation = torch.linalg.qr(torch.randn(embeddings.shape[1], embeddings.shape[1]))[0]
        embeddings.copy_(embeddings @ rotation)
    model.save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    rotated = embedding_alignment(tmp_path / "a", tmp_path / "b", lambda token: token)
    assert rotated["cosine"] < 0.5 and rotated["retrieval"] > 0.9
    assert _renaming_of("script:cyrillic")(" Abc") == " Абв" and _renaming_of("identity")("x") == "x"
    assert _renaming_of("permute+script:georgian") is None


def test_units_stored_before_init_std_existed_keep_their_key():
    """An unset ``init_std`` stays out of the unit key, so earlier runs resume instead of redoing
    every adaptation; a set one is part of it (it changes the result)."""
    from palimpsest.experiments.plasticity.units import _adaptation_key
    from palimpsest.forgetting.relearning import LanguageAdaptation

    assert "init_std" not in _adaptation_key(LanguageAdaptation())
    assert _adaptation_key(LanguageAdaptation(init_std=0.1))["init_std"] == 0.1


def test_the_verdict_says_whether_the_papers_reversal_with_more_data_appeared():
    """Forgetting ahead with little data and behind with plenty is the paper's pattern; forgetting
    still ahead at the largest budget means it did not appear; mixed languages mean partial."""
    from types import SimpleNamespace

    from palimpsest.experiments.plasticity.summary import _reversal

    def cells(small, large):
        return [SimpleNamespace(budget=b, final_gap_positive_seeds=n) for b, n in ((20, small), (200, large))]

    assert "reversal appears" in _reversal(cells(3, 0), seeds=3)
    assert "did NOT appear up to 200" in _reversal(cells(3, 3), seeds=3)
    assert "partial" in _reversal([*cells(3, 0), *cells(3, 3)], seeds=3)
    assert _reversal(cells(3, 0)[:1], seeds=3) == ""
