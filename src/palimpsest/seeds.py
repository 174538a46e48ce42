"""Every seed offset palimpsest uses, named in one place.

A run has one seed; the streams drawn from it must not coincide (a memory initialised
from the same stream as the model, a forgetting reset that re-draws the model's own
initial embeddings). Each stream is the run's seed plus its own offset, or a fixed seed
where it must not depend on the run at all (a held-out split, an evaluation mask).
"""

#: Reset ``i`` of active forgetting draws from ``run seed + FORGETTING_SEED_OFFSET + i``.
FORGETTING_SEED_OFFSET = 1000
#: A training run's product-key memories are drawn from ``run seed + MEMORY_SEED_OFFSET``.
MEMORY_SEED_OFFSET = 7
#: Continued training after a warm start orders its data by ``run seed + CONTINUED_DATA_SEED_OFFSET``,
#: so it does not replay the batches of the run it continues.
CONTINUED_DATA_SEED_OFFSET = 1000
#: The editing study's support facts (trained beside the edits) are drawn from ``seed + this``.
SUPPORT_FACTS_SEED_OFFSET = 10_000
#: Documents held out of pretraining entirely (the text of a synthetic language): one split
#: for every run, whatever its seed.
HOLDOUT_SEED = 99
#: The masks of a masked-LM evaluation set: fixed, so two evaluations compare the same positions.
EVAL_MASK_SEED = 1234

#: Seeds are below this: numpy's generators take 32-bit seeds, and a stream adds its offset.
SEED_LIMIT = 2**31


def check_seed(seed: int | None, key: str = "seed") -> None:
    """One line for a seed no generator takes (negative, or too large once an offset is added)."""
    from palimpsest.errors import ConfigError

    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{key} must be in 0..{SEED_LIMIT - 1}, got {seed}")
