"""MoE model view over Hugging Face families, safe local loading, and the bundled reference models (zoo)."""

from romer.models.loading import ModelNotFoundError, load_model, resolve_model_dir, zoo_names

__all__ = ["ModelNotFoundError", "load_model", "resolve_model_dir", "zoo_names"]
