"""How the constrained editor edits (:class:`EditConfig`), and plain fine-tuning's settings.

Its own module so that the command line, the studies and a user's YAML can name an edit's
settings without the editor (:mod:`palimpsest.editing.editor`) that carries them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from palimpsest.errors import ConfigError

Norm = Literal["linf", "l2"]
EditObjective = Literal["auto", "mlm", "ft-m", "ft-l"]
PLAIN_FINETUNING: dict[str, Any] = {
    "delta_units": "absolute", "stop_loss": 1e-2, "stop_on_success": False, "edit_positions": "all",
    "context_passages": 0,
}  # fmt: skip


@dataclass
class EditConfig:
    """How an edit is made.

    The defaults were chosen by measuring single counterfactual edits on the built-in real
    model (SmolLM2-135M; README, "Choosing the editor's defaults"): the output projection of
    one early-middle block's MLP, learning from the subject's tokens only, an L-inf box of 8% of
    each weight's RMS, Adam at 2e-4, stopping as soon as the edit takes. The studies' grids
    and :data:`PLAIN_FINETUNING` give the paper's plain constrained fine-tuning.
    """

    #: Block 4 of SmolLM2's 30: on that model early-middle blocks kept the most other facts at
    #: A_M 100% (measured: README, "Choosing the editor's defaults").
    layers: str | list[int | float] = "0.15"
    modules: list[str] = field(default_factory=lambda: ["ffn-out"])
    parameters: list[str] = field(default_factory=list)
    norm: Norm | Literal["none"] | None = "linf"
    delta: float = 0.08
    #: ``"absolute"``: δ in the weights' own units; ``"weight"``: δ times each edited tensor's
    #: scale (its RMS for L-inf, its Frobenius norm for L2), so one δ means the same relative
    #: change in a 64-wide and a 576-wide model.
    delta_units: Literal["absolute", "weight"] = "weight"
    objective: EditObjective = "auto"
    #: ``"adam"`` moves every selected weight by about ``learning_rate`` per step, whatever its
    #: gradient; ``"sgd"`` follows the gradient itself.
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 2e-4
    steps: int = 100
    #: Stop when the training loss falls below this (None: no loss threshold).
    stop_loss: float | None = None
    #: Stop as soon as every trained token of the edits is the model's argmax (the edit has
    #: taken, as recall measures it): the smallest change that makes the edit.
    stop_on_success: bool = True
    #: Where the edited weights learn from: every position (``"all"``, plain fine-tuning), or
    #: only the subject's tokens (``"subject"``): the weights still change everywhere they are
    #: used, but the change is built from the subject's own activations, so prompts about other
    #: subjects — which share the template's tokens, not the subject's — are barely moved.
    edit_positions: Literal["all", "subject"] = "subject"
    batch_size: int = 64
    edit_template: int = 0
    #: Train each edit through its edit template only (``"edit"``), or through every template
    #: of its relation except its held-out paraphrase (``"paraphrases"``).
    train_templates: Literal["edit", "paraphrases"] = "edit"
    #: Causal LMs: besides the prompt as written, train each edit after this many passages of
    #: unrelated text (ordinary text of wiki-en's training split), so that it also holds when
    #: the question follows other text. Opt-in, because each passage is another prompt to train
    #: every step (its effect and cost on SmolLM2: README, "Recall").
    context_passages: int = 0
    #: Preserved knowledge, the batch editors' constraint as an option of fine-tuning (Zhu et al.'s
    #: ball asks "do not move the weights much", this asks "do not move these outputs"): with
    #: ``"text"`` every change of an FFN output projection is kept in the null space of the keys
    #: ordinary text gives it (:func:`~palimpsest.editing.statistics.nullspace_projector`) and of
    #: the keys of the edits made before, so what that text and those edits read from the weight
    #: does not move. Needs ``norm`` l2 or none: a rescaled change stays in the null space, a
    #: clamped one does not. ``"none"``: the ball alone.
    preserve: Literal["none", "text"] = "none"
    #: The null space: eigenvectors of ``C0`` below this share of its largest eigenvalue.
    nullspace_threshold: float = 1e-2
    statistics_corpus: str = "wiki-en"
    statistics_tokens: int = 100_000

    def __post_init__(self) -> None:
        if self.norm == "none":  # as the command line and YAML write "unconstrained"
            self.norm = None
        if self.norm is not None and self.norm not in ("linf", "l2"):
            raise ConfigError(f"edit.norm: expected linf, l2 or none, got {self.norm!r}")
        if self.norm is not None and not (math.isfinite(self.delta) and self.delta > 0):
            raise ConfigError(f"edit.delta must be a positive number, got {self.delta}")
        if self.delta_units not in ("absolute", "weight"):
            raise ConfigError(f"edit.delta_units: expected absolute or weight, got {self.delta_units!r}")
        if self.edit_positions not in ("all", "subject"):
            raise ConfigError(f"edit.edit_positions: expected all or subject, got {self.edit_positions!r}")
        if self.train_templates not in ("edit", "paraphrases"):
            raise ConfigError(
                f"edit.train_templates: expected edit or paraphrases, got {self.train_templates!r}"
            )
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"edit.optimizer: expected adam or sgd, got {self.optimizer!r}")
        if self.objective not in ("auto", "mlm", "ft-m", "ft-l"):
            raise ConfigError(f"edit.objective: expected auto, mlm, ft-m or ft-l, got {self.objective!r}")
        if self.context_passages < 0:
            raise ConfigError(f"edit.context_passages must be >= 0, got {self.context_passages}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"edit.{name} must be positive, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"edit.learning_rate must be a positive number, got {self.learning_rate}")
        if self.stop_loss is not None and not math.isfinite(self.stop_loss):
            raise ConfigError(f"edit.stop_loss must be a number, got {self.stop_loss}")
        if self.preserve not in ("none", "text"):
            raise ConfigError(f"edit.preserve: expected none or text, got {self.preserve!r}")
        if self.preserve == "text" and self.norm == "linf":
            raise ConfigError(
                "edit.preserve: text needs norm l2 or none (a change clamped to an L-inf box leaves the "
                "null space of the preserved keys; one rescaled to an L2 ball stays in it)"
            )
        if not (math.isfinite(self.nullspace_threshold) and 0 < self.nullspace_threshold < 1):
            raise ConfigError(f"edit.nullspace_threshold must be in (0, 1), got {self.nullspace_threshold}")
        if self.statistics_tokens <= 0:
            raise ConfigError(f"edit.statistics_tokens must be positive, got {self.statistics_tokens}")
