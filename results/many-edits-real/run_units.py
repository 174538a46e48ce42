"""Units of the real many-edits study, one (mode, edits, method) at a time: resumable."""
import logging, sys
from dataclasses import replace
from palimpsest.experiments.many_edits import SCALES, run_many_edits_study
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
methods = tuple(sys.argv[1].split(","))
at_once = tuple(int(x) for x in sys.argv[2].split(",")) if sys.argv[2] else ()
in_sequence = tuple(tuple(int(v) for v in x.split("b")) for x in sys.argv[3].split(",")) if len(sys.argv) > 3 and sys.argv[3] else ()
scale = replace(SCALES["real"], at_once=at_once, in_sequence=in_sequence, methods=methods, seeds=(0,))
run_many_edits_study("runs/many-edits-real", ("real", scale))
