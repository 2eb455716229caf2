"""Progress bars for people at a terminal, on stderr: downloads (fed through hub's
`FetchProgress` sink) and conversions (fed by the convert worker's events)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from local_ai.cli.output import err_console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


def _bytes_bar(text: str, *, console: Console, transient: bool) -> Progress:
    """A bar of bytes: `text`, the bar, bytes done/total, speed and time left."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return Progress(TextColumn(text), *columns, console=console, transient=transient)


class RichProgress:
    """Per-file bars for files in flight and one total bar: bytes, speed, ETA. On stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._total: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._sizes: dict[str, int] = {}

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        if not files:
            return
        from rich.console import Console

        self._sizes = dict(files)
        console = self._console or Console(stderr=True)
        self._progress = _bytes_bar("{task.description}", console=console, transient=False)
        self._progress.start()
        total = sum(self._sizes.values())
        self._total = self._progress.add_task(f"{label} ({len(files)} files)", total=total)

    def advance(self, name: str, nbytes: int) -> None:
        progress = self._progress
        if progress is None:
            return
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                short = name if len(name) <= 40 else "…" + name[-39:]
                task = progress.add_task(f"  {short}", total=self._sizes.get(name))
                self._tasks[name] = task
        progress.advance(task, nbytes)
        if self._total is not None:
            progress.advance(self._total, nbytes)

    def file_done(self, name: str) -> None:
        progress = self._progress
        if progress is None:
            return
        with self._lock:
            task = self._tasks.pop(name, None)
        if task is not None:
            progress.remove_task(task)  # keep the display to what is still moving

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class ConvertBar:
    """A byte progress bar fed by the worker's events (nothing when not a terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        self.bar = _bytes_bar("converting", console=err_console(), transient=True)
        self.bar.start()
        self.task = self.bar.add_task("convert", total=None)
        return self.on_event

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") in ("start", "progress") and event.get("total_bytes"):
            self.bar.update(
                self.task, total=event["total_bytes"], completed=event.get("done_bytes", 0)
            )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
