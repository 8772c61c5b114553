"""The CLI's error handling, shared by every command module: a user mistake is one line and exit status 2."""

from __future__ import annotations

import functools

import typer

from romer.errors import UserError


def user_errors(command):
    """Turn a user mistake into a one-line error and exit status 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from romer.models.view import UnsupportedModelError

        try:
            return command(*args, **kwargs)
        except (UserError, UnsupportedModelError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper
