"""Evaluation: metrics (:mod:`.metrics`), scoring (:mod:`.evaluate`, ``scripts/evaluate.py``),
videos and contact sheets (:mod:`.visualize`, ``visualize.py``) of saved models (:mod:`.saved_model`)."""
