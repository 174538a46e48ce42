"""Units of the real many-edits study, a few at a time (resumable; see this folder's README).

    python results/many-edits-real/run_units.py METHODS [AT_ONCE] [SEQUENCES] [SEQ_METHODS] [ONLY] [SEEDS] \\
        [SIZE_SEEDS] [BATCHES]

METHODS comma-separated (``palimpsest,memit``), AT_ONCE (sizes) comma-separated (``1000``; empty for
none), SEQUENCES as ``EDITSbBATCH`` (``1000b10``), SEQ_METHODS the methods of the sequences
(default: METHODS), ONLY the sizes some methods are limited to (``gated-memory:100,memit:10+100+1000``),
SEEDS comma-separated (default ``0``), SIZE_SEEDS the seeds some sizes are limited to
(``1000:0,100:0+1+2``), BATCHES the sequence batches some methods are limited to
(``memit:10,alphaedit:10``); into ``runs/many-edits-real``. Units already stored are read back, so
naming every finished unit assembles one results.json of them all.
"""

import logging
import sys
from dataclasses import replace

from palimpsest.experiments.many_edits import SCALES, run_many_edits_study


def _argument(index: int) -> str:
    return sys.argv[index] if len(sys.argv) > index else ""


def _pairs(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """``a:1+2,b:3`` as ``[("a", (1, 2)), ("b", (3,))]``."""
    pairs = [item.split(":") for item in text.split(",")] if text else []
    return [(name, tuple(int(value) for value in values.split("+"))) for name, values in pairs]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    methods = tuple(_argument(1).split(","))
    at_once = tuple(int(x) for x in _argument(2).split(",")) if _argument(2) else ()
    in_sequence = tuple(tuple(int(v) for v in x.split("b")) for x in _argument(3).split(",") if x)
    sequence_methods = tuple(_argument(4).split(",")) if _argument(4) else None
    seeds = tuple(int(x) for x in _argument(6).split(",")) if _argument(6) else (0,)
    scale = replace(
        SCALES["real"], at_once=at_once, in_sequence=in_sequence, methods=methods,
        sequence_methods=sequence_methods, seeds=seeds, method_sizes=tuple(_pairs(_argument(5))),
        size_seeds=tuple((int(size), chosen) for size, chosen in _pairs(_argument(7))),
        method_batches=tuple(_pairs(_argument(8))),
    )  # fmt: skip
    run_many_edits_study("runs/many-edits-real", ("real", scale))


if __name__ == "__main__":
    main()
