"""The ``palimpsest`` command: typer + rich over the library's functions.

Every command reads an optional YAML config, lets flags override it, shows progress,
writes its outputs under ``--out``, and turns a user error into one line on stderr and
exit code 2 (a traceback is kept only for genuine bugs).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from palimpsest.errors import ConfigError, PalimpsestError

if TYPE_CHECKING:
    from palimpsest.pretraining import PretrainResults
    from palimpsest.results import Results


class _OneLineErrors(TyperGroup):
    """Usage errors (a value that is not a number, an unknown option) as one line, like every
    other user error, instead of click's usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            sys.exit(130)
        except Exception as error:
            # typer vendors its own click, whose exceptions it does not export: a usage error is
            # recognised by the ClickException interface (format_message, exit_code, show)
            if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
                raise
            if type(error).__name__ == "NoArgsIsHelpError":
                error.show()  # the help text, asked for by giving no arguments
            else:
                message = f"[bold red]error:[/] {error.format_message()} (see --help)"
                error_console.print(message, highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="palimpsest",
    help="The memory of language models: grow it, forget it, rewrite it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config; flags given on the command line win.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log library progress (INFO).")]


def _setup_logging(verbose: bool) -> None:
    """Application-level logging: the library only creates loggers, the CLI routes them."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=error_console, show_path=False)],
        force=True,
    )
    import datasets
    import transformers

    transformers.logging.set_verbosity_info() if verbose else transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _output_kinds() -> dict[str, Any]:
    """What each command that writes ``--out`` owns there (see :mod:`palimpsest.outputs`)."""
    from palimpsest.outputs import MODEL_FILES, REPORT_FILES, OutputKind

    results = ("results.json", *REPORT_FILES)
    trainer = ("checkpoint-*", "runs")
    study_units = ("units", "work", "tokenizer", "random-model", "pretrain-*", *results)
    return {
        "pretrain": OutputKind(
            "pretrain", ("config.yaml", "model", "tokenizer", *trainer, *results), ("pretrain",)
        ),
        "evaluate": OutputKind("evaluate", results, ("evaluate", "evaluate-task", "evaluate-facts")),
        "adapt_language_command": OutputKind(
            "adapt language", ("model", "trainer", *results), ("adapt-language",)
        ),
        "adapt_task_command": OutputKind("adapt task", ("model", "trainer", *results), ("adapt-task",)),
        "assemble": OutputKind("assemble", MODEL_FILES),
        "memory_add": OutputKind("memory add", MODEL_FILES),
        "memory_learn": OutputKind("memory learn", ("model", "trainer", *results), ("memory-learn",)),
        "memory_forget": OutputKind("memory forget", ("model", *results), ("memory-forget",)),
        "memory_stats": OutputKind("memory stats", results, ("memory-stats",)),
        "edit": OutputKind("edit", ("model", *results), ("edit",)),
        "experiment_plasticity": OutputKind(
            "experiment plasticity", (*study_units, "task-*", "adapt-*"), ("plasticity",)
        ),
        "experiment_memory": OutputKind("experiment memory", (*study_units, "*-s[0-9]*"), ("memory-study",)),
        "experiment_editing": OutputKind(
            "experiment editing", (*study_units, "edits-*"), ("editing-study", "editing-real")
        ),
        "experiment_knowledge": OutputKind("experiment knowledge", study_units, ("knowledge",)),
        "experiment_many_edits": OutputKind(
            "experiment many-edits", (*study_units, "benchmark.jsonl"), ("many-edits",)
        ),
        "demo": OutputKind(
            "demo",
            (
                "plasticity",
                "memory",
                "many-edits",
                "editing",
                "editing-real",
                "knowledge",
                "pretrain-*",
                *results,
            ),
        ),
        "report": OutputKind("report", REPORT_FILES),
    }


#: What an interrupted command can say truthfully about starting again.
_RESUMES = {"pretrain", "adapt_language_command", "adapt_task_command", "memory_learn", "demo"}


def user_errors(function: F) -> F:
    """Print a user error as one line and exit 2; Ctrl-C exits 130.

    User errors are :class:`PalimpsestError` s and the I/O and decoding errors of files the
    user named (a folder that cannot be written, a file that is not UTF-8); with
    ``--verbose`` the traceback follows the line. An ``--out`` is checked before the
    command does any work: it must be a folder that can be written, that no other process
    writes to, and that holds nothing but this command's own earlier output
    (:func:`palimpsest.outputs.claim_output`); the command's claim on it is passed on as
    ``claim`` when the command takes that argument.
    """
    import inspect

    takes_claim = "claim" in inspect.signature(function).parameters

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        try:
            if not isinstance(out, Path):
                return function(*args, **kwargs)
            from palimpsest.outputs import claim_output, is_empty_output
            from palimpsest.storage import OutputLock, check_output_folder

            check_output_folder(out)
            created = not out.exists()
            try:
                with OutputLock(out):  # one process writes to a folder at a time
                    claim = claim_output(out, _output_kinds()[function.__name__])
                    if takes_claim:
                        kwargs["claim"] = claim
                    else:
                        claim.record()
                    return function(*args, **kwargs)
            finally:
                if created and is_empty_output(out):
                    shutil.rmtree(out)  # a command that failed before writing leaves nothing behind
        except (PalimpsestError, OSError, UnicodeDecodeError) as error:
            error_console.print(f"[bold red]error:[/] {_describe(error)}", highlight=False, soft_wrap=True)
            if kwargs.get("verbose"):
                error_console.print_exception()
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            if function.__name__ in _RESUMES or function.__name__.startswith("experiment_"):
                message = "interrupted: run the same command again to resume from the last checkpoint"
            elif isinstance(out, Path):
                message = f"interrupted: nothing was finished; what {out} held before is unchanged"
            else:
                message = "interrupted"
            error_console.print(message)
            raise typer.Exit(130) from None

    if takes_claim:  # typer must not offer it as an option
        signature = inspect.signature(function, eval_str=True)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p for name, p in signature.parameters.items() if name != "claim"]
        )
    return wrapper  # type: ignore[return-value]


def _describe(error: BaseException) -> str:
    """One line for a user error: the file and what is wrong with it."""
    if isinstance(error, PalimpsestError):
        return str(error)
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text (byte {error.start}: {error.reason})"
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _progress_callbacks(progress: Any) -> Callable[[str], list[Any]]:
    from palimpsest.progress import RichProgressCallback

    return lambda name: [RichProgressCallback(progress, name)]


def _run_study(
    study: Any,
    out: Path,
    scale: str,
    config: Path | None = None,
    adjust: Callable[[str, Any], tuple[str, Any]] | None = None,
) -> None:
    """Run (or resume) a study (:mod:`palimpsest.experiments`) with a progress display, write its
    report, print its verdict table and headline.

    ``config`` (YAML) changes fields of the named scale: ``--scale demo --config more-seeds.yaml``;
    ``adjust`` then changes the settings (and their name) as a command's own options say (``--family``).
    """
    from palimpsest.progress import make_progress
    from palimpsest.report import write_report

    chosen: Any = scale
    if config is not None or adjust is not None:
        from palimpsest.config import load_config
        from palimpsest.experiments.common import resolve_scale

        name, settings = resolve_scale(scale, study.scales, study.name)
        if config is not None:
            settings = load_config(type(settings), config, base=settings)
            name = f"{name} + {config.name}"
        if adjust is not None:
            name, settings = adjust(name, settings)
        chosen = (name, settings)
    with make_progress(console) as progress:
        results = study.run(out, chosen, callbacks_for=_progress_callbacks(progress))
    write_report([results], out, title=f"palimpsest: {study.title}")
    claims = results.claims()
    if claims:  # the same table the report opens with
        _print_claims(claims)
    console.print(results.headline(), highlight=False)
    console.print(f"wrote {out}/results.json, {out}/report.md, {out}/report.html")


def _print_pretrain(results: PretrainResults) -> None:
    m = results.metrics
    table = Table(title=results.name, show_header=False)
    table.add_row("objective", results.model.objective)
    table.add_row("parameters", f"{results.model.parameters:,}")
    table.add_row("steps", str(m.steps))
    table.add_row("validation perplexity", f"{m.validation_perplexity:.2f}")
    table.add_row("unigram-baseline perplexity", f"{m.unigram_perplexity:.2f}")
    table.add_row("training throughput", f"{m.tokens_per_second:,.0f} tokens/s")
    console.print(table)


@app.command()
@user_errors
def pretrain(
    config: ConfigOption = None,
    out: Annotated[Path, typer.Option(help="Output folder (checkpoints, model, results, report).")] = Path(
        "runs/pretrain"
    ),
    corpus: Annotated[str | None, typer.Option(help="Built-in corpus, .txt/.jsonl path or hf:NAME.")] = None,
    family: Annotated[str | None, typer.Option(help="bert, roberta, gpt2 or llama.")] = None,
    size: Annotated[str | None, typer.Option(help="micro, tiny, small or base.")] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            "--model",
            help="Continue pretraining these weights (folder, smollm2-135m, hub id).",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer updates.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Blocks per device and step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for initialisation, data order and masking.")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Tokenizer vocabulary size.")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per training block.")] = None,
    tensorboard: Annotated[bool | None, typer.Option(help="Log to TensorBoard under OUT/runs.")] = None,
    forget_every: Annotated[
        int | None, typer.Option(help="Active forgetting: reset the token embeddings every K updates.")
    ] = None,
    episode_schedule: Annotated[
        bool | None,
        typer.Option(help="With forgetting: the embeddings' own per-episode LR schedule (default on)."),
    ] = None,
    memory_layers: Annotated[
        list[int] | None,
        typer.Option("--memory-layer", help="Product-key memory in this block (repeatable)."),
    ] = None,
    memory_mode: Annotated[
        str | None, typer.Option(help="With a memory: residual (default) or replace.")
    ] = None,
    memory_keys: Annotated[
        int | None, typer.Option(help="With a memory: sub-keys per half (default 512: 262,144 slots).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in OUT.")] = True,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a run with other settings in OUT (it is refused otherwise).")
    ] = False,
    verbose: VerboseOption = False,
) -> None:
    """Pretrain a language model on a corpus (masked LM for bert/roberta, causal for gpt2/llama),
    optionally with active forgetting and/or product-key memory; OUT/config.yaml re-runs it."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.pretraining import PretrainConfig, run_pretrain
    from palimpsest.progress import RichProgressCallback, make_progress
    from palimpsest.report import write_report

    overrides = {
        "data.corpus": corpus, "data.vocab_size": vocab_size, "data.block_size": block_size,
        "model.family": family, "model.size": size, "model.pretrained": pretrained,
        "training.steps": steps, "training.batch_size": batch_size, "training.learning_rate": lr,
        "training.seed": seed, "training.tensorboard": tensorboard,
        "forgetting.reset_every": forget_every, "memory.layers": memory_layers,
    }  # fmt: skip
    # options that only refine a section: refused when nothing turned the section on
    refinements = {
        "forgetting.episode_schedule": ("--episode-schedule", "--forget-every", episode_schedule),
        "memory.mode": ("--memory-mode", "--memory-layer", memory_mode),
        "memory.n_keys": ("--memory-keys", "--memory-layer", memory_keys),
    }
    sections = load_config(PretrainConfig, config, overrides).extensions
    for dotted, (flag, needs, value) in refinements.items():
        section = dotted.split(".")[0]
        if value is not None and section not in sections:
            raise ConfigError(f"{flag} needs {needs} (or a {section}: section in --config)")
    refined = {dotted: value for dotted, (_flag, _needs, value) in refinements.items()}
    settings = load_config(PretrainConfig, config, {**overrides, **refined})
    with make_progress(console) as progress:
        results = run_pretrain(
            settings,
            out,
            callbacks=[RichProgressCallback(progress, "pretrain")],
            resume=resume,
            overwrite=overwrite,
        )
    write_report([results], out, title=f"palimpsest pretrain: {results.name}")
    _print_pretrain(results)
    console.print(
        f"wrote {out}/results.json, {out}/report.md, {out}/report.html, model in {out}/model; "
        f"re-run with --config {out}/config.yaml"
    )


@app.command()
@user_errors
def evaluate(
    model: Annotated[
        Path, typer.Option(help="A saved model folder (with its tokenizer) or a built-in name.")
    ],
    config: ConfigOption = None,
    corpus: Annotated[str | None, typer.Option(help="Corpus to evaluate on (default wiki-en).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write results.json here.")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per evaluation block (default 128).")] = None,
    max_blocks: Annotated[
        int | None, typer.Option(help="Evaluate at most this many blocks (default 256).")
    ] = None,
    validation_fraction: Annotated[
        float | None, typer.Option(help="Held-out share of the corpus (default 0.05).")
    ] = None,
    facts: Annotated[
        Path | None,
        typer.Option(help="A fact file (JSONL, as palimpsest edit reads): recall of its facts instead."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Score a saved model on a corpus: perplexity beside the unigram baseline for a language
    model, shared-topic accuracy beside the majority class for a topic classifier; with
    ``--facts``, recall of a fact file (each edit's new object, each kept fact's object)."""
    _setup_logging(verbose)
    if facts is not None:
        _evaluate_facts(model, facts, out, [corpus, block_size, max_blocks, validation_fraction, config])
        return
    from palimpsest.config import load_config
    from palimpsest.evaluation import EvaluateConfig, evaluate_saved_lm, is_classifier
    from palimpsest.forgetting.relearning import evaluate_saved_classifier

    settings = load_config(
        EvaluateConfig,
        config,
        {"corpus": corpus, "block_size": block_size, "max_blocks": max_blocks,
         "validation_fraction": validation_fraction},
    )  # fmt: skip
    if is_classifier(model):
        task = evaluate_saved_classifier(model, settings.corpus, max_length=settings.block_size)
        m = task.metrics
        console.print(
            f"{task.model} on {task.corpus}: topic accuracy {100 * m.accuracy:.1f}% "
            f"(majority class {100 * m.majority_baseline:.1f}%, {m.examples:,} documents)"
        )
        results: Results = task
    else:
        lm = evaluate_saved_lm(model, settings)
        console.print(
            f"{lm.model} on {lm.corpus}: perplexity {lm.metrics.perplexity:.2f} "
            f"(unigram baseline {lm.metrics.unigram_perplexity:.2f}, {lm.metrics.tokens:,} tokens)"
        )
        results = lm
    if out is not None:
        from palimpsest.report import write_report

        out.mkdir(parents=True, exist_ok=True)
        results.write(out / "results.json")
        write_report([results], out, title="palimpsest evaluate")


def _yaml_keys(path: Path) -> list[str]:
    """The top-level keys of a YAML settings file (none if it is unreadable: loading it says why)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [str(key) for key in document] if isinstance(document, dict) else []


def _evaluate_facts(model: Path, facts: Path, out: Path | None, corpus_options: list[Any]) -> None:
    from palimpsest.editing.run import fact_file_recall

    if any(option is not None for option in corpus_options):
        raise ConfigError(
            "--facts measures recall of a fact file; corpus options (and --config) do not apply"
        )
    results = fact_file_recall(model, facts)
    table = Table(
        title=f"{results.model}: recall of {results.facts} ({results.edit_rounds} round(s) of edits)"
    )
    for header in ("group", "relation", "facts", "recall", "paraphrase", "after text", "generation"):
        table.add_column(header, justify="left" if header in ("group", "relation") else "right")
    share = lambda value: "–" if value is None else f"{100 * value:.1f}%"  # noqa: E731
    for r in results.rows:
        table.add_row(
            r.group, r.relation, str(r.facts), share(r.recall), share(r.paraphrase), share(r.after_text),
            share(r.generation),
        )  # fmt: skip
    console.print(table)
    if out is not None:
        from palimpsest.report import write_report

        out.mkdir(parents=True, exist_ok=True)
        results.write(out / "results.json")
        write_report([results], out, title="palimpsest evaluate --facts")


adapt_app = typer.Typer(help="The relearning pipeline: adapt a pretrained model to a new language or a task.")
app.add_typer(adapt_app, name="adapt")


def _parse_tokens(text: str) -> int:
    """``100k`` -> 100000, ``5M`` -> 5000000, ``2500`` -> 2500."""

    units = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
    cleaned = text.strip().lower().replace("_", "").replace(",", "")
    try:
        if cleaned and cleaned[-1] in units:
            value = float(cleaned[:-1]) * units[cleaned[-1]]
        else:
            value = float(cleaned)
    except ValueError:
        raise ConfigError(f"--tokens: expected a count like 100k or 5M, got '{text}'") from None
    if not math.isfinite(value) or value > 1e12:
        raise ConfigError(f"--tokens: expected a finite count up to 1e12, got '{text}'")
    if value < 1:
        raise ConfigError(f"--tokens must be positive, got '{text}'")
    return int(value)


@adapt_app.command("language")
@user_errors
def adapt_language_command(
    model: Annotated[Path, typer.Option(help="Pretrained LM folder (from `pretrain`).")],
    corpus: Annotated[str, typer.Option(help="Text of the new language: built-in name, file or hf:NAME.")],
    out: Annotated[Path, typer.Option(help="Output folder; the adapted model goes to OUT/model.")],
    config: ConfigOption = None,
    tokens: Annotated[
        str | None, typer.Option(help="Token budget of new-language text, e.g. 100k or 5M (default 100k).")
    ] = None,
    synthetic: Annotated[
        str | None, typer.Option(help="Turn the corpus into a synthetic language, e.g. permute+scramble.")
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option(help="Vocabulary of the new tokenizer (default 2048).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Updates of the embeddings (default 300).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 2e-3).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Blocks per step (default 16).")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per block (default 128).")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N updates (default 25).")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the embedding draw, data order and masking.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an adaptation with other settings or inputs in OUT.")
    ] = False,
    verbose: VerboseOption = False,
    claim: Any = None,
) -> None:
    """Step 1: new tokenizer, embeddings re-drawn, body frozen; train only the embeddings."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.data import load_corpus, split_corpus, synthetic_language
    from palimpsest.forgetting.relearning import AdaptLanguageResults, LanguageAdaptation, adapt_language
    from palimpsest.progress import RichProgressCallback, make_progress

    settings = load_config(
        LanguageAdaptation,
        config,
        {
            "tokens": _parse_tokens(tokens) if tokens is not None else None, "vocab_size": vocab_size,
            "block_size": block_size, "seed": seed, "training.steps": steps, "training.learning_rate": lr,
            "training.batch_size": batch_size, "training.eval_every": eval_every,
        },
    )  # fmt: skip
    text = load_corpus(corpus)
    if synthetic:
        text = synthetic_language(text, synthetic, seed=settings.seed)
    claim.start_run(settings, overwrite=overwrite, model=model, corpus=corpus, synthetic=synthetic)
    with make_progress(console) as progress:
        result = adapt_language(
            model, split_corpus(text, 0.1), settings, out, callbacks=[RichProgressCallback(progress, "adapt")]
        )
    AdaptLanguageResults.from_json(result).write(out / "results.json")
    console.print(
        f"validation loss {result['curve'][0][1]:.3f} -> {result['final_loss']:.3f} "
        f"on {result['tokens']:,} tokens; model in {result['model_path']}"
    )


@adapt_app.command("task")
@user_errors
def adapt_task_command(
    model: Annotated[Path, typer.Option(help="Pretrained LM folder (from `pretrain`).")],
    out: Annotated[Path, typer.Option(help="Output folder; the task model goes to OUT/model.")],
    config: ConfigOption = None,
    corpus: Annotated[str, typer.Option(help="Labelled corpus of the task language.")] = "wiki-en",
    steps: Annotated[int | None, typer.Option(help="Updates (default 300).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 5e-4).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Documents per step (default 16).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per document (default 128).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a task adaptation with other settings or inputs in OUT.")
    ] = False,
    verbose: VerboseOption = False,
    claim: Any = None,
) -> None:
    """Step 2: fine-tune body + topic head on the (English) task with the embeddings frozen."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.data import load_corpus
    from palimpsest.forgetting.relearning import AdaptTaskResults, TaskAdaptation, adapt_task, topic_task
    from palimpsest.progress import RichProgressCallback, make_progress

    settings = load_config(
        TaskAdaptation,
        config,
        {
            "max_length": max_length, "seed": seed, "training.steps": steps, "training.learning_rate": lr,
            "training.batch_size": batch_size,
        },
    )  # fmt: skip
    task = topic_task(load_corpus(corpus))
    claim.start_run(settings, overwrite=overwrite, model=model, corpus=corpus)
    with make_progress(console) as progress:
        result = adapt_task(model, task, settings, out, callbacks=[RichProgressCallback(progress, "task")])
    AdaptTaskResults.from_json(result).write(out / "results.json")
    console.print(
        f"topic accuracy on held-out {corpus}: {100 * result['accuracy']:.1f}% "
        f"(majority class {100 * result['majority_baseline']:.1f}%); model in {result['model_path']}"
    )


@app.command()
@user_errors
def assemble(
    task: Annotated[Path, typer.Option(help="Task model folder (from `adapt task`).")],
    language: Annotated[Path, typer.Option(help="Language model folder (from `adapt language`).")],
    out: Annotated[Path, typer.Option(help="Where to save the assembled model.")],
    verbose: VerboseOption = False,
) -> None:
    """Step 3: body + head of the task model with the new language's embeddings and tokenizer."""
    _setup_logging(verbose)
    from palimpsest.forgetting.relearning import assemble as assemble_models

    path = assemble_models(task, language, out)
    console.print(f"assembled model saved in {path} (load it with AutoModelForSequenceClassification)")


memory_app = typer.Typer(help="Product-key memory: add it to a model, measure how it is used.")
app.add_typer(memory_app, name="memory")


def _blocks(values: list[str], option: str) -> list[int | float]:
    """Block indices (``2``, ``-1``) or relative depths (``0.5``) as typed on the command line."""

    from palimpsest.models import typed_blocks

    blocks: list[int | float] = []
    for value in values:
        typed = typed_blocks(value)
        if not isinstance(typed, list) or len(typed) != 1:
            raise ConfigError(f"{option}: expected a block index or a depth like 0.5, got '{value}'")
        blocks += typed
    return blocks


@memory_app.command("add")
@user_errors
def memory_add(
    model: Annotated[str, typer.Option(help="Model folder, built-in name (smollm2-135m) or hub id.")],
    out: Annotated[Path, typer.Option(help="Where to save.")],
    config: ConfigOption = None,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Block to give a memory: an index (2, -1) or a relative depth (0.5 = the middle); "
            "repeatable; default 0.",
        ),
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="residual (beside the FFN, default) or replace (instead of it).")
    ] = None,
    n_keys: Annotated[
        int | None, typer.Option(help="Sub-keys per half: n_keys^2 slots (default 512).")
    ] = None,
    heads: Annotated[int | None, typer.Option(help="Memory heads (default 4).")] = None,
    k: Annotated[int | None, typer.Option(help="Slots read per head (default 32).")] = None,
    k_dim: Annotated[int | None, typer.Option(help="Query/key width (default 256).")] = None,
    query_norm: Annotated[str | None, typer.Option(help="layernorm (default), batchnorm or none.")] = None,
    zero_values: Annotated[
        bool | None, typer.Option(help="Start from all-zero values (model unchanged).")
    ] = None,
    sparse_updates: Annotated[
        bool | None,
        typer.Option(
            help="Sparse value gradients: train only the rows read (default: auto, if batches read few).",
        ),
    ] = None,
    gate_hidden: Annotated[
        int | None,
        typer.Option(
            help="A gate of this width: the memory reads nothing until `memory learn` fits it, then only "
            "for the facts taught (residual memories).",
        ),
    ] = None,
    gate_keys: Annotated[
        int | None,
        typer.Option(
            help="Room for this many keys in the gate's codebook (about 9 per fact): it then opens only "
            "near an input it was taught at (needs --gate-hidden).",
        ),
    ] = None,
    gate_key_block: Annotated[
        str | None,
        typer.Option(
            help="Take the codebook's keys from this block's FFN input (an index or a depth, at or before "
            "the memory's): an early block opens unseen phrasings of a taught subject (needs --gate-keys).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the memory's initial weights.")] = 0,
    merged: Annotated[bool, typer.Option(help="Save the whole model, not only the memory.")] = True,
    verbose: VerboseOption = False,
) -> None:
    """Insert product-key memory into a model and save it (merged, or the memory alone as an adapter)."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.data import load_tokenizer
    from palimpsest.memory import PKMConfig, add_product_key_memory, save_memory, save_merged
    from palimpsest.models import count_parameters, load_pretrained, resolve_pretrained
    from palimpsest.seeds import check_seed

    settings = load_config(
        PKMConfig,
        config,
        {"layers": _blocks(layers, "--layer") if layers else None, "mode": mode, "n_keys": n_keys,
         "heads": heads, "k": k, "k_dim": k_dim, "query_norm": query_norm, "zero_values": zero_values,
         "sparse_updates": sparse_updates, "gate_hidden": gate_hidden, "gate_keys": gate_keys,
         "gate_key_block": _blocks([gate_key_block], "--gate-key-block")[0] if gate_key_block else None},
    )  # fmt: skip
    if settings.seed is None:
        check_seed(seed, "--seed")
        settings.seed = seed
    network = load_pretrained(model)
    before = count_parameters(network)
    add_product_key_memory(network, settings)
    if merged:
        save_merged(network, load_tokenizer(resolve_pretrained(model)), out)
    else:
        save_memory(network, out)
    console.print(
        f"added {len(settings.layers)} memory layer(s) ({settings.n_keys**2:,} slots each, {settings.mode}): "
        f"{before:,} -> {count_parameters(network):,} parameters; "
        f"saved {'the model' if merged else 'the memory alone'} in {out}"
    )


@memory_app.command("learn")
@user_errors
def memory_learn(
    model: Annotated[str, typer.Option(help="A model with a memory (memory add), folder or built-in name.")],
    facts: Annotated[
        Path, typer.Option(help="JSONL as for `edit`: lines with new_object are taught, the rest kept.")
    ],
    out: Annotated[
        Path, typer.Option(help="Where the model (with its memory), results.json and the report go.")
    ],
    config: ConfigOption = None,
    trainable: Annotated[
        str | None, typer.Option(help="values (default), values+keys, or memory (the query network too).")
    ] = None,
    sparse_top_t: Annotated[
        int | None, typer.Option(help="Sparse memory fine-tuning: update only this many slots per step.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Optimizer updates (default 100; a gated memory's: at least this).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the memory (default 1e-2; a gated memory's 0.3).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Statements per step (default 16).")] = None,
    paraphrases: Annotated[
        bool | None,
        typer.Option(help="Also teach each fact's other templates, but one held out per subject."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a run with other facts, model or settings in OUT.")
    ] = False,
    verbose: VerboseOption = False,
    claim: Any = None,
) -> None:
    """Write facts into a model's memory alone (optionally only the slots they select specifically).

    A gated memory (memory add --gate-hidden) first fits its gate to every fact it holds: run again
    on the saved model to teach more facts in rounds; `memory forget` takes facts out again."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.editing.datasets import read_edit_file
    from palimpsest.memory.learning import MemoryLearning, learn_saved_model
    from palimpsest.report import write_report

    settings = load_config(
        MemoryLearning,
        config,
        {"trainable": trainable, "sparse_top_t": sparse_top_t, "training.steps": steps,
         "training.learning_rate": lr, "gate.values_learning_rate": lr, "training.batch_size": batch_size,
         "paraphrases": paraphrases},
    )  # fmt: skip
    requests, keep = read_edit_file(facts)
    claim.start_run(settings, overwrite=overwrite, model=model, facts=facts)
    results = learn_saved_model(
        model, [r.fact for r in requests], [r.new_object for r in requests], keep, settings, out
    )
    write_report([results], out, title="palimpsest memory learn")
    kept = (
        f"; kept facts {100 * results.kept_recall_before:.0f}% -> {100 * results.kept_recall_after:.0f}%"
        if results.kept_recall_before is not None and results.kept_recall_after is not None
        else ""
    )
    after_text = results.learned_recall_after_text_after
    after = f" (after text {100 * after_text:.0f}%)" if after_text is not None else ""
    gate = results.learned.gate
    opened = (
        "; the gate opens for "
        + ", ".join(f"{100 * fit.opened_positives:.0f}%" for fit in gate.layers.values())
        + f" of the {gate.facts} facts' prompts it was fitted to"
        if gate is not None
        else ""
    )
    console.print(
        f"taught {results.facts} fact(s) in {results.learned.steps} steps: recall "
        f"{100 * results.learned_recall_before:.0f}% -> {100 * results.learned_recall_after:.0f}%"
        f"{after}{kept}{opened}; "
        f"wrote {out}/model, {out}/results.json, {out}/report.md"
    )


@memory_app.command("forget")
@user_errors
def memory_forget(
    model: Annotated[str, typer.Option(help="A model whose gated memory was taught facts (memory learn).")],
    facts: Annotated[
        Path, typer.Option(help="JSONL as for `edit`: the facts to take out (subject and relation).")
    ],
    out: Annotated[Path, typer.Option(help="Where the model without them, results.json and the report go.")],
    config: ConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Take facts out of a gated memory: the slots only they read are zeroed and the gate is refitted
    without them (closed again, the base model exactly, once none is left)."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.editing.datasets import read_edit_records
    from palimpsest.memory.gated import forget_saved_model
    from palimpsest.memory.learning import MemoryLearning
    from palimpsest.report import write_report

    settings = load_config(MemoryLearning, config, {})
    chosen = [line.fact for line in read_edit_records(facts)]
    results = forget_saved_model(model, chosen, settings, out)
    write_report([results], out, title="palimpsest memory forget")
    kept_before, kept_after = results.remaining_recall_before or 0.0, results.remaining_recall_after or 0.0
    left = (
        "the gate is closed again (the base model's outputs)"
        if results.gate_closed
        else f"{results.remaining} fact(s) left, recalled {100 * kept_before:.0f}% -> {100 * kept_after:.0f}%"
    )
    console.print(
        f"took {results.facts} fact(s) out: recall of their taught answers "
        f"{100 * results.taught_recall_before:.0f}% -> {100 * results.taught_recall_after:.0f}%, of the "
        f"objects the file states {100 * results.stated_recall_before:.0f}% -> "
        f"{100 * results.stated_recall_after:.0f}%; {left}; wrote {out}/model, {out}/results.json"
    )


@memory_app.command("list")
@user_errors
def memory_list(
    model: Annotated[str, typer.Option(help="A model with a memory, folder or built-in name.")],
    verbose: VerboseOption = False,
) -> None:
    """What a gated memory holds: its facts, when each was taught, the slots each reads."""
    _setup_logging(verbose)
    from palimpsest.data import load_tokenizer
    from palimpsest.memory.gated import taught_fact_rows
    from palimpsest.memory.inject import memory_handle
    from palimpsest.models import load_pretrained, resolve_pretrained

    network = load_pretrained(model).eval()
    rows = taught_fact_rows(network, load_tokenizer(resolve_pretrained(model)))
    if not rows:
        console.print(f"the memory of {model} holds no taught facts")
        return
    table = Table(title=f"{len(rows)} fact(s) in the memory of {model}")
    for column in ("subject", "relation", "answer", "round", "taught (UTC)", "slots", "own slots", "gate"):
        table.add_column(column, justify="right" if column in ("round", "slots", "own slots") else "left")
    for row in rows:
        table.add_row(row.subject, row.relation, row.answer, str(row.round), row.taught_at, str(row.slots),
                      str(row.own_slots), "opens" if row.opens else "closed")  # fmt: skip
    console.print(table)
    kept = memory_handle(network).taught.kept
    if kept:
        subjects = ", ".join(f"{fact.subject} ({fact.relation})" for fact in kept[:5])
        console.print(f"its gate is kept closed for {len(kept)} fact(s) asked to keep: {subjects}"
                      + (", ..." if len(kept) > 5 else ""))  # fmt: skip


@memory_app.command("stats")
@user_errors
def memory_stats(
    model: Annotated[Path, typer.Option(help="A model saved with memory (merged), or the base model.")],
    memory: Annotated[
        Path | None, typer.Option(help="A memory saved on its own (adapter), for --model.")
    ] = None,
    config: ConfigOption = None,
    corpus: Annotated[str | None, typer.Option(help="Evaluation text (default wiki-en).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write results.json, a usage plot and a report here.")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per block (default 128).")] = None,
    max_blocks: Annotated[int | None, typer.Option(help="Blocks to read (default 128).")] = None,
    verbose: VerboseOption = False,
) -> None:
    """Usage metrics of every memory layer on a corpus's validation split."""
    _setup_logging(verbose)
    from palimpsest.config import load_config
    from palimpsest.memory.report import UsageConfig, memory_stats_of_saved

    settings = load_config(
        UsageConfig, config, {"corpus": corpus, "block_size": block_size, "max_blocks": max_blocks}
    )
    results = memory_stats_of_saved(model, memory, settings, out=out)
    table = Table(title=f"memory usage on {settings.corpus} ({results.tokens:,} tokens)")
    columns = ["used", "kl_counts", "kl_weights", "gini", "slots_50", "slots_90", "slots_99"]
    table.add_column("metric")
    for name in results.layers:
        table.add_column(name, justify="right")
    for column in columns:
        table.add_row(column, *(f"{metrics[column]:.3f}" for metrics in results.layers.values()))
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}/results.json, {out}/report.md, {out}/report.html")


@app.command()
@user_errors
def edit(
    model: Annotated[str, typer.Option(help="Model folder (or built-in name / hub id) to edit.")],
    facts: Annotated[
        Path, typer.Option(help="JSONL: lines with new_object are edits, others facts to keep.")
    ],
    out: Annotated[Path, typer.Option(help="Where the edited model, results.json and the report go.")] = Path(
        "runs/edit"
    ),
    layers: Annotated[
        str | None,
        typer.Option(
            help="first, last, first+last, all, block indices (0,3), depths (0.15) or spans (0.1:0.25); "
            "the editor's own default when left out."
        ),
    ] = None,
    modules: Annotated[
        str | None, typer.Option(help="Comma list of ffn-out (default), ffn, attention, block, embeddings.")
    ] = None,
    norm: Annotated[str | None, typer.Option(help="linf (default), l2 or none (unconstrained).")] = None,
    delta: Annotated[
        float | None, typer.Option(help="Radius of the bound (default 0.08 x each weight's RMS).")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Adam's learning rate (constrained: 2e-4 on the weights; memit/alphaedit: 0.5 per target)."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Most optimizer steps, early stop (constrained: 100; memit/alphaedit: 25 per target)."
        ),
    ] = None,
    objective: Annotated[str | None, typer.Option(help="auto (default), mlm, ft-m or ft-l.")] = None,
    preserve: Annotated[
        str | None,
        typer.Option(
            help="constrained: none (default) or text (keep the outputs of ordinary text and of earlier "
            "edits: null-space projection; needs --norm l2 or none)."
        ),
    ] = None,
    sequential: Annotated[
        bool, typer.Option(help="Edit one fact after another instead of together.")
    ] = False,
    method: Annotated[
        str,
        typer.Option(
            help="auto (memit on a causal LM, constrained on a masked LM), constrained (fine-tuning in a "
            "norm ball, Zhu et al.), memit or alphaedit (batch editors)."
        ),
    ] = "auto",
    statistics: Annotated[
        Path | None,
        typer.Option(help="memit/alphaedit: a statistics file computed before on this model (safetensors)."),
    ] = None,
    config: ConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Modify facts in a model (constrained fine-tuning, MEMIT or AlphaEdit); report both sides.

    A model palimpsest edited before continues its sequence: the earlier edits' keys, saved with
    it, are preserved."""
    _setup_logging(verbose)
    from dataclasses import fields

    from palimpsest.config import load_config
    from palimpsest.editing.config import EditConfig
    from palimpsest.editing.memit import BatchEditConfig
    from palimpsest.editing.run import edit_saved_model
    from palimpsest.progress import make_progress
    from palimpsest.report import write_report

    if method not in ("auto", "constrained", "memit", "alphaedit"):
        raise ConfigError(f"--method: unknown editor '{method}' (known: auto, constrained, memit, alphaedit)")
    if method == "auto":
        from palimpsest.editing.run import choose_method
        from palimpsest.models import load_config as load_model_config
        from palimpsest.models import objective_of

        method = choose_method(objective_of(load_model_config(model)))
        # settings only the constrained editor has name it, on the command line or in --config
        constrained_only = {f.name for f in fields(EditConfig)} - {f.name for f in fields(BatchEditConfig)}
        if any(flag is not None for flag in (modules, norm, delta, objective, preserve)) or (
            config is not None and constrained_only & set(_yaml_keys(config))
        ):
            method = "constrained"
    if statistics is not None and method == "constrained":
        raise ConfigError("--statistics belongs to --method memit or alphaedit, not constrained")

    from palimpsest.models import typed_blocks

    chosen_layers = typed_blocks(layers) if layers else None
    settings: EditConfig | BatchEditConfig
    if method == "constrained":
        settings = load_config(
            EditConfig,
            config,
            {
                "layers": chosen_layers, "modules": modules.split(",") if modules else None,
                "norm": "none" if norm is not None and norm.lower() == "none" else norm,
                "delta": delta, "learning_rate": lr, "steps": steps, "objective": objective,
                "preserve": preserve,
            },
        )  # fmt: skip
    else:
        constrained_only = {
            "--modules": modules, "--norm": norm, "--delta": delta, "--objective": objective,
            "--preserve": preserve,
        }  # fmt: skip
        given = [flag for flag, value in constrained_only.items() if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} belong(s) to --method constrained, not {method}")
        settings = load_config(
            BatchEditConfig,
            config,
            {"method": method, "layers": chosen_layers, "target_lr": lr, "target_steps": steps},
        )
    if isinstance(settings, EditConfig):
        results = edit_saved_model(model, facts, out, settings, sequential=sequential)
    else:
        with make_progress(console) as progress:
            tasks: list[Any] = []  # the bar appears when a statistics pass starts, not before

            def report(done: int, total: int) -> None:
                if not tasks:
                    tasks.append(
                        progress.add_task("statistics of ordinary text (tokens)", total=total, status="")
                    )
                progress.update(tasks[0], completed=done, total=total)

            results = edit_saved_model(
                model,
                facts,
                out,
                settings,
                sequential=sequential,
                statistics_file=statistics,
                progress=report,
            )
    write_report([results], out, title="palimpsest edit")
    used = "constrained" if isinstance(results.config, EditConfig) else results.config.method
    table = Table(
        title=f"{len(results.requests)} edit(s) by {used}, {results.steps} steps, {results.seconds:.1f} s"
    )
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, value in results.after.items():
        if isinstance(value, float):
            table.add_row(key, f"{results.before[key]:.3f}", f"{value:.3f}")
    console.print(table)
    if results.earlier_rounds:
        earlier = f"{results.earlier_edits} earlier edit(s) in {results.earlier_rounds} round(s)"
        if results.earlier_preserved:
            console.print(f"continued a sequence: {earlier} preserved")
        else:
            console.print(
                f"continued a sequence: {earlier} on record, not preserved by the norm ball alone "
                "(--preserve text or a batch editor keeps them)"
            )
    console.print(f"wrote {out}/model, {out}/results.json, {out}/report.md")


StudyConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML: fields of the scale to change.")
]
experiment_app = typer.Typer(help="End-to-end studies that reproduce each paper's effect.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("plasticity")
@user_errors
def experiment_plasticity(
    scale: Annotated[str, typer.Option(help="smoke, demo or cpu (about 90 minutes on 2 cores).")] = "demo",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/plasticity"),
    config: StudyConfigOption = None,
    family: Annotated[
        str | None,
        typer.Option(help="Model family of the body: roberta or bert (the paper), gpt2 or llama (decoders)."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Standard vs active-forgetting pretraining, then relearning new languages (Chen et al. 2023)."""
    _setup_logging(verbose)
    from palimpsest.experiments import get_study
    from palimpsest.models import FAMILY_OBJECTIVE

    if family is not None and family not in FAMILY_OBJECTIVE:
        raise ConfigError(f"--family: unknown family '{family}' (known: {', '.join(FAMILY_OBJECTIVE)})")

    def adjust(name: str, settings: Any) -> tuple[str, Any]:
        return (name, settings) if family is None else (f"{name}, {family}", settings.with_family(family))

    _run_study(get_study("plasticity"), out, scale, config, adjust)


@experiment_app.command("memory")
@user_errors
def experiment_memory(
    scale: Annotated[
        str, typer.Option(help="smoke, demo, cpu (about an hour on 2 cores) or full (GPUs).")
    ] = "demo",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/memory"),
    config: StudyConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """No memory vs replace/residual memory, from scratch or from a model pretrained without it."""
    _setup_logging(verbose)
    from palimpsest.experiments import get_study

    _run_study(get_study("memory"), out, scale, config)


@experiment_app.command("editing")
@user_errors
def experiment_editing(
    scale: Annotated[
        str, typer.Option(help="smoke, demo, cpu, full, or real (the built-in SmolLM2-135M).")
    ] = "demo",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/editing"),
    config: StudyConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Unconstrained vs constrained fine-tuning of facts, by layer choice and bound (Zhu et al. 2020)."""
    _setup_logging(verbose)
    from palimpsest.experiments import get_study

    toy, real = get_study("editing"), get_study("editing-real")
    study = real if scale in real.scales else toy  # the built-in model, edited as it is, or models made here
    if scale not in study.scales:
        raise ConfigError(
            f"unknown scale '{scale}' for the editing study (known: {', '.join([*toy.scales, *real.scales])})"
        )
    _run_study(study, out, scale, config)


@experiment_app.command("many-edits")
@user_errors
def experiment_many_edits(
    scale: Annotated[
        str,
        typer.Option(
            help="smoke, demo (the demo's part: minutes), real-quick (about 1.5 h on 2 cores) or real (days)."
        ),
    ] = "real-quick",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/many-edits"),
    config: StudyConfigOption = None,
    benchmark: Annotated[
        Path | None,
        typer.Option(help="A benchmark.jsonl to use (an earlier run's) instead of building one."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """FT-M, the constrained editor, MEMIT and AlphaEdit on 1 to 1,000 edits, at once and in sequence."""
    _setup_logging(verbose)
    from palimpsest.experiments import get_study

    _run_study(get_study("many-edits", benchmark=benchmark), out, scale, config)


@experiment_app.command("knowledge")
@user_errors
def experiment_knowledge(
    scale: Annotated[
        str, typer.Option(help="smoke, demo or real (the built-in SmolLM2-135M; hours on 2 cores).")
    ] = "demo",
    out: Annotated[Path, typer.Option(help="Output folder (resumable).")] = Path("runs/knowledge"),
    config: StudyConfigOption = None,
    verbose: VerboseOption = False,
) -> None:
    """New facts into a model: full fine-tuning, LoRA, the editor, a memory, sparse memory updates."""
    _setup_logging(verbose)
    from palimpsest.experiments import get_study

    _run_study(get_study("knowledge"), out, scale, config)


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for every study and the report.")] = Path(
        "demo-out"
    ),
    scale: Annotated[str, typer.Option(help="smoke (seconds) or demo (minutes).")] = "demo",
    seed: Annotated[int, typer.Option(help="Base seed.")] = 0,
    verbose: VerboseOption = False,
) -> None:
    """The main job: every method at demo scale, a verdict table, report.md and report.html."""
    _setup_logging(verbose)
    from palimpsest.demo import run_demo
    from palimpsest.seeds import check_seed

    check_seed(seed, "--seed")
    from palimpsest.progress import make_progress

    started = time.perf_counter()

    def stage_line(name: str, seconds: float | None) -> None:
        # one plain line per stage: the progress bars draw nothing where output goes to a file
        clock = _clock(time.perf_counter() - started)
        text = f"{clock} {name} ..." if seconds is None else f"{clock} {name}: done in {seconds:.0f} s"
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    with make_progress(console) as progress:
        summary = run_demo(
            out, scale, callbacks_for=_progress_callbacks(progress), on_stage=stage_line, seed=seed
        )
    _print_claims(summary.claims())
    console.print(
        f"demo finished in {summary.seconds:.0f}s: {out}/report.md, {out}/report.html, {out}/results.json",
        highlight=False,
        soft_wrap=True,
    )


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"[{minutes:02d}:{rest:02d}]"


def _print_claims(claims: list[Any]) -> None:
    """The verdict table (:mod:`palimpsest.claims`): one row per claim, the verdict coloured."""
    from palimpsest.claims import CLAIM_HEADERS, Outcome, claim_rows

    colours = {
        Outcome.REPRODUCED: "green", Outcome.PARTLY: "yellow", Outcome.NOT_REPRODUCED: "red",
        Outcome.NOT_MEASURABLE: "dim",
    }  # fmt: skip
    # A log file has no width to respect; a narrow terminal drops the paper's figures (the report
    # keeps every column).
    width = console.width if console.is_terminal else 180
    shown = [i for i, header in enumerate(CLAIM_HEADERS) if width >= 140 or header != "paper"]
    table = Table(title="What this run shows", show_lines=True)
    for index in shown:
        table.add_column(CLAIM_HEADERS[index], overflow="fold")
    for claim, row in zip(claims, claim_rows(claims), strict=True):
        cells = [Text(cell) for cell in row]  # plain text: a claim's brackets are not markup
        cells[CLAIM_HEADERS.index("verdict")].stylize(colours[claim.outcome])
        table.add_row(*(cells[index] for index in shown))
    # rich never prints wider than its console, so a log file gets a console of its own width
    out = console if console.is_terminal else Console(file=console.file, width=width, no_color=True)
    out.print(table)


@app.command()
@user_errors
def report(
    results: Annotated[
        list[Path], typer.Argument(help="results.json files (single results or demo bundles).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html and plots.")] = Path("report"),
    title: Annotated[str, typer.Option(help="Report title.")] = "palimpsest report",
) -> None:
    """Rebuild a report from results.json files."""
    _setup_logging(False)
    from palimpsest.errors import DataError
    from palimpsest.report import write_report
    from palimpsest.results import read_results

    collected = []
    for path in results:
        if not path.is_file():
            raise DataError(f"results file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{path} is not a JSON text file") from None
        if not isinstance(data, dict) or ("kind" not in data and "results" not in data):
            raise DataError(f"{path} is not a palimpsest results file")
        documents = data.get("results", [data])
        if not isinstance(documents, list):
            raise DataError(f"{path}: 'results' must be a list of results documents")
        for document in documents:
            try:
                collected.append(read_results(document))
            except DataError as error:
                raise DataError(f"{path}: {error}") from None
    markdown, html = write_report(collected, out, title=title)
    console.print(f"wrote {markdown} and {html}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
