"""romer: MoE language models on simulated analog compute-in-memory hardware, and their training-free repair."""

__version__ = "0.1.0"
