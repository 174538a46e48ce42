"""End-to-end studies that reproduce each paper's effect at small scale.

Each study is resumable (every unit of work saves its result as it finishes and is skipped on a
re-run), returns typed results (:mod:`palimpsest.results`) and is rendered by their report
section. :mod:`palimpsest.experiments.study` is the skeleton they run on (the many-edits study
first).
"""
