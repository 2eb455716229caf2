"""The one place where exceptions become messages and exit codes (documented in
docs/troubleshooting.md). Tracebacks only with LOCAL_AI_DEBUG=1."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import typer

from local_ai import settings
from local_ai.cli.output import err_console
from local_ai.errors import ExitCode, LocalAIError, ManifestError, disk_full_error, is_disk_full


def report(exc: BaseException) -> int:
    """Print `exc` for a person and return the exit code."""
    from rich.markup import escape

    out = err_console()
    if settings.debug():
        out.print(escape("".join(traceback.format_exception(exc))), end="")
    if isinstance(exc, KeyboardInterrupt):
        out.print("[yellow]interrupted[/]")
        return ExitCode.INTERRUPTED
    if isinstance(exc, ManifestError):
        count = len(exc.problems)
        out.print(f"[red bold]error:[/] the manifest has {count} problem{'s' if count > 1 else ''}")
        for problem in exc.problems:
            _print_one(problem, bullet=True)
        return exc.exit_code
    if is_disk_full(exc):  # a full disk is not a bug: name it like a typed error
        exc = disk_full_error(exc, "writing")
    if isinstance(exc, LocalAIError):
        _print_one(exc, bullet=False)
        return exc.exit_code
    out.print(f"[red bold]internal error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}")
    if not settings.debug():
        out.print(
            "  this is a bug in local-ai; rerun with [bold]LOCAL_AI_DEBUG=1[/] for the traceback "
            "and report it"
        )
    return ExitCode.ERROR


@contextlib.contextmanager
def detailed_exitcode(enabled: bool) -> Iterator[None]:
    """`--detailed-exitcode` promises Terraform's codes to scripts: 0 no changes, 2 changes,
    1 any error (not 78, 69, …); Ctrl-C stays 130."""
    if not enabled:
        yield
        return
    try:
        yield
    except typer.Exit as exc:
        if exc.exit_code in (ExitCode.OK, ExitCode.CHANGES, ExitCode.INTERRUPTED):
            raise
        raise typer.Exit(ExitCode.ERROR) from None
    except Exception as exc:
        report(exc)
        raise typer.Exit(ExitCode.ERROR) from None


def _print_one(exc: LocalAIError, *, bullet: bool) -> None:
    from rich.markup import escape

    out = err_console()
    prefix = "  [red]✗[/] " if bullet else "[red bold]error:[/] "
    out.print(prefix + escape(str(exc)))
    if exc.hint:
        out.print(f"    [dim]hint:[/] {escape(exc.hint)}")
