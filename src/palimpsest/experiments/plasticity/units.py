"""The plasticity study's units (pretraining, task adaptation, one language adaptation each) and
the study that runs them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from transformers import TrainerCallback

from palimpsest.config import to_dict
from palimpsest.data import (
    Corpus,
    CorpusSplit,
    change_script,
    load_corpus,
    load_tokenizer,
    shared_topic_corpus,
    split_corpus,
    synthetic_language,
)
from palimpsest.errors import ConfigError
from palimpsest.experiments.plasticity.results import PlasticityResults, PretrainDigest
from palimpsest.experiments.plasticity.scales import SCALES, VARIANTS, NewLanguage, PlasticityScale, TaskSpec
from palimpsest.experiments.plasticity.summary import summarise
from palimpsest.experiments.study import Steps, Study, StudyRun, Unit
from palimpsest.forgetting.relearning import (
    LanguageAdaptation,
    TaskAdaptation,
    adapt_language,
    adapt_task,
    assemble,
    evaluate_classifier,
)
from palimpsest.forgetting.reset import find_token_embeddings
from palimpsest.models import load_pretrained
from palimpsest.pretraining import PretrainConfig, holdout_split, run_pretrain
from palimpsest.seeds import FORGETTING_SEED_OFFSET
from palimpsest.storage import machine_info, remove_tree


def _pretrain_config(scale: PlasticityScale, variant: str) -> PretrainConfig:
    """One variant's run: named, and with the forgetting section for the forgetting variant
    (one pretraining per variant, seed 0: the resets draw from 0 + FORGETTING_SEED_OFFSET)."""
    sections = (
        {"forgetting": replace(scale.forgetting, seed=FORGETTING_SEED_OFFSET)}
        if variant == "forgetting"
        else {}
    )
    return replace(scale.pretrain, name=f"plasticity-{variant}", extensions=sections)


def language_split(name: str, scale: PlasticityScale) -> CorpusSplit:
    """Training text and evaluation documents of a new language (deterministic)."""
    spec = scale.language(name)
    if spec.text == "heldout":
        data = scale.pretrain.data
        english = load_corpus(data.corpus, max_documents=data.max_documents)
        _, held_out = holdout_split(english, data.holdout_fraction)
        if held_out is None:
            raise ConfigError(
                f"language '{name}' is derived from held-out text: holdout_fraction must be > 0"
            )
        corpus = synthetic_language(held_out, spec.recipe or "permute", seed=0)
    else:
        corpus = load_corpus(spec.text, max_documents=spec.max_documents, hf_split=spec.text_split)
        if spec.recipe:
            corpus = synthetic_language(corpus, spec.recipe, seed=0)
    return split_corpus(corpus.with_texts(corpus.texts, name=name), scale.language_eval_fraction, seed=0)


def _task_corpus(name: str, task: TaskSpec, split: str, max_documents: int | None) -> Corpus:
    corpus = load_corpus(
        name,
        max_documents=max_documents,
        hf_split=split,
        hf_text_field=task.text_field,
        hf_pair_field=task.pair_field,
        hf_label_field=task.label_field,
    )
    return shared_topic_corpus(corpus) if task.topics else corpus


def source_task(scale: PlasticityScale) -> CorpusSplit:
    """The labelled source-language task, split for training and validation."""
    task, data = scale.task, scale.pretrain.data
    if task.corpus == data.corpus:
        corpus = holdout_split(
            load_corpus(data.corpus, max_documents=data.max_documents), data.holdout_fraction
        )[0]
        corpus = shared_topic_corpus(corpus) if task.topics else corpus
    else:
        corpus = _task_corpus(task.corpus, task, task.split, task.max_documents)
    return split_corpus(corpus, 0.1, seed=0)


def language_task(name: str, split: CorpusSplit, scale: PlasticityScale) -> Corpus:
    """Labelled data of the task in a new language, for zero-shot evaluation."""
    spec = scale.language(name)
    if spec.task is None:
        if split.validation.labels is None:
            raise ConfigError(f"language '{name}' has no labels and no task data")
        return shared_topic_corpus(split.validation) if scale.task.topics else split.validation
    return _task_corpus(spec.task, scale.task, spec.task_split, None)


def run_plasticity(
    out: str | Path,
    scale: str | PlasticityScale | tuple[str, PlasticityScale] = "demo",
    *,
    callbacks_for: Callable[[str], Iterable[TrainerCallback]] = lambda _name: (),
) -> PlasticityResults:
    """Run (or resume: every unit is stored as it finishes) the study into ``out``."""
    return PlasticityStudy().run(out, scale, callbacks_for=callbacks_for)  # type: ignore[return-value]


class PlasticityStudy(Study):
    """The study on the skeleton of :mod:`palimpsest.experiments.study`: both pretraining runs,
    both English task adaptations, then one language-adaptation unit per (language, budget,
    seed, variant).

    Each unit's key holds the content of the units it builds on (not only their paths), so
    changing an earlier step's settings redoes every later unit that used its output."""

    name = "plasticity"
    title = "plasticity study"
    scales = SCALES

    def steps(self, run: StudyRun) -> Steps:
        out, settings = run.out, run.settings
        pretrain: dict[str, PretrainDigest] = {}
        pretrain_keys: dict[str, Any] = {}
        for variant in VARIANTS:
            config = _pretrain_config(settings, variant)
            pretrain_keys[variant] = to_dict(config)
            train = partial(
                _pretrain_unit, config, out / f"pretrain-{variant}", run.callbacks_for(f"pretrain {variant}")
            )
            pretrain[variant] = yield Unit(
                f"pretrain-{variant}/unit.json", pretrain_keys[variant], train, kind=PretrainDigest
            )

        english_task = source_task(settings)
        task_settings = settings.task_adaptation
        task: dict[str, dict[str, Any]] = {}
        task_keys: dict[str, Any] = {}
        for variant in VARIANTS:
            unit_dir = f"task-{variant}"
            key = {
                "model": pretrain[variant].path, "pretrain": pretrain_keys[variant],
                "task": to_dict(task_settings), "spec": asdict(settings.task),
            }  # fmt: skip
            task_keys[variant] = key
            adapt = partial(
                _task_unit, pretrain[variant].path, english_task, task_settings, out / unit_dir,
                settings.task.labels, run.callbacks_for(f"task {variant}"),
            )  # fmt: skip
            task[variant] = yield Unit(f"{unit_dir}/result.json", key, adapt, workdir=f"{unit_dir}/trainer")

        runs: list[dict[str, Any]] = []
        for language in settings.languages:
            split = language_split(language, settings)
            evaluation = language_task(language, split, settings)
            new_language = settings.language(language)
            for budget, seed, variant in product(settings.budgets, settings.seeds, VARIANTS):
                unit_dir = f"adapt-{variant}-{language}-{budget}-s{seed}"
                adaptation = replace(settings.adaptation, tokens=budget, seed=seed)
                key = {
                    "model": pretrain[variant].path, "task_model": task[variant]["model_path"],
                    "task": task_keys[variant], "adaptation": _adaptation_key(adaptation),
                    "language": asdict(new_language),
                    "max_length": settings.pretrain.data.block_size, "keep_models": settings.keep_models,
                }  # fmt: skip
                relearn = partial(
                    _language_unit, settings, new_language, adaptation, pretrain[variant].path,
                    task[variant]["model_path"], split, evaluation, out / unit_dir,
                    run.callbacks_for(f"{variant} {language} {budget} s{seed}"),
                )  # fmt: skip
                result = yield Unit(f"{unit_dir}/result.json", key, relearn, workdir=f"{unit_dir}/trainer")
                result.update({"variant": variant, "language": language, "budget": budget, "seed": seed})
                runs.append(result)

        return PlasticityResults(
            scale=run.scale_name,
            settings=settings,
            pretrain=pretrain,
            task=task,
            runs=runs,
            summary=summarise(runs, task, settings),
            machine=machine_info(),
        )


def _pretrain_unit(
    config: PretrainConfig, run_dir: Path, callbacks: Iterable[TrainerCallback]
) -> PretrainDigest:
    # the unit is recomputed because its settings changed: a previous run in run_dir is replaced
    return PretrainDigest.of(run_pretrain(config, run_dir, callbacks=callbacks, overwrite=True))


def _task_unit(
    model_path: str,
    task: CorpusSplit,
    settings: TaskAdaptation,
    unit_dir: Path,
    labels: Sequence[str],
    callbacks: Iterable[TrainerCallback],
) -> dict[str, Any]:
    """Train the task body and head once per variant (English, embeddings frozen)."""
    result = adapt_task(model_path, task, settings, unit_dir, label_names=labels, callbacks=callbacks)
    remove_tree(unit_dir / "trainer")
    return result


def _adaptation_key(adaptation: LanguageAdaptation) -> dict[str, Any]:
    """The adaptation's settings as a unit key; ``init_std`` only when set, so units stored
    before that option existed are still found."""
    key = to_dict(adaptation)
    if key.get("init_std") is None:
        key.pop("init_std", None)
    return key


def embedding_alignment(
    source: str | Path, relearned: str | Path, rename: Callable[[str], str], *, seed: int = 0
) -> dict[str, float]:
    """How far relearned embeddings recover the source model's, for a language whose text is the
    source's own (``rename`` the identity) or its renaming letter by letter (a script bijection):
    a token of the source vocabulary and the token of the new one that spells its renamed text
    stand for the same sub-word.

    Over the tokens both vocabularies share that way (alphabetic, non-special): ``cosine`` of
    matched rows, ``chance_cosine`` of mismatched ones (each against the next pair's), and
    ``retrieval``: the share of held-out pairs whose source row is the nearest (cosine) to the
    relearned row under a least-squares linear map fitted on the other half of the pairs (a
    rotation or rescaling of the same geometry would score near 1)."""
    tables, pieces = [], []
    for path in (source, relearned):
        tokenizer = load_tokenizer(path)
        tables.append(find_token_embeddings(load_pretrained(str(path))).weight.detach().float())
        specials = set(tokenizer.all_special_ids)
        # each token as the text it stands for (byte-level and other markers decoded), so the
        # renaming applies to text, as the language's recipe did
        pieces.append(
            {
                i: tokenizer.convert_tokens_to_string([token])
                for token, i in tokenizer.get_vocab().items()
                if i not in specials
            }
        )
    by_text = {text: i for i, text in pieces[1].items()}
    pairs = [
        (i, by_text[rename(text)])
        for i, text in pieces[0].items()
        if "\ufffd" not in text and any(c.isalpha() for c in text) and rename(text) in by_text
    ]
    if len(pairs) < 8:
        return {"pairs": len(pairs), "cosine": math.nan, "chance_cosine": math.nan, "retrieval": math.nan}
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    first = tables[0][[pairs[i][0] for i in order]]
    second = tables[1][[pairs[i][1] for i in order]]
    cosine = functional.cosine_similarity(first, second)
    chance = functional.cosine_similarity(first, second.roll(1, 0))
    half = len(pairs) // 2
    mapping = torch.linalg.lstsq(second[:half], first[:half]).solution
    mapped = functional.normalize(second[half:] @ mapping, dim=1)
    nearest = (mapped @ functional.normalize(first[half:], dim=1).T).argmax(dim=1)
    retrieval = (nearest == torch.arange(len(nearest))).float().mean()
    return {
        "pairs": len(pairs),
        "cosine": float(cosine.mean()),
        "chance_cosine": float(chance.mean()),
        "retrieval": float(retrieval),
    }


def _renaming_of(recipe: str | None) -> Callable[[str], str] | None:
    """How a recipe respells the source's text when it only renames letters (``identity``, or a
    single ``script:NAME``), so tokens of the two vocabularies can be paired; else None."""
    if recipe == "identity":
        return lambda text: text
    if recipe and recipe.startswith("script:") and "+" not in recipe:
        script = recipe.partition(":")[2]
        return lambda text: change_script([text], script)[0]
    return None


def _language_unit(
    settings: PlasticityScale,
    language_spec: NewLanguage,
    adaptation: LanguageAdaptation,
    pretrained_path: str,
    task_model_path: str,
    split: CorpusSplit,
    evaluation: Corpus,
    unit_dir: Path,
    callbacks: Iterable[TrainerCallback],
) -> dict[str, Any]:
    """Relearn the language's embeddings, assemble with the task body, score zero-shot."""
    result = adapt_language(pretrained_path, split, adaptation, unit_dir, callbacks=callbacks)
    rename = _renaming_of(language_spec.recipe)
    if rename is not None:
        result["embedding_alignment"] = embedding_alignment(pretrained_path, result["model_path"], rename)
    assembled = assemble(task_model_path, result["model_path"], unit_dir / "assembled")
    zero_shot = evaluate_classifier(assembled, evaluation, max_length=settings.pretrain.data.block_size)
    result["zero_shot_accuracy"] = zero_shot["accuracy"]
    result["zero_shot_majority"] = zero_shot["majority_baseline"]
    result["zero_shot_examples"] = zero_shot["examples"]
    remove_tree(unit_dir / "trainer")
    if not settings.keep_models:
        remove_tree(unit_dir / "model")
        remove_tree(unit_dir / "assembled")
        result["model_path"] = None
    return result
