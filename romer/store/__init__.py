"""The results store: one SQLite file of trials, configs and runs. ``romer.experiment`` writes it, ``romer.report``
and ``romer.studies`` read it; it imports neither."""

from romer.store.sqlite import ResultsStore, git_revision, provenance

__all__ = ["ResultsStore", "git_revision", "provenance"]
