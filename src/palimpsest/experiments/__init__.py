"""End-to-end studies that reproduce each paper's effect at small scale.

Each study is resumable (every unit of work saves its result as it finishes and is
skipped on a re-run), returns a results dict and is rendered by a report section.
"""
