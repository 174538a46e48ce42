"""The findings the memory study tests (Lample et al. 2019, Kim & Jung 2020): which arms each
compares, on which metric."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """A finding the study tests: the comparisons it rests on and, for a published claim, its
    line in the verdict table (``claim`` None: a sanity check, kept to the details)."""

    title: str
    checks: tuple[tuple[str, str, str], ...]
    claim: str | None = None
    paper: str = ""


FINDINGS = (
    Finding(
        "Capacity check (removing block {layer}'s FFN hurts)",
        (("no-ffn", "no-memory", "validation_loss"), ("no-ffn", "no-memory", "recall")),
    ),
    Finding(
        "Capacity check (a wider FFN helps)",
        (("wide-ffn", "no-memory", "validation_loss"), ("wide-ffn", "no-memory", "recall")),
    ),
    Finding(
        "Lample et al.: the memory adds recall where capacity is short (residual memory from the start "
        "vs the plain model)",
        (("residual-scratch", "no-memory", "recall"),),
        "a memory adds capacity",
        "a memory adds what a deeper model would (Lample et al. 2019)",
    ),
    Finding(
        "... at equal compute (vs a dense FFN of as many multiply-adds per token beside block {layer}'s)",
        (
            ("residual-scratch", "ffn-equal-compute", "recall"),
            ("residual-scratch", "ffn-equal-compute", "validation_loss"),
        ),
        "a memory beats a dense FFN of equal compute",
        "12 layers + memory beat 24 layers at half the inference time (Lample et al. 2019)",
    ),
    Finding(
        "... at equal parameters (vs a dense FFN of as many parameters, many times the compute)",
        (
            ("residual-scratch", "ffn-equal-params", "recall"),
            ("residual-scratch", "ffn-equal-params", "validation_loss"),
        ),
    ),
    Finding(
        "Kim & Jung (1): initialising from a model pretrained without memory spreads the memory's use "
        "(lower KL from uniform, more slots holding 90% of the weight)",
        (
            ("replace-pretrained", "replace-scratch", "kl_weights"),
            ("residual-pretrained", "residual-scratch", "kl_weights"),
            ("replace-pretrained", "replace-scratch", "slots_90"),
            ("residual-pretrained", "residual-scratch", "slots_90"),
        ),
        "starting from weights pretrained without memory spreads the memory's use",
        "most slots stay outdated otherwise (Kim & Jung 2020)",
    ),
    Finding(
        "Kim & Jung (1'): ... and improves the model (validation loss, fact recall)",
        (
            ("replace-pretrained", "replace-scratch", "validation_loss"),
            ("residual-pretrained", "residual-scratch", "validation_loss"),
            ("replace-pretrained", "replace-scratch", "recall"),
            ("residual-pretrained", "residual-scratch", "recall"),
        ),
        "starting from pretrained weights also improves the model",
        "crucial for GLUE/SQuAD quality (Kim & Jung 2020)",
    ),
    Finding(
        "Kim & Jung (2): a residual memory beats one that replaces the FFN",
        (
            ("residual-scratch", "replace-scratch", "validation_loss"),
            ("residual-pretrained", "replace-pretrained", "validation_loss"),
            ("residual-scratch", "replace-scratch", "recall"),
            ("residual-pretrained", "replace-pretrained", "recall"),
        ),
        "a memory beside the FFN beats one replacing it",
        "crucial for memory use and downstream quality (Kim & Jung 2020)",
    ),
    Finding(
        "The memory itself helps (memory added at update P vs the same continuation without it)",
        (
            ("residual-pretrained", "no-memory-continued", "validation_loss"),
            ("residual-pretrained", "no-memory-continued", "recall"),
            ("replace-pretrained", "no-memory-continued", "validation_loss"),
            ("replace-pretrained", "no-memory-continued", "recall"),
        ),
        "a memory added to a pretrained model improves it",
        "BERT-large quality from a PKM-augmented BERT-base (Kim & Jung 2020)",
    ),
)
