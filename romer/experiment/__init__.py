"""Experiments: the jobs behind `romer run` and their records."""
