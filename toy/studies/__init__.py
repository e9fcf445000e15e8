"""Investigations of the toy world that docs/toy-world.md cites: each finds where a result is made.

    python -m toy.studies.compare          # one column of the results table, on larger samples
    python -m toy.studies.decide ...       # at which noise level a video's direction is decided
    python -m toy.studies.diagnose_stage3  # where stage 3's error is made
    python -m toy.studies.sweep_stage1 ... # stage 1 several ways, and a stage 2 on each
    python -m toy.studies.sweep_stage2 ... # stage 2 several ways, or one run measured as it trains
"""
