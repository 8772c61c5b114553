"""Errors caused by user input: the CLI prints their one-line message and exits with status 2."""


class UserError(ValueError):
    """A mistake in what the user asked for (unknown model, bad option value, missing file)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP received by the `romer` executable: handled like Ctrl-C (the interrupted work is cleaned
    up the same way), exit status 128 + the signal's number (143 for SIGTERM, 129 for SIGHUP)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def interruption_exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 128 + the signal's number for :class:`Terminated`."""
    return getattr(exc, "exit_code", 130)
