"""Evaluation: perplexity of causal LMs and simple baselines."""

from romer.eval.perplexity import PerplexityResult, perplexity, token_windows, unigram_perplexity

__all__ = ["PerplexityResult", "perplexity", "token_windows", "unigram_perplexity"]
