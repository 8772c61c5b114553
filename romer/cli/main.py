"""The `romer` entry point: assembles the command modules into one app (the only importer of romer.cli.*)."""

from __future__ import annotations

import sys

import typer
import typer.core
from typer.core import TyperGroup

from romer.cli.calibrate import calibrate_command
from romer.cli.chip import chip_app
from romer.cli.common import DEBUG_ENV, REPLACED_OPTIONS
from romer.cli.eval import eval_command
from romer.cli.memory import plan_memory_command
from romer.cli.noise import noise_app
from romer.cli.run import RunCommand, report_command, run_command
from romer.cli.serve import serve_command
from romer.cli.stats import stats_command
from romer.cli.zoo import zoo_app


def _root(debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks of errors (or set {DEBUG_ENV}=1).")):
    """MoE LLMs on simulated analog CIM hardware."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr: romer reports its own progress


# the click typer runs on: vendored as typer._click since typer 0.2x, the click package before
click = getattr(typer.core, "_click", None) or typer.core.click
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click ≥ 8.2: the help is already printed


def usage_line(error, path: str = "romer") -> str:
    """A usage error (unknown option, missing value, bad value) as one line naming the command's help (``path``:
    the command, when the error does not know it)."""
    text = " ".join(error.format_message().split()).rstrip(".")
    option = getattr(error, "option_name", None)
    if isinstance(error, click.exceptions.NoSuchOption) and option in REPLACED_OPTIONS:
        text = f"{option} is gone; use {REPLACED_OPTIONS[option]}"
    else:
        text = text[:1].lower() + text[1:]
    return f"error: {text} (see {error.ctx.command_path if error.ctx is not None else path} --help)"


class RomerGroup(TyperGroup):
    """The root command: a usage error is one line on stderr and exit status 2 (not click's box of usage, hint and
    message); everything else as typer does it."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.UsageError as exc:
            typer.echo(usage_line(exc, self.command_path(sys.argv[1:] if args is None else args, prog_name)),
                       err=True)
            sys.exit(2)
        except click.exceptions.ClickException as exc:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def command_path(self, args, prog_name: str | None = None) -> str:
        """``romer eval``, ``romer zoo list``: the (sub)command ``args`` name."""
        path, command = [prog_name or self.name or "romer"], self
        for arg in args:
            if arg.startswith("-"):
                continue
            command = getattr(command, "commands", {}).get(arg)
            if command is None:
                break
            path.append(arg)
        return " ".join(path)


def build_app() -> typer.Typer:
    """The `romer` command with every command group."""
    app = typer.Typer(name="romer", cls=RomerGroup, add_completion=False, no_args_is_help=True,
                      pretty_exceptions_enable=False, help="MoE LLMs on simulated analog CIM hardware.")
    app.callback()(_root)
    app.command("eval")(eval_command)
    app.command("stats")(stats_command)
    app.command("calibrate")(calibrate_command)
    app.command("run", cls=RunCommand)(run_command)
    app.command("report")(report_command)
    app.command("plan-memory")(plan_memory_command)
    app.command("serve")(serve_command)
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
    _terminate_like_ctrl_c()
    app(prog_name="romer")


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (timeout, docker stop, Slurm, systemd) and SIGHUP raise ``Terminated`` in this process, which every
    command handles as Ctrl-C: stored trials kept, staging folders removed, one line, exit 128 + signal."""
    import signal

    from romer.errors import Terminated

    def handler(signum, frame):
        raise Terminated(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


if __name__ == "__main__":
    main()
