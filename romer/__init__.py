"""romer: MoE language models on simulated analog compute-in-memory hardware, and their training-free repair."""

__version__ = "0.1.0"


def load(name_or_folder, **options):
    """``(model, tokenizer)`` from a zoo name or a local folder; a calibrated folder (``romer calibrate --out``)
    comes with its plan's digital routing corrections installed. ``options`` as ``romer.models.load_model``:
    ``dtype``, ``device``, ``allow_pickle``, ``trust_remote_code``."""
    from romer.calibrate.folder import load_calibrated

    return load_calibrated(name_or_folder, **options)
