"""Run the plasticity study at smoke scale; used by the multi-process test (torchrun)."""

import sys

from palimpsest.experiments.plasticity import run_plasticity

if __name__ == "__main__":
    run_plasticity(sys.argv[1], "smoke")
