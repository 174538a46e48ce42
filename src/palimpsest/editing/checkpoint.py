"""The saved progress of a long edit, so that a killed run resumes where it was.

:class:`EditCheckpoint` writes the edited tensors, the optimizer's state and where the edit
stood into one safetensors file (atomically: a kill while saving leaves the previous save), and
a later run of the same edit (its fingerprint: facts, settings, starting weights) continues from
it; a file of another edit is refused.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from palimpsest.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class EditCheckpoint:
    """Where a long edit saves itself every ``every`` seconds, and what a resumed run found there.

    The file holds the edited tensors (``parameter/<name>``), the optimizer's state
    (``optimizer/<index>/<key>``: Adam's moments and step count) and, as metadata, the edit's
    fingerprint, the request group being edited, the steps taken in it and before it, and the
    seconds spent so far. It is written under a temporary name and renamed, so a kill while
    saving leaves the previous save.
    """

    def __init__(self, path: Path, fingerprint: str, every: float):
        if not (math.isfinite(every) and every >= 0):
            raise ConfigError(f"progress_every must be a number of seconds >= 0, got {every}")
        self.path, self.fingerprint, self.every = path, fingerprint, every
        #: The group being edited, steps taken in it, steps of the groups before it.
        self.group, self.taken, self.steps = 0, 0, 0
        #: Seconds spent by earlier runs, and the last loss they saw.
        self.seconds, self.loss = 0.0, float("nan")
        self._optimizer_state: dict[str, torch.Tensor] = {}
        self._saved = self._run_started = time.perf_counter()

    def resume(self, parameters: Mapping[str, torch.Tensor]) -> None:
        """Put the saved tensors into the model (nothing to do if no progress was saved)."""
        if not self.path.exists():
            return
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            group, taken, steps = (int(metadata[key]) for key in ("group", "taken", "steps"))
            seconds, loss = float(metadata["seconds"]), float(metadata["loss"])
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise DataError(f"{self.path} is not an edit's saved progress ({error})") from None
        if metadata.get("fingerprint") != self.fingerprint:
            raise DataError(
                f"{self.path} holds the progress of a different edit (other facts, settings or starting "
                "weights): remove it or name another file"
            )
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(tensors[f"parameter/{name}"])
        self.group, self.taken, self.steps, self.seconds, self.loss = group, taken, steps, seconds, loss
        self._optimizer_state = {key: value for key, value in tensors.items() if key.startswith("optimizer/")}
        logger.info("resuming the edit saved in %s: group %d, step %d", self.path, group, taken)

    def enter(self, group: int, steps_before: int, started: float) -> None:
        """The edit of ``group`` begins (or, for the saved group, resumes)."""
        if group != self.group:
            self._optimizer_state, self.taken = {}, 0
        self.group, self.steps, self._run_started = group, steps_before, started

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
        """Load the saved optimizer state; returns (steps already taken, their last loss)."""
        taken, loss = self.taken, (self.loss if self.taken else float("nan"))
        if self._optimizer_state:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in self._optimizer_state.items():
                _, index, name = key.split("/")
                state.setdefault(int(index), {})[name] = value
            optimizer.load_state_dict(
                {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
            )
        self._optimizer_state, self.taken = {}, 0
        return taken, loss

    def save_if_due(
        self,
        parameters: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        taken: int,
        loss: float,
    ) -> None:
        now = time.perf_counter()
        if now - self._saved < self.every:
            return
        tensors = {f"parameter/{name}": p.detach().clone().contiguous() for name, p in parameters.items()}
        for index, state in optimizer.state_dict()["state"].items():
            for name, value in state.items():
                value = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optimizer/{index}/{name}"] = value.detach().clone().contiguous()
        metadata = {
            "fingerprint": self.fingerprint, "group": str(self.group), "taken": str(taken),
            "steps": str(self.steps), "seconds": repr(self.seconds + now - self._run_started),
            "loss": repr(loss),
        }  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.tmp")
        save_file(tensors, str(staging), metadata=metadata)
        staging.replace(self.path)
        self._saved = now
        logger.info("edit progress saved to %s (group %d, step %d)", self.path, self.group, taken)
