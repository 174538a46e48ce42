"""Units of the real many-edits study, a few at a time (resumable; see this folder's README).

    python results/many-edits-real/run_units.py METHODS [AT_ONCE] [SEQUENCES] [SEQ_METHODS] [ONLY] [SEEDS]

METHODS comma-separated (``palimpsest,memit``), AT_ONCE (sizes) comma-separated (``1000``; empty for
none), SEQUENCES as ``EDITSbBATCH`` (``1000b10``), SEQ_METHODS the methods of the sequences
(default: METHODS), ONLY the sizes at once some methods are limited to (``memit:1000,alphaedit:1000``),
SEEDS comma-separated (default ``0``); into ``runs/many-edits-real``. Units already stored are read back, so
naming every finished unit assembles one results.json of them all.
"""

import logging
import sys
from dataclasses import replace

from palimpsest.experiments.many_edits import SCALES, run_many_edits_study


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    methods = tuple(sys.argv[1].split(","))
    at_once = tuple(int(x) for x in sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else ()
    sequences = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else []
    in_sequence = tuple(tuple(int(v) for v in x.split("b")) for x in sequences)
    sequence_methods = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 and sys.argv[4] else None
    only = [item.split(":") for item in sys.argv[5].split(",")] if len(sys.argv) > 5 and sys.argv[5] else []
    method_sizes = tuple((method, (int(size),)) for method, size in only)
    seeds = tuple(int(x) for x in sys.argv[6].split(",")) if len(sys.argv) > 6 and sys.argv[6] else (0,)
    scale = replace(
        SCALES["real"], at_once=at_once, in_sequence=in_sequence, methods=methods,
        sequence_methods=sequence_methods, seeds=seeds, method_sizes=method_sizes,
    )  # fmt: skip
    run_many_edits_study("runs/many-edits-real", ("real", scale))


if __name__ == "__main__":
    main()
