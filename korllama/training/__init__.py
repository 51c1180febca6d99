"""Training: collate.py (rows and batches), losses.py, trainer.py (GradeTrainer), callbacks.py, hardware.py
(precision, threads), recipe.py (`train`: the recipe, nothing else)."""

from korllama.training.recipe import resolve_run, train

__all__ = ["resolve_run", "train"]
