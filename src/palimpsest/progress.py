"""A rich progress bar for Trainer runs (the CLI's; the library itself never prints)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback


class _Progress(Progress):
    """A progress display that appears with its first task: a command that stops on bad input
    before any training prints its one error line, not a blank line before it."""

    def start(self) -> None:
        """Shown from the first task on (see :meth:`add_task`)."""

    def add_task(self, *args: Any, **kwargs: Any) -> Any:
        if not self.live.is_started:
            super().start()
        return super().add_task(*args, **kwargs)

    def stop(self) -> None:
        if self.live.is_started:
            super().stop()


def make_progress(console: Console | None = None) -> Progress:
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class RichProgressCallback(TrainerCallback):
    """Shows optimizer steps, the last training loss and validation loss on a shared bar."""

    def __init__(self, progress: Progress, description: str):
        self.progress = progress
        self.description = description
        self.task: Any = None
        self.status: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.task = self.progress.add_task(
                self.description, total=state.max_steps, completed=state.global_step, status=""
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.progress.update(
                self.task, completed=state.global_step, status=" ".join(self.status.values())
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.task is None or not logs:
            return
        if "loss" in logs:
            self.status["loss"] = f"loss {float(logs['loss']):.3f}"
        if "eval_loss" in logs:
            self.status["eval"] = f"val {float(logs['eval_loss']):.3f}"

    def on_train_end(self, args, state, control, **kwargs):
        if self.task is not None:
            self.progress.update(self.task, completed=state.global_step)
