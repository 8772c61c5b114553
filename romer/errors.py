"""Errors caused by user input: the CLI prints their one-line message and exits with status 2."""


class UserError(ValueError):
    """A mistake in what the user asked for (unknown model, bad option value, missing file)."""
