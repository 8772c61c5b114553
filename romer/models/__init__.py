"""MoE model view over Hugging Face families, safe local loading, and the bundled reference models (zoo)."""

from romer.models.families import DenseModelError, UnsupportedModelError
from romer.models.loading import ModelNotFoundError, UnsafeModelError, load_model, resolve_model_dir, zoo_names

__all__ = ["DenseModelError", "ModelNotFoundError", "UnsafeModelError", "UnsupportedModelError", "load_model",
           "resolve_model_dir", "zoo_names"]
