"""Evaluation: perplexity of causal LMs (GPTQ-style and lm-eval document-level), baselines, zero-shot accuracy."""

from romer.eval.perplexity import (
    PerplexityResult,
    document_perplexity,
    perplexity,
    rolling_windows,
    token_windows,
    unigram_perplexity,
)
from romer.eval.zero_shot import MetricSummary, TaskScore, ZeroShotSummary, evaluate_chips, evaluate_tasks, summarize

__all__ = ["PerplexityResult", "document_perplexity", "perplexity", "rolling_windows", "token_windows",
           "unigram_perplexity", "MetricSummary", "TaskScore", "ZeroShotSummary", "evaluate_chips", "evaluate_tasks",
           "summarize"]
