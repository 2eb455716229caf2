"""Download progress: a small sink interface, a Rich display for people, and the bridge from
huggingface_hub's tqdm hook (`tqdm_class=`) to the sink. Downloading itself stays in the client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from local_ai.util.failpoints import failpoint

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID


class FetchProgress(Protocol):
    """Receives byte counts from concurrent download threads (implementations lock)."""

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        """`files`: (name, size) of what will be transferred now (cached files excluded)."""

    def advance(self, name: str, nbytes: int) -> None:
        """`nbytes` more of `name` arrived; negative when a failed attempt's bytes are dropped."""

    def file_done(self, name: str) -> None: ...

    def end(self) -> None: ...


class NullProgress:
    """For --json, quiet mode and non-interactive output."""

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        pass

    def file_done(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


class RecordingProgress:
    """Keeps per-file byte counts; tests and benchmarks read them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.label = ""
        self.planned: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.done: list[str] = []
        self.ended = False

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            self.label = label
            self.planned = dict(files)

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            self.received[name] = self.received.get(name, 0) + nbytes

    def file_done(self, name: str) -> None:
        with self._lock:
            self.done.append(name)

    def end(self) -> None:
        self.ended = True


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
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if not files:
            return
        from rich.console import Console

        self._sizes = dict(files)
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console or Console(stderr=True),
            transient=False,
        )
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


class _Counter:
    def __init__(self) -> None:
        self.value = 0


def tqdm_bridge(sink: FetchProgress, name: str) -> tuple[type[Any], Callable[[], int]]:
    """A class huggingface_hub can use as `tqdm_class` for one file's download, forwarding byte
    counts to `sink`, and a function returning how many bytes it has forwarded so far (to take
    them back when the attempt fails)."""
    counter = _Counter()

    class _Bridge:
        # Called as tqdm(desc=..., total=..., initial=..., unit=..., unit_scale=...).
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            initial = int(kwargs.get("initial") or 0)
            if initial:
                self.update(initial)

        def __enter__(self) -> _Bridge:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            count = int(n or 0)
            counter.value += count
            sink.advance(name, count)
            failpoint("fetch.mid-file")  # bytes arrived; the blob is still *.incomplete

        def close(self) -> None:
            pass

        def __getattr__(self, attr: str) -> Callable[..., None]:
            # Other tqdm methods (refresh, set_description, ...) mean nothing here.
            return lambda *args, **kwargs: None

    return _Bridge, lambda: counter.value
