"""The `local-ai` command: the Typer app, its groups, and the one error boundary."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Annotated, Any

import typer

from local_ai import __version__
from local_ai.cli import (
    apply,
    bench,
    clients,
    doctor,
    gc,
    generations,
    init,
    lock,
    models,
    plan,
    server,
    validate,
)
from local_ai.cli.errors import report
from local_ai.errors import ExitCode

app = typer.Typer(
    name="local-ai",
    help="Declarative, offline AI coding on Apple Silicon: models, quantization and a local "
    "OpenAI/Anthropic server from one local-ai.toml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"local-ai {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Declarative, offline AI coding on Apple Silicon."""


app.command("init")(init.init_command)
app.command("doctor")(doctor.doctor_command)
app.command("validate")(validate.validate_command)
app.command("plan")(plan.plan_command)
app.command("apply")(apply.apply_command)
app.command("generations")(generations.generations_command)
app.command("rollback")(generations.rollback_command)
app.command("bench")(bench.bench_command)
app.command("status", help="The server's state, its models and their speed (= server status).")(
    server.status_command
)
app.add_typer(models.app, name="models")
app.command("lock")(lock.lock_command)
app.command("gc")(gc.gc_command)
app.add_typer(server.server_app, name="server")
app.add_typer(clients.clients_app, name="clients")


@functools.cache
def _command() -> Any:
    # Building Click's command tree from the Typer app takes ~0.1 s; in-process callers (tests)
    # reuse it.
    return _flags_as_flags(typer.main.get_command(app))


def _flags_as_flags(command: Any) -> Any:
    """Typer >= 0.27 shows every flag's type in Rich help (`--json <bool>`), which reads as if
    it took a value; an empty metavar shows none. --help included (Click caches that option)."""
    params = list(command.params)
    ctx = typer.Context(command)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_as_flags(sub)
    return command


def _honour_ctrl_c() -> None:
    # A shell starts a script's `cmd &` with SIGINT ignored (so do some CI runners) and Python
    # keeps it ignored: apply then ran on through every SIGINT. Ctrl-C must always stop it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns (and exits with) a documented exit code."""
    _honour_ctrl_c()
    try:
        result = _command().main(args=argv, prog_name="local-ai", standalone_mode=False)
        code = result if isinstance(result, int) else ExitCode.OK
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors from Typer's vendored Click
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"error: {exc.format_message()}", err=True)
        code = ExitCode.USAGE
    except typer.Abort:
        code = ExitCode.INTERRUPTED
    except BaseException as exc:  # the error boundary: every failure becomes a message
        if isinstance(exc, SystemExit):
            raise
        code = report(exc)
    if code == ExitCode.INTERRUPTED:
        # Ctrl-C: do not wait for download threads to finish their files (huggingface_hub
        # resumes them next time); everything recorded so far is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
