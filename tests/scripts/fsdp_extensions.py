"""Both training extensions on parameters sharded by FSDP2, in every process of a torchrun.

usage: fsdp_extensions.py OUT

Forgetting: one AdamW step, then a reset of the sharded token embeddings; memory: one
AdamW step of a model with a product-key memory (and sparse value updates refused). Each
is compared with the same step on an unsharded copy (every rank trains on the same batch,
so the sharded step must equal it). Writes OUT/rank{R}.json with what was compared.
"""

from __future__ import annotations

import copy
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from palimpsest.data import load_corpus, train_tokenizer
from palimpsest.errors import ConfigError
from palimpsest.forgetting import find_token_embeddings, forget_embeddings
from palimpsest.memory import PKMConfig, add_product_key_memory, memories
from palimpsest.memory.extension import check_sharding
from palimpsest.models import build_model, transformer_blocks


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    for block in transformer_blocks(model)[1]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def step(model: torch.nn.Module, ids: torch.Tensor) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


def largest_difference(sharded: torch.nn.Module, reference: torch.nn.Module) -> float:
    gathered = {name: full(p.detach()) for name, p in sharded.named_parameters()}
    return max(float((gathered[name] - p.detach()).abs().max()) for name, p in reference.named_parameters())


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    tokenizer = train_tokenizer(load_corpus("wiki-en", max_documents=60).texts, 300)
    ids = torch.randint(5, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    result: dict[str, object] = {}

    # forgetting: a step, then a reset of the sharded embeddings and their Adam state
    model = build_model("roberta", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    reference = copy.deepcopy(model)
    optimizer = step(shard(model, mesh), ids)
    reference_optimizer = step(reference, ids)
    weight = find_token_embeddings(model).weight
    result["embeddings_sharded"] = isinstance(weight, DTensor)
    result["local_rows"] = weight.to_local().shape[0] if isinstance(weight, DTensor) else weight.shape[0]
    report = forget_embeddings(model, optimizer, seed=5)
    forget_embeddings(reference, reference_optimizer, seed=5)
    result["reset"] = report.reset
    result["optimizer_states_reset"] = report.optimizer_states_reset
    result["embeddings_equal_unsharded_reset"] = torch.equal(
        full(weight.detach()), find_token_embeddings(reference).weight.detach()
    )
    state = optimizer.state[weight]
    result["embedding_moments_zero"] = all(
        float(full(state[key]).abs().sum()) == 0.0 for key in ("exp_avg", "exp_avg_sq")
    )
    result["forgetting_largest_difference"] = largest_difference(model, reference)

    # memory: one training step of a model with a product-key memory beside an FFN
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], n_keys=8, heads=2, k=4, k_dim=16, seed=3))
    reference = copy.deepcopy(model)
    step(shard(model, mesh), ids)
    step(reference, ids)
    values = next(iter(memories(model).values())).values.weight
    result["memory_values_sharded"] = isinstance(values, DTensor)
    result["memory_largest_difference"] = largest_difference(model, reference)
    check_sharding(model)  # dense value gradients: accepted, without a reused whole-table gradient buffer
    result["gradient_buffer_reuse"] = next(iter(memories(model).values())).reuse_gradient_buffer
    next(iter(memories(model).values())).sparse_updates = True
    try:
        check_sharding(model)
    except ConfigError as error:
        result["sparse_refused"] = str(error)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Tear down in order (sharded modules, then the group after a barrier): gloo's threads
    # otherwise abort now and then at interpreter exit ("terminate called without an active exception").
    del model, reference, optimizer, values
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
