"""Statistics of ordinary text at the weights an edit changes: what "preserved knowledge" is.

A batch editor (MEMIT, AlphaEdit) writes a change ``dW`` into an FFN's output projection
``W`` and must leave ``W k`` alone for the keys ``k`` (the projection's inputs) that ordinary
text produces. Those keys are summarised by their second moment ``C0 = E[k k^T]`` over a
corpus: the least squares of MEMIT weigh ``dW C0 dW^T`` against fitting the edits, and
AlphaEdit projects ``dW`` onto the directions where ``C0`` is (nearly) zero.

Computing ``C0`` reads tens of thousands of tokens through the model, so it is cached as
safetensors beside the model cache, keyed by what decides it: the fingerprint of the weights
the keys pass through, the corpus, the number of tokens and the blocks. Another model (or the
same model edited), corpus or count computes it again; a torn or unreadable file too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from palimpsest.editing.selection import ffn_output_projection
from palimpsest.errors import ConfigError, DataError
from palimpsest.models import model_cache_dir, transformer_blocks

logger = logging.getLogger(__name__)

#: Progress of a statistics pass: ``(tokens read, tokens wanted)``.
Progress = Callable[[int, int], None]


@dataclass
class LayerStatistics:
    """``C0`` of one block's FFN output projection, and the typical size of that block's output."""

    second_moment: torch.Tensor  # (d_in, d_in), float64: E[k k^T] over the tokens read
    hidden_norm: float  # mean L2 norm of the block's output (the residual stream) per token
    tokens: int


def nullspace_projector(second_moment: torch.Tensor, threshold: float, *, where: str = "") -> torch.Tensor:
    """``P`` (float64): the orthogonal projector onto the eigenvectors of ``C0`` whose eigenvalue is
    below ``threshold`` times the largest, the directions ordinary text leaves (nearly) unused.

    A change ``dW`` with ``dW = dW P`` leaves ``W k`` as it was for every key ``k`` of that text
    (AlphaEdit's projection)."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    small = vectors[:, values < threshold * values.max()]
    if small.shape[1] == 0:
        raise ConfigError(
            f"{where}ordinary text uses every direction of the keys (no eigenvalue of C0 below {threshold} "
            "of the largest); raise nullspace_threshold"
        )
    return small @ small.T


def excluding_keys(projector: torch.Tensor, keys: torch.Tensor, tolerance: float = 1e-8) -> torch.Tensor:
    """The projector onto what ``projector`` keeps, minus the span of ``keys`` (``(inputs, n)``):
    a change in its range leaves ``W k`` unchanged for those keys too (earlier edits)."""
    inside = projector @ keys.double()
    if inside.numel() == 0:
        return projector
    basis, singular, _ = torch.linalg.svd(inside, full_matrices=False)
    if float(singular.max()) == 0.0:
        return projector
    basis = basis[:, singular > tolerance * singular.max()]
    return projector - basis @ basis.T


def weights_fingerprint(model: nn.Module, blocks: Sequence[int]) -> str:
    """A hash of every weight the keys of ``blocks`` depend on: the embeddings and the blocks up to
    the deepest one (later blocks do not change them)."""
    prefix, _ = transformer_blocks(model)
    deepest = max(blocks)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(f"{prefix}."):
            index = int(name[len(prefix) + 1 :].split(".")[0])
            if index > deepest:
                continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode() + str(tuple(data.shape)).encode() + str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class _Stop(Exception):
    """Raised by the last hook a statistics pass needs: the later blocks would be wasted work."""


def compute_statistics(
    model: nn.Module,
    tokenizer: object,
    blocks: Sequence[int],
    *,
    corpus: str = "wiki-en",
    tokens: int = 100_000,
    block_size: int = 128,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> dict[int, LayerStatistics]:
    """``C0`` of each listed block's FFN output projection over ``tokens`` tokens of ``corpus``."""
    from palimpsest.data import encode_blocks, load_corpus
    from palimpsest.models import fit_block_size

    if tokens < 1:
        raise DataError(f"statistics need at least one token, got {tokens}")
    block_size = fit_block_size(model, block_size)
    text = load_corpus(corpus)
    encoded = encode_blocks(text, tokenizer, block_size, max_tokens=tokens)
    if len(encoded) == 0:
        raise DataError(f"corpus '{corpus}' yields no block of {block_size} tokens")
    _prefix, layers = transformer_blocks(model)
    device = next(model.parameters()).device
    sums = {b: None for b in blocks}
    norm_sums = dict.fromkeys(blocks, 0.0)
    counted = dict.fromkeys(blocks, 0)
    deepest = max(blocks)

    def keys_hook(block: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            keys = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[block] = keys.T @ keys if sums[block] is None else sums[block] + keys.T @ keys
            counted[block] += keys.shape[0]

        return hook

    def output_hook(block: int):
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            norm_sums[block] += float(hidden.detach().double().norm(dim=-1).sum())
            if block == deepest:
                raise _Stop

        return hook

    handles = []
    for block in blocks:
        handles.append(ffn_output_projection(model, block).register_forward_pre_hook(keys_hook(block)))
        handles.append(layers[block].register_forward_hook(output_hook(block)))
    was_training = model.training
    model.eval()
    read = 0
    wanted = min(tokens, len(encoded) * block_size)
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                ids = torch.tensor(encoded[start : start + batch_size]["input_ids"], device=device)
                with contextlib.suppress(_Stop):
                    model(input_ids=ids)
                read += ids.numel()
                if progress is not None:
                    progress(min(read, wanted), wanted)
                if read >= wanted:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        block: LayerStatistics(
            sums[block].cpu() / counted[block], norm_sums[block] / counted[block], counted[block]
        )
        for block in blocks
    }


def statistics_path(fingerprint: str, corpus: str, tokens: int) -> Path:
    safe_corpus = "".join(c if c.isalnum() or c in "-_" else "_" for c in corpus)
    return model_cache_dir() / "statistics" / f"{fingerprint}-{safe_corpus}-{tokens}.safetensors"


def cached_statistics(
    model: nn.Module,
    tokenizer: object,
    blocks: Sequence[int],
    *,
    corpus: str = "wiki-en",
    tokens: int = 100_000,
    fingerprint: str | None = None,
    progress: Progress | None = None,
) -> dict[int, LayerStatistics]:
    """:func:`compute_statistics`, read from the cache when the same weights, corpus, token count
    and blocks were measured before (``fingerprint`` names the weights, by default those of
    ``model`` now: pass the unedited model's to reuse its statistics after edits)."""
    fingerprint = fingerprint or weights_fingerprint(model, blocks)
    path = statistics_path(fingerprint, corpus, tokens)
    stored = _read(path, fingerprint, corpus, tokens, blocks)
    if stored is not None:
        return stored
    logger.info(
        "statistics of blocks %s over %d tokens of %s (once; cached in %s)",
        list(blocks),
        tokens,
        corpus,
        path,
    )
    computed = compute_statistics(model, tokenizer, blocks, corpus=corpus, tokens=tokens, progress=progress)
    _write(path, computed, fingerprint, corpus, tokens)
    return computed


def read_cached_statistics(
    fingerprint: str, corpus: str, tokens: int, blocks: Sequence[int]
) -> dict[int, LayerStatistics] | None:
    """The cached statistics of the weights named by ``fingerprint`` (None: not in this cache)."""
    return _read(statistics_path(fingerprint, corpus, tokens), fingerprint, corpus, tokens, blocks)


def _write(
    path: Path, statistics: dict[int, LayerStatistics], fingerprint: str, corpus: str, tokens: int
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"block.{b}.second_moment": s.second_moment.contiguous() for b, s in statistics.items()}
    metadata = {
        "fingerprint": fingerprint, "corpus": corpus, "tokens": str(tokens),
        "blocks": json.dumps(sorted(statistics)),
        "hidden_norm": json.dumps({str(b): s.hidden_norm for b, s in statistics.items()}),
        "counted": json.dumps({str(b): s.tokens for b, s in statistics.items()}),
    }  # fmt: skip
    staging = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(staging), metadata=metadata)
    staging.replace(path)


def _read(
    path: Path, fingerprint: str, corpus: str, tokens: int, blocks: Sequence[int]
) -> dict[int, LayerStatistics] | None:
    """The stored statistics if they are these (same key, every block), else None (a torn or
    foreign file is computed again, never trusted)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if (metadata.get("fingerprint"), metadata.get("corpus"), metadata.get("tokens")) != (
                fingerprint, corpus, str(tokens),
            ):  # fmt: skip
                return None
            norms, counted = json.loads(metadata["hidden_norm"]), json.loads(metadata["counted"])
            if not all(str(b) in norms for b in blocks):
                return None
            return {
                b: LayerStatistics(
                    handle.get_tensor(f"block.{b}.second_moment"), float(norms[str(b)]), int(counted[str(b)])
                )
                for b in blocks
            }
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        logger.warning("statistics file %s is unreadable (%s); computing it again", path, error)
        return None
