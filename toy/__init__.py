"""The toy world: a synthetic world in which every stage of AnimateLCM trains from scratch on a CPU.

The world and its instruments: world.py (the clips and captions), constants.py, detect.py (a pixel
reading of colour, shape and direction), classifier.py (the judge: toy FVD and prompt accuracy),
health.py (prompt following, also the training scripts' validation score), evaluate.py (the results
table's measurements), train_vae.py. The pipeline: stages.py (each stage's command line), run.py (all
of them, the evaluation, the shipped weights), seeds.py (more training seeds). studies/: the
investigations docs/toy-world.md cites.

    python -m toy.run --quick      # every stage for a few steps
"""
