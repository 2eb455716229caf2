"""`apply --watch`: reconcile again whenever the manifest (or its lock) changes.

Editors save by truncate-then-write or by writing a new file and renaming it over the old one;
both arrive as a burst of events, which watchfiles debounces into one batch. A round runs only
when the files' bytes differ from what the previous round saw (apply's own lock writes do not
trigger one). A manifest that fails to parse keeps the last good one in force.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local_ai.cli.output import err_console, interactive
from local_ai.errors import ExitCode, LocalAIError, LockHeldError, UsageError
from local_ai.settings import lock_path

if TYPE_CHECKING:
    from local_ai.manifest.load import LoadedManifest
    from local_ai.reconcile.run import RunOptions

DEBOUNCE_MS = 400
WAIT_FOREVER = -1.0  # filelock's "block until acquired" (Ctrl-C still stops it)


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"\0missing")
        h.update(b"\0")
    return h.hexdigest()


def watch_manifest(
    path: Path,
    options: RunOptions,
    *,
    yes: bool,
    json: bool,
    lock_timeout: float,
    once: Callable[..., int],
    stop_event: Any = None,
) -> int:
    """Apply now and after every change until Ctrl-C (or `stop_event`); returns the exit code:
    130 after Ctrl-C, whether it came while waiting or while a round applied."""
    from watchfiles import watch

    from local_ai.cli.errors import report
    from local_ai.manifest.load import load_manifest

    if not yes and not interactive():
        raise UsageError(
            "apply --watch applies every change it sees and this is not an interactive terminal",
            hint="pass --yes to apply without asking",
        )
    out = err_console()
    path = path.absolute()
    lock = lock_path(path)
    seen: str | None = None
    last_good: LoadedManifest | None = None

    def round_() -> None:
        nonlocal seen, last_good
        while True:
            applied = _digest(path)  # before reading it: an edit from now on is seen below
            try:
                loaded = load_manifest(path)
            except LocalAIError as exc:
                report(exc)
                keep = "the last good manifest stays in force" if last_good else "nothing applied"
                out.print(f"[yellow]watch:[/] {path.name} has errors; {keep}. Waiting for a fix …")
                seen = _digest(path, lock)
                return
            last_good = loaded
            try:
                try:
                    code = once(loaded, options, yes=yes, json=json, lock_timeout=lock_timeout)
                except LockHeldError as exc:
                    # Refusing would drop this change until the next edit: wait for the other run.
                    out.print(f"[yellow]watch:[/] {exc.message}; applying once it is done …")
                    code = once(loaded, options, yes=yes, json=json, lock_timeout=WAIT_FOREVER)
            except LocalAIError as exc:
                code = report(exc)
            if code == ExitCode.INTERRUPTED:  # the executor caught Ctrl-C inside an action
                raise KeyboardInterrupt
            seen = _digest(path, lock)  # includes the lock apply just wrote
            if _digest(path) == applied:
                break
            # Saved while that round ran (or waited): its event may already be spent.
            out.print(f"[bold]watch:[/] {path.name} changed while applying")
        out.print(f"[dim]watch: waiting for changes to {path} (Ctrl-C to stop)[/]")

    try:
        round_()
        for _changes in watch(
            path.parent,
            watch_filter=lambda _change, name: Path(name).name in (path.name, lock.name),
            debounce=DEBOUNCE_MS,
            stop_event=stop_event,
            raise_interrupt=True,
        ):
            if _digest(path, lock) == seen:
                continue
            out.print(f"[bold]watch:[/] {path.name} changed")
            round_()
    except KeyboardInterrupt:
        out.print("watch: stopped (Ctrl-C)")
        return ExitCode.INTERRUPTED
    return ExitCode.OK  # stop_event
