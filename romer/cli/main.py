"""The `romer` entry point: assembles the command modules into one app (the only importer of romer.cli.*)."""

from __future__ import annotations

import typer

from romer.cli.calibrate import calibrate_command
from romer.cli.chip import chip_app
from romer.cli.common import DEBUG_ENV
from romer.cli.eval import eval_command
from romer.cli.memory import plan_memory_command
from romer.cli.noise import noise_app
from romer.cli.run import report_command, run_command
from romer.cli.stats import stats_command
from romer.cli.zoo import zoo_app


def _root(debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks of errors (or set {DEBUG_ENV}=1).")):
    """MoE LLMs on simulated analog CIM hardware."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr: romer reports its own progress


def build_app() -> typer.Typer:
    """The `romer` command with every command group."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="MoE LLMs on simulated analog CIM hardware.")
    app.callback()(_root)
    app.command("eval")(eval_command)
    app.command("stats")(stats_command)
    app.command("calibrate")(calibrate_command)
    app.command("run")(run_command)
    app.command("report")(report_command)
    app.command("plan-memory")(plan_memory_command)
    app.add_typer(zoo_app, name="zoo")
    app.add_typer(noise_app, name="noise")
    app.add_typer(chip_app, name="chip")
    return app


app = build_app()


def main() -> None:
    """The `romer` executable: ``--debug`` (before the command) turns on tracebacks for this process."""
    import os
    import sys

    if "--debug" in sys.argv[1 : sys.argv.index("--") if "--" in sys.argv else None]:
        os.environ[DEBUG_ENV] = "1"
    app()


if __name__ == "__main__":
    main()
